"""PEFT LoRA helpers shared by the model adapters (tiny, SD3, FLUX).

The adapter is injected with diffusers' ``PeftAdapterMixin.add_adapter`` so the transformer keeps its
class (diffusers' ``load_lora_weights`` and gradient checkpointing keep working). State dicts are
PEFT's (``get_peft_model_state_dict``: ``transformer_blocks.0.attn.to_q.lora_A.weight``, no adapter
name), and :func:`save_lora_weights` writes the file diffusers' ``pipe.load_lora_weights`` reads:
the keys under a ``transformer.`` prefix and the ``LoraConfig`` in the safetensors metadata, so that
the scale ``alpha / r`` survives the round trip (without the metadata diffusers would assume
``alpha = r`` and load Flow-GRPO's r=32, alpha=64 LoRA at half strength).

Requires the ``real`` extra (diffusers, transformers, peft).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import torch

from vgpo.errors import VgpoError

#: Flow-GRPO's SD3 targets: the joint attention's image and text projections.
DEFAULT_TARGETS: tuple[str, ...] = (
    "to_q",
    "to_k",
    "to_v",
    "to_out.0",
    "add_q_proj",
    "add_k_proj",
    "add_v_proj",
    "to_add_out",
)

DEFAULT_WEIGHT_NAME = "pytorch_lora_weights.safetensors"


@dataclass
class LoraOptions:
    """LoRA hyper-parameters (Flow-GRPO's defaults: r=32, alpha=64, gaussian init)."""

    rank: int = 32
    alpha: float = 64.0
    target_modules: tuple[str, ...] = field(default_factory=lambda: DEFAULT_TARGETS)
    dropout: float = 0.0
    init: str | bool = "gaussian"  # PEFT's init_lora_weights: B = 0, so the adapter starts as the base model
    # One matmul/convolution with W + s·B·A per layer instead of PEFT's two extra products: the same function,
    # cheaper where activations outnumber weights (the tiny U-Net); keeps one merged weight per layer for the
    # backward. Linear and Conv2d targets (other layer types keep PEFT's layers); needs dropout 0 (lora_layers.py).
    merged_forward: bool = False

    @classmethod
    def from_spec(cls, spec: LoraOptions | Mapping[str, Any] | None, where: str = "lora") -> LoraOptions:
        """Options from a config map (unknown keys are a ``VgpoError`` naming ``where.key``)."""
        if spec is None:
            return cls()
        if isinstance(spec, LoraOptions):
            return spec
        if not isinstance(spec, Mapping):
            raise VgpoError(f"{where}: expected a map of LoRA options, got {spec!r}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(spec) - known)
        if unknown:
            raise VgpoError(f"{where}.{unknown[0]}: unknown LoRA option; expected one of: {', '.join(sorted(known))}")
        opts = cls(**dict(spec))
        opts.target_modules = tuple(opts.target_modules)
        if not isinstance(opts.rank, int) or opts.rank < 1:
            raise VgpoError(f"{where}.rank: expected a positive integer, got {opts.rank!r}")
        if not isinstance(opts.alpha, (int, float)) or opts.alpha <= 0:
            raise VgpoError(f"{where}.alpha: expected a positive number, got {opts.alpha!r}")
        if not opts.target_modules or not all(isinstance(t, str) for t in opts.target_modules):
            raise VgpoError(f"{where}.target_modules: expected a non-empty list of module names")
        if not isinstance(opts.merged_forward, bool):
            raise VgpoError(f"{where}.merged_forward: expected true or false, got {opts.merged_forward!r}")
        if opts.merged_forward and opts.dropout:
            raise VgpoError(f"{where}.merged_forward: needs dropout 0 (got {opts.dropout}); dropout acts on A's input")
        return opts

    def peft_config(self):
        from peft import LoraConfig

        config = LoraConfig(
            r=self.rank,
            lora_alpha=self.alpha,
            lora_dropout=self.dropout,
            init_lora_weights=self.init,
            target_modules=list(self.target_modules),
        )
        if self.merged_forward:
            from vgpo.models.lora_layers import MERGED_LAYERS

            config._register_custom_module(MERGED_LAYERS)  # PEFT's (experimental) hook for custom LoRA layers
        return config


def add_lora(model: torch.nn.Module, options: LoraOptions, adapter_name: str = "default") -> None:
    """Freeze ``model`` and inject a trainable LoRA adapter (parameters kept in float32 whatever
    the base weights' dtype, as Flow-GRPO does for bf16 training). A diffusers model goes through its
    own ``add_adapter`` (so that ``load_lora_weights`` knows the adapter), any other module through
    PEFT's ``inject_adapter_in_model``; the layers are PEFT's either way."""
    model.requires_grad_(False)
    try:
        if hasattr(model, "add_adapter"):
            model.add_adapter(options.peft_config(), adapter_name=adapter_name)
        else:
            from peft import inject_adapter_in_model

            inject_adapter_in_model(options.peft_config(), model, adapter_name=adapter_name)
    except ValueError as err:  # PEFT: "Target modules {...} not found in the base model"
        msg = str(err).splitlines()[0]
        raise VgpoError(f"lora.target_modules {list(options.target_modules)}: {msg}") from None
    for p in lora_parameters(model):
        p.data = p.data.float()
        p.requires_grad_(True)


def lora_parameters(transformer: torch.nn.Module) -> list[torch.nn.Parameter]:
    return [p for n, p in transformer.named_parameters() if ".lora_" in n]


def lora_state_dict(transformer: torch.nn.Module, adapter_name: str = "default") -> dict[str, torch.Tensor]:
    """The adapter weights in PEFT's naming (detached copies)."""
    from peft.utils import get_peft_model_state_dict

    state = get_peft_model_state_dict(transformer, adapter_name=adapter_name)
    return {k: v.detach().clone() for k, v in state.items()}


def load_lora_state_dict(
    transformer: torch.nn.Module, state: Mapping[str, torch.Tensor], adapter_name: str = "default"
) -> None:
    """Inverse of :func:`lora_state_dict`; the keys and shapes must match the injected adapter exactly."""
    from peft.utils import get_peft_model_state_dict, set_peft_model_state_dict

    expected = get_peft_model_state_dict(transformer, adapter_name=adapter_name)
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {missing[0]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {unexpected[0]})")
        raise VgpoError(f"LoRA state dict does not match the model's adapter: {', '.join(parts)}")
    for key, value in state.items():
        if tuple(value.shape) != tuple(expected[key].shape):
            raise VgpoError(
                f"LoRA state dict: {key} has shape {tuple(value.shape)}, the model expects {tuple(expected[key].shape)}"
                " (different rank?)"
            )
    set_peft_model_state_dict(transformer, dict(state), adapter_name=adapter_name)


def merged_weights_reused(model: torch.nn.Module, options: LoraOptions | None) -> AbstractContextManager[None]:
    """The models' ``fixed_weights``: with ``merged_forward``, each layer's merged weight is computed once for
    the passes without grad inside it (lora_layers.py); otherwise nothing to reuse."""
    if options is None or not options.merged_forward:
        return nullcontext()
    from vgpo.models.lora_layers import reusing_merged_weights

    return reusing_merged_weights(model)


@contextmanager
def adapters_disabled(model: torch.nn.Module) -> Iterator[None]:
    """The base model: every LoRA layer bypassed, restored on exit.

    PEFT sets ``requires_grad=False`` on disabled adapters and back to True when re-enabling, so the
    trainable parameters are unchanged after the context."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    layers = [m for m in model.modules() if isinstance(m, BaseTunerLayer)]
    for layer in layers:
        layer.enable_adapters(False)
    try:
        yield
    finally:
        for layer in layers:
            layer.enable_adapters(True)


def save_lora_weights(
    directory: str | Path,
    state: Mapping[str, torch.Tensor],
    options: LoraOptions,
    pipeline_class: type,
    weight_name: str = DEFAULT_WEIGHT_NAME,
) -> Path:
    """Write ``state`` (PEFT naming, as ``trainable_state_dict()``) where diffusers'
    ``pipeline_class.load_lora_weights(directory)`` finds it, with the ``LoraConfig`` as metadata.
    Returns the file written."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().contiguous().cpu() for k, v in state.items()}
    pipeline_class.save_lora_weights(
        str(directory),
        transformer_lora_layers=tensors,
        transformer_lora_adapter_metadata=options.peft_config().to_dict(),
        weight_name=weight_name,
    )
    return directory / weight_name


def precision_dtype(precision: str | None, device: torch.device) -> torch.dtype:
    """``"bf16" | "fp16" | "fp32"``; None picks bf16 on CUDA and fp32 elsewhere."""
    if precision is None:
        precision = "bf16" if device.type == "cuda" else "fp32"
    table = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
    if precision not in table:
        raise VgpoError(f"precision: expected one of bf16, fp16, fp32, got {precision!r}")
    return table[precision]


def _place(module: torch.nn.Module, device: torch.device, dtype: torch.dtype) -> None:
    # Cast only when needed: diffusers warns on every ``.to(dtype=...)`` of a model.
    module.to(device)
    if any(p.dtype != dtype for p in module.parameters() if p.is_floating_point()):
        module.to(dtype=dtype)


class LoraDiffusersModel:
    """What the SD3 and FLUX adapters share: a diffusers pipeline whose transformer carries a PEFT
    LoRA adapter, frozen text encoders and VAE, mixed precision and the LoRA half of the protocol.

    Mode control: the adapters are plain objects (as ``TinyFlowModel``), not ``nn.Module``s, so that
    ``.parameters()``/``.state_dict()`` can never sweep up the frozen multi-GB encoders. Call
    ``train_mode(True/False)``; only the transformer changes mode, encoders and VAE stay in eval.

    Precision: frozen weights (transformer base, text encoders) are stored in ``precision``'s dtype,
    the LoRA weights in float32, the transformer runs under ``torch.autocast`` to that dtype (not on
    fp32), the VAE is kept and run in float32, ``velocity`` returns x's dtype and all step maths
    (``vgpo.sampling``) is float32.
    """

    pipeline_class: type  # set by subclasses (StableDiffusion3Pipeline, FluxPipeline)

    @classmethod
    def load_pipeline_class(cls) -> type:
        """The diffusers pipeline class this adapter wraps (imported lazily)."""
        raise NotImplementedError

    @classmethod
    def from_pretrained(
        cls,
        path_or_hub_id: str | Path,
        resolution: int | Sequence[int] = 512,
        *,
        local_files_only: bool = False,
        device: str | torch.device | None = None,
        precision: str | None = None,
        pipeline_kwargs: Mapping[str, Any] | None = None,
        **kwargs: Any,
    ):
        """Load the pipeline from a local folder or hub id (weights in ``precision``'s dtype; VAE in
        fp32) and wrap it; ``local_files_only`` never touches the network. Other keyword arguments go
        to the adapter's constructor."""
        dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        dtype = precision_dtype(precision, dev)
        pipe = load_pipeline(
            cls.load_pipeline_class(), path_or_hub_id, dtype, local_files_only, **dict(pipeline_kwargs or {})
        )
        return cls(pipe, resolution, device=dev, precision=precision, **kwargs)

    def _setup(
        self,
        pipeline: Any,
        device: str | torch.device | None,
        precision: str | None,
        lora: LoraOptions | Mapping[str, Any] | None,
        gradient_checkpointing: bool,
        text_encoders: list[torch.nn.Module],
    ) -> None:
        if device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(device)
        self.dtype = precision_dtype(precision, self.device)
        self.compute_dtype = self.dtype  # the transformer runs in its weights' dtype (autocast below)
        self.pipeline = pipeline
        self.transformer = pipeline.transformer
        self.vae = pipeline.vae
        self.lora_options = LoraOptions.from_spec(lora)
        pipeline.set_progress_bar_config(disable=True)
        for enc in text_encoders:
            _place(enc.requires_grad_(False).eval(), self.device, self.dtype)
        _place(self.vae.requires_grad_(False).eval(), self.device, torch.float32)
        _place(self.transformer.requires_grad_(False), self.device, self.dtype)
        add_lora(self.transformer, self.lora_options)
        if gradient_checkpointing:
            self.transformer.enable_gradient_checkpointing()
        self.transformer.eval()

    # --- mixed precision ------------------------------------------------------------------------
    def _autocast(self):
        if self.dtype == torch.float32:
            return torch.autocast(self.device.type, enabled=False)
        return torch.autocast(self.device.type, dtype=self.dtype)

    def _vae_decode(self, z: torch.Tensor, batch_size: int) -> torch.Tensor:
        """VAE latents (already unscaled) to images in [0, 1], float32."""
        cfg = self.vae.config
        z = z.float().to(self.device) / cfg.scaling_factor + (cfg.shift_factor or 0.0)
        with torch.autocast(self.device.type, enabled=False):
            chunks = [self.vae.decode(c, return_dict=False)[0] for c in z.split(batch_size)]
        return (torch.cat(chunks).float() / 2 + 0.5).clamp(0.0, 1.0)

    # --- LoRA half of the protocol --------------------------------------------------------------
    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        return lora_parameters(self.transformer)

    def reference(self):
        """Adapter disabled: the frozen base model (the KL anchor)."""
        return adapters_disabled(self.transformer)

    def fixed_weights(self) -> AbstractContextManager[None]:
        return merged_weights_reused(self.transformer, self.lora_options)

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        return lora_state_dict(self.transformer)

    def load_trainable_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        load_lora_state_dict(self.transformer, state)

    def fsdp_units(self) -> tuple[torch.nn.Module, list[torch.nn.Module], list[torch.nn.Module]]:
        # The transformer blocks (FLUX: double- and single-stream); frozen encoders and VAE stay whole.
        blocks = [
            b
            for name in ("transformer_blocks", "single_transformer_blocks")
            for b in getattr(self.transformer, name, [])
        ]
        return self.transformer, blocks, []

    def train_mode(self, mode: bool = True) -> None:
        """Training mode for the transformer (LoRA dropout); encoders and VAE stay in eval mode."""
        self.transformer.train(mode)

    def save_lora(self, directory: str | Path, weight_name: str = DEFAULT_WEIGHT_NAME) -> Path:
        """Save the adapter for ``pipeline_class.load_lora_weights(directory)`` (diffusers)."""
        return save_lora_weights(
            directory, self.trainable_state_dict(), self.lora_options, self.pipeline_class, weight_name
        )


def load_pipeline(pipeline_class: type, path: str | Path, dtype: torch.dtype, local_files_only: bool, **kwargs: Any):
    """``pipeline_class.from_pretrained`` with a one-line ``VgpoError`` naming the path on failure."""
    try:
        return pipeline_class.from_pretrained(str(path), dtype=dtype, local_files_only=local_files_only, **kwargs)
    except (OSError, ValueError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        hint = " (local_files_only: the weights must already be on disk)" if local_files_only else ""
        raise VgpoError(f"cannot load {pipeline_class.__name__} from '{path}'{hint}: {first}") from None
