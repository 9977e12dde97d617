"""OCR reward (Flow-GRPO's text-rendering metric) judged by RapidOCR's PP-OCR models.

Install with the ``ocr`` extra (``rapidocr`` + ``onnxruntime`` + ``rapidfuzz``). The ONNX models ship
inside the rapidocr wheel; this module passes their paths explicitly, so rapidocr's download step is
never reached and no network access is attempted.

Metric (Flow-GRPO): target = the prompt's first quoted span (else ``metadata["text"]``); target and
recognised text have spaces removed and are lower-cased; reward = 1 when the target is a substring of the
recognised text, else ``1 - min(Levenshtein(recognised, target), len(target)) / len(target)``.
Recognised text whose confidence is under ``min_confidence`` counts as empty.
With ``exact_bonus`` b > 0 (our option, not Flow-GRPO's) the reward is that score plus b when the recognised text
equals the target (``exact_match``, the text world's ``ocr/exact``): credit for a whole word beside the per-letter
credit, so a group's rare fully correct word stands out from its near misses.

Options of ``vgpo.rewards.build("ocr", ...)`` (or ``{"ocr": {"weight": 1, ...}}`` in a config):

mode: how an image is read.
    ``"rec"``: recognition only, on the whole image resized to ``rec_height`` pixels high; right for
    images that are one line of text, such as the text world's 32x96 canvas (fast: ~10 ms/image).
    ``"det"``: text detection (DB) on the image resized so its longer side is ``det_side_len``, then
    recognition of every detected box; the texts of one image are joined in reading order (top to
    bottom, left to right). Right for scenes with text somewhere in them, such as 512x512 outputs.
    ``"auto"`` (default): ``"rec"`` when the images are at least twice as wide as high, else ``"det"``.
min_confidence: recognised text (per box in ``"det"`` mode) under this confidence counts as empty;
    default 0.5, RapidOCR's own ``text_score`` default. Flow-GRPO keeps everything (0.0); with 0 a
    blank or noise image is read as a few random characters and earns partial credit.
threads: ONNX Runtime intra-op threads; None (default): torch's thread count when the engine is built
    (``torch.get_num_threads()``), so a run's ``threads`` setting, and ``vgpo bench --jobs``, bound the
    OCR as they bound the network instead of two jobs' OCR each spinning on every core.
rec_height: height the recognition model reads at (its native 48).
det_side_len: longer side of the detection input, a multiple of 32 (default 512: SD's 512x512 outputs
    go in unresized; ~0.3 s/image on 2 cores).
batch_size: crops per recognition model call inside the one engine call (default 64).
exact_bonus: added to an image's reward when its recognised text equals the target (default 0: Flow-GRPO's
    metric alone). Training only: evaluation keeps the metric.

The engine is built on the first call. One batch makes one detection model call (``"det"``) and one
recognition engine call for all crops of the batch; only numpy pre/post-processing loops over images.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from vgpo.errors import VgpoError
from vgpo.rewards import register

MODES = ("auto", "rec", "det")
INSTALL_HINT = "install the ocr extra: pip install 'vgpo[ocr]' (rapidocr, onnxruntime, rapidfuzz)"


def _levenshtein():
    try:
        from rapidfuzz.distance import Levenshtein
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise VgpoError(f"reward 'ocr' needs rapidfuzz; {INSTALL_HINT}") from exc
    return Levenshtein


def normalize(text: str) -> str:
    """Spaces removed (all whitespace) and lower-cased, as Flow-GRPO compares texts."""
    return "".join(text.split()).lower()


def target_of(prompt: str, metadata: dict | None = None) -> str:
    """Target text: the prompt's first quoted span, else ``metadata["text"]``; VgpoError when neither."""
    start = prompt.find('"')
    end = prompt.find('"', start + 1) if start >= 0 else -1
    if end > start >= 0:
        return prompt[start + 1 : end]
    if metadata is not None and isinstance(metadata.get("text"), str):
        return metadata["text"]
    raise VgpoError(
        f"reward 'ocr': prompt {prompt!r} has no text between double quotes and its "
        'metadata has no "text" entry; expected e.g. a sign that says "RIVER"'
    )


def ocr_score(recognised: str, target: str) -> float:
    """Flow-GRPO's OCR reward of one recognised text against one target."""
    target, recognised = normalize(target), normalize(recognised)
    if not target:
        raise VgpoError("reward 'ocr': empty target text")
    if target in recognised:
        return 1.0
    dist = _levenshtein().distance(recognised, target)
    return 1.0 - min(dist, len(target)) / len(target)


def exact_match(recognised: str, target: str) -> bool:
    """The recognised text equals the target, spaces removed and lower-cased (no extra letters either)."""
    return normalize(recognised) == normalize(target)


def _shipped_model(models_dir: Path, kind: str) -> Path:
    found = sorted(models_dir.glob(f"*_{kind}_*.onnx"))
    if len(found) != 1:
        raise VgpoError(
            f"reward 'ocr': expected one {kind} model shipped in {models_dir}, found "
            f"{[p.name for p in found] or 'none'}; install the pinned rapidocr of the ocr extra"
        )
    return found[0]


def _to_uint8_bgr(images: torch.Tensor) -> np.ndarray:
    """(B, 3, H, W) float in [0, 1] -> (B, H, W, 3) uint8 BGR, RapidOCR's pixel layout."""
    array = (images.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    return np.ascontiguousarray(array[..., ::-1])


def _resize(images: torch.Tensor, height: int, width: int) -> torch.Tensor:
    if images.shape[-2:] == (height, width):
        return images
    return F.interpolate(images, size=(height, width), mode="bicubic", antialias=True, align_corners=False)


@register("ocr")
class OcrReward:
    """Flow-GRPO OCR reward; see the module docstring for the metric and the options."""

    def __init__(
        self,
        mode: str = "auto",
        min_confidence: float = 0.5,
        threads: int | None = None,
        rec_height: int = 48,
        det_side_len: int = 512,
        batch_size: int = 64,
        exact_bonus: float = 0.0,
    ):
        if mode not in MODES:
            raise VgpoError(f"reward.ocr.mode: expected one of {', '.join(MODES)}, got {mode!r}")
        if not isinstance(min_confidence, (int, float)) or not 0.0 <= min_confidence <= 1.0:
            raise VgpoError(f"reward.ocr.min_confidence: expected a number in [0, 1], got {min_confidence!r}")
        if threads is not None and (not isinstance(threads, int) or threads < 1):
            raise VgpoError(f"reward.ocr.threads: expected a positive integer or null, got {threads!r}")
        for name, value in (("rec_height", rec_height), ("det_side_len", det_side_len), ("batch_size", batch_size)):
            if not isinstance(value, int) or value < 1:
                raise VgpoError(f"reward.ocr.{name}: expected a positive integer, got {value!r}")
        if det_side_len % 32:
            raise VgpoError(f"reward.ocr.det_side_len: expected a multiple of 32, got {det_side_len}")
        numeric = isinstance(exact_bonus, (int, float)) and not isinstance(exact_bonus, bool)
        if not numeric or not 0 <= exact_bonus < math.inf:
            raise VgpoError(f"reward.ocr.exact_bonus: expected a finite number >= 0, got {exact_bonus!r}")
        self.mode = mode
        self.exact_bonus = float(exact_bonus)
        self.min_confidence = float(min_confidence)
        self.threads = threads
        self.rec_height = rec_height
        self.det_side_len = det_side_len
        self.batch_size = batch_size
        _levenshtein()  # fail at build time, not mid-training, when rapidfuzz is missing
        self._ocr = None
        self._det = None
        self.last_texts: list[str] = []  # recognised texts of the last call, for logging

    # -- engine -----------------------------------------------------------------------------------
    def _engine(self):
        if self._ocr is None:
            try:
                import rapidocr
                from rapidocr import RapidOCR
            except ImportError as exc:
                raise VgpoError(f"reward 'ocr' needs rapidocr and onnxruntime; {INSTALL_HINT}") from exc
            models = Path(rapidocr.__file__).resolve().parent / "models"
            threads = torch.get_num_threads() if self.threads is None else self.threads
            params = {
                "Global.use_det": False,
                "Global.use_cls": False,
                "Global.log_level": "error",
                # Explicit paths: rapidocr's download-if-missing step is skipped.
                "Det.model_path": str(_shipped_model(models, "det")),
                "Rec.model_path": str(_shipped_model(models, "rec")),
                "Det.limit_type": "max",
                "Det.limit_side_len": self.det_side_len,
                "Rec.rec_batch_num": self.batch_size,
                # Minimum width only: each batch is padded to its widest crop, not to 320 pixels.
                "Rec.rec_img_shape": [3, self.rec_height, self.rec_height],
                "EngineConfig.onnxruntime.intra_op_num_threads": threads,
                "EngineConfig.onnxruntime.inter_op_num_threads": 1,
            }
            self._ocr = RapidOCR(params=params)
        return self._ocr

    def _detector(self):
        if self._det is None:
            self._det = self._engine()._load_det_model()
        return self._det

    def _recognise(self, crops: list[np.ndarray]) -> tuple[list[str], list[float]]:
        """One engine call for all crops."""
        if not crops:
            return [], []
        out = self._engine().recognize_txt(crops)
        return list(out.txts), [float(s) for s in out.scores]

    # -- reading ----------------------------------------------------------------------------------
    def resolve_mode(self, height: int, width: int) -> str:
        if self.mode != "auto":
            return self.mode
        return "rec" if width >= 2 * height else "det"

    def read(self, images: torch.Tensor) -> list[tuple[str, float]]:
        """Recognised text and confidence of each image; text under ``min_confidence`` is ''.

        In ``"det"`` mode the confidence is the mean over the kept boxes (0 when none is kept).
        """
        if images.ndim != 4 or images.shape[1] != 3:
            raise VgpoError(f"reward 'ocr': expected images of shape (B, 3, H, W), got {tuple(images.shape)}")
        if images.shape[0] == 0:
            return []
        images = images.detach().float().cpu()
        height, width = images.shape[-2:]
        if self.resolve_mode(height, width) == "rec":
            return self._read_rec(images)
        return self._read_det(images)

    def _read_rec(self, images: torch.Tensor) -> list[tuple[str, float]]:
        height, width = images.shape[-2:]
        new_w = max(self.rec_height, round(width * self.rec_height / height))
        batch = _to_uint8_bgr(_resize(images, self.rec_height, new_w))
        texts, scores = self._recognise(list(batch))
        return [(t, s) if s >= self.min_confidence else ("", s) for t, s in zip(texts, scores)]

    def _read_det(self, images: torch.Tensor) -> list[tuple[str, float]]:
        from rapidocr.utils.process_img import get_rotate_crop_image

        det = self._detector()
        height, width = images.shape[-2:]
        scale = self.det_side_len / max(height, width)
        det_h = max(32, round(height * scale / 32) * 32)
        det_w = max(32, round(width * scale / 32) * 32)
        det_input = (_resize(images, det_h, det_w).clamp(0, 1) - 0.5) / 0.5  # RapidOCR's Det mean/std
        preds = det.session(np.ascontiguousarray(det_input.numpy(), dtype=np.float32))  # one call, whole batch
        originals = _to_uint8_bgr(images)
        crops: list[np.ndarray] = []
        owners: list[int] = []
        for i in range(images.shape[0]):
            boxes, _ = det.postprocess_op(preds[i : i + 1], (height, width))
            if len(boxes) == 0:
                continue
            for box in det.sorted_boxes(np.asarray(boxes)):
                crops.append(get_rotate_crop_image(originals[i], box.astype(np.float32).copy()))
                owners.append(i)
        texts, scores = self._recognise(crops)
        parts: list[list[str]] = [[] for _ in range(images.shape[0])]
        confs: list[list[float]] = [[] for _ in range(images.shape[0])]
        for owner, text, score in zip(owners, texts, scores):
            if score >= self.min_confidence and text.strip():
                parts[owner].append(text)
                confs[owner].append(score)
        return [("".join(p), float(np.mean(c)) if c else 0.0) for p, c in zip(parts, confs)]

    # -- reward -----------------------------------------------------------------------------------
    def targets(self, prompts: Sequence[str], metadata: Sequence[dict] | None) -> list[str]:
        if metadata is not None and len(metadata) not in (0, len(prompts)):
            raise VgpoError(f"reward 'ocr': got {len(prompts)} prompts but {len(metadata)} metadata dicts")
        metas = list(metadata) if metadata else [None] * len(prompts)
        return [target_of(p, m) for p, m in zip(prompts, metas)]

    def __call__(self, images: torch.Tensor, prompts: Sequence[str], metadata: Sequence[dict]) -> torch.Tensor:
        if len(prompts) != images.shape[0]:
            raise VgpoError(f"reward 'ocr': got {images.shape[0]} images but {len(prompts)} prompts")
        targets = self.targets(prompts, metadata)
        read = self.read(images)
        self.last_texts = [text for text, _ in read]
        pairs = list(zip(self.last_texts, targets))
        scores = [ocr_score(text, target) + self.exact_bonus * exact_match(text, target) for text, target in pairs]
        return torch.tensor(scores, dtype=torch.float32)
