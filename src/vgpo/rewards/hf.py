"""CLIP-based rewards through transformers: PickScore, CLIP score, LAION aesthetic.

Every reward takes images (B, 3, H, W) float in [0, 1] and returns (B,) float32 on the CPU. Images
are quantised to uint8 and preprocessed by the model's own ``CLIPProcessor`` (resize, center crop,
normalise), as the reference scorers and Flow-GRPO do; the model runs in eval mode, without
gradients, on ``device`` in batches of ``batch_size``.

Models load with ``from_pretrained`` from a local folder or a hub id (``local_files_only=True``
never touches the network):

* ``pickscore``: ``processor_path`` (default ``laion/CLIP-ViT-H-14-laion2B-s32B-b79K``) and
  ``model_path`` (default ``yuvalkirstain/PickScore_v1``). Score = ``logit_scale.exp() *
  cos(text, image)`` as in the PickScore model card (about 18-24 for real images), divided by
  ``divide_by`` (Flow-GRPO trains on ``divide_by: 26``).
* ``clipscore``: ``model_path`` (default ``openai/clip-vit-large-patch14``), processor from
  ``processor_path`` or the model folder. Score = ``logit_scale.exp() * cos`` / ``divide_by``
  (Flow-GRPO: ``logits_per_image.diagonal() / 30``).
* ``aesthetic``: the LAION aesthetic predictor v2: CLIP ViT-L/14 (``model_path``) image embedding,
  L2-normalised, through the MLP head in ``head_path`` (required; a local ``.pth``/``.pt``/
  ``.safetensors`` state dict such as ``sac+logos+ava1-l14-linearMSE.pth``, keys ``layers.{0,2,4,6,7}``).
  Score = MLP(e / |e|), about 1-10.

Needs the ``real`` extra (transformers).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vgpo.errors import VgpoError
from vgpo.rewards import register


def _device(device: str | torch.device | None) -> torch.device:
    return torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))


def _check_images(images: torch.Tensor, name: str) -> None:
    if not isinstance(images, torch.Tensor) or images.ndim != 4 or images.shape[1] != 3:
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise VgpoError(f"{name}: expected images of shape (B, 3, H, W) in [0, 1], got {shape}")


def _to_uint8(images: torch.Tensor) -> list:
    """(B, 3, H, W) in [0, 1] -> list of (H, W, 3) uint8 arrays (what the reference scorers feed CLIP)."""
    arr = (images.detach().float() * 255).round().clamp(0, 255).to(torch.uint8).cpu()
    return list(arr.permute(0, 2, 3, 1).numpy())


def _load(kind: str, cls_name: str, path: str | Path, local_files_only: bool, what: str):
    import transformers

    cls = getattr(transformers, cls_name)
    try:
        return cls.from_pretrained(str(path), local_files_only=local_files_only)
    except (OSError, ValueError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise VgpoError(f"{kind}.{what}: cannot load '{path}': {first}") from None


def _features(out: Any) -> torch.Tensor:
    # transformers >= 5 returns a ModelOutput whose pooler_output is the projected embedding.
    return out if isinstance(out, torch.Tensor) else out.pooler_output


class _ClipSimilarity:
    """logit_scale.exp() * cos(text, image) / divide_by, batched."""

    name = "clip"

    def __init__(
        self,
        model_path: str | Path,
        processor_path: str | Path | None = None,
        device: str | torch.device | None = None,
        batch_size: int = 32,
        divide_by: float = 1.0,
        local_files_only: bool = False,
        dtype: str = "float32",
    ):
        if not isinstance(divide_by, (int, float)) or divide_by == 0:
            raise VgpoError(f"{self.name}.divide_by: expected a non-zero number, got {divide_by!r}")
        if dtype not in ("float32", "float16", "bfloat16"):
            raise VgpoError(f"{self.name}.dtype: expected float32, float16 or bfloat16, got {dtype!r}")
        self.device = _device(device)
        self.batch_size = int(batch_size)
        self.divide_by = float(divide_by)
        self.processor = _load(
            self.name, "AutoProcessor", processor_path or model_path, local_files_only, "processor_path"
        )
        self.model = _load(self.name, "AutoModel", model_path, local_files_only, "model_path")
        self.model.requires_grad_(False).eval().to(self.device, dtype=getattr(torch, dtype))

    @torch.no_grad()
    def __call__(self, images: torch.Tensor, prompts: Sequence[str], metadata: Sequence[dict] = ()) -> torch.Tensor:
        _check_images(images, self.name)
        if len(prompts) != images.shape[0]:
            raise VgpoError(f"{self.name}: {images.shape[0]} images but {len(prompts)} prompts")
        scores = []
        for start in range(0, images.shape[0], self.batch_size):
            imgs = _to_uint8(images[start : start + self.batch_size])
            texts = list(prompts[start : start + self.batch_size])
            pixel = self.processor(images=imgs, return_tensors="pt")["pixel_values"]
            text = self.processor(text=texts, padding=True, truncation=True, max_length=77, return_tensors="pt")
            dtype = next(self.model.parameters()).dtype
            img_emb = _features(self.model.get_image_features(pixel_values=pixel.to(self.device, dtype)))
            txt_emb = _features(
                self.model.get_text_features(
                    input_ids=text["input_ids"].to(self.device),
                    attention_mask=text["attention_mask"].to(self.device) if "attention_mask" in text else None,
                )
            )
            img_emb = img_emb.float() / img_emb.float().norm(dim=-1, keepdim=True)
            txt_emb = txt_emb.float() / txt_emb.float().norm(dim=-1, keepdim=True)
            cos = (img_emb * txt_emb).sum(dim=-1)
            scores.append(self.model.logit_scale.float().exp() * cos / self.divide_by)
        return torch.cat(scores).float().cpu()


@register("pickscore")
class PickScoreReward(_ClipSimilarity):
    """PickScore v1 (CLIP-H fine-tuned on Pick-a-Pic human preferences)."""

    name = "pickscore"

    def __init__(
        self,
        model_path: str | Path = "yuvalkirstain/PickScore_v1",
        processor_path: str | Path | None = "laion/CLIP-ViT-H-14-laion2B-s32B-b79K",
        **kwargs: Any,
    ):
        super().__init__(model_path, processor_path, **kwargs)


@register("clipscore")
class ClipScoreReward(_ClipSimilarity):
    """Text-image CLIP similarity (scaled cosine)."""

    name = "clipscore"

    def __init__(
        self,
        model_path: str | Path = "openai/clip-vit-large-patch14",
        processor_path: str | Path | None = None,
        **kwargs: Any,
    ):
        super().__init__(model_path, processor_path, **kwargs)


class AestheticMLP(nn.Module):
    """The LAION aesthetic predictor v2 head (improved-aesthetic-predictor), state-dict compatible."""

    def __init__(self, dim: int = 768):
        super().__init__()
        self.layers = nn.Sequential(
            nn.Linear(dim, 1024),
            nn.Dropout(0.2),
            nn.Linear(1024, 128),
            nn.Dropout(0.2),
            nn.Linear(128, 64),
            nn.Dropout(0.1),
            nn.Linear(64, 16),
            nn.Linear(16, 1),
        )

    def forward(self, embed: torch.Tensor) -> torch.Tensor:
        return self.layers(embed)


def load_head(path: str | Path) -> dict[str, torch.Tensor]:
    path = Path(path)
    if not path.is_file():
        raise VgpoError(
            f"aesthetic.head_path: no such file '{path}' (the LAION MLP head, e.g. sac+logos+ava1-l14-linearMSE.pth)"
        )
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unreadable file is the user's input at fault
        raise VgpoError(f"aesthetic.head_path: cannot read '{path}': {str(err).splitlines()[0]}") from None
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise VgpoError(f"aesthetic.head_path: '{path}' holds no state dict")
    return state


@register("aesthetic")
class AestheticReward:
    """LAION aesthetic score: MLP(normalised CLIP image embedding)."""

    name = "aesthetic"

    def __init__(
        self,
        head_path: str | Path | None = None,
        model_path: str | Path = "openai/clip-vit-large-patch14",
        processor_path: str | Path | None = None,
        device: str | torch.device | None = None,
        batch_size: int = 32,
        local_files_only: bool = False,
    ):
        if head_path is None:
            raise VgpoError(
                "aesthetic.head_path: required (path to the LAION MLP head, e.g. sac+logos+ava1-l14-linearMSE.pth)"
            )
        self.device = _device(device)
        self.batch_size = int(batch_size)
        state = load_head(head_path)
        if "layers.0.weight" not in state:
            raise VgpoError(f"aesthetic.head_path: '{head_path}' is not a LAION aesthetic head (no layers.0.weight)")
        self.processor = _load(
            self.name, "AutoProcessor", processor_path or model_path, local_files_only, "processor_path"
        )
        self.model = _load(self.name, "CLIPModel", model_path, local_files_only, "model_path")
        dim = state["layers.0.weight"].shape[1]
        if dim != self.model.config.projection_dim:
            raise VgpoError(
                f"aesthetic.head_path: head expects {dim}-d embeddings, model_path's CLIP gives "
                f"{self.model.config.projection_dim}"
            )
        self.mlp = AestheticMLP(dim)
        try:
            self.mlp.load_state_dict(state)
        except RuntimeError as err:
            raise VgpoError(f"aesthetic.head_path: {str(err).splitlines()[0]}") from None
        for module in (self.model, self.mlp):
            module.requires_grad_(False).eval().to(self.device, dtype=torch.float32)

    @torch.no_grad()
    def __call__(
        self, images: torch.Tensor, prompts: Sequence[str] = (), metadata: Sequence[dict] = ()
    ) -> torch.Tensor:
        _check_images(images, self.name)
        scores = []
        for start in range(0, images.shape[0], self.batch_size):
            pixel = self.processor(images=_to_uint8(images[start : start + self.batch_size]), return_tensors="pt")[
                "pixel_values"
            ]
            emb = _features(self.model.get_image_features(pixel_values=pixel.to(self.device))).float()
            emb = emb / emb.norm(dim=-1, keepdim=True)
            scores.append(self.mlp(emb).squeeze(-1))
        return torch.cat(scores).float().cpu()
