"""Evaluation of the text world: the OCR reward's mean (``ocr/accuracy``) and the exact-match rate.

Keys: ``ocr/accuracy`` (mean Flow-GRPO OCR reward), ``ocr/accuracy_se`` (its standard error over the
images: sample standard deviation / sqrt(count); 0 for a single image), ``ocr/exact`` (recognised text,
spaces removed and lower-cased, equals the target), ``ocr/count``, and per target length N:
``len{N}/accuracy``, ``len{N}/exact``, ``len{N}/count``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from vgpo.errors import VgpoError

_JUDGE = None


def _judge():
    """The OCR reward with its default options, built once (engine loading is lazy)."""
    global _JUDGE
    if _JUDGE is None:
        from vgpo.rewards import build

        _JUDGE = build("ocr")
    return _JUDGE


def evaluate(images: torch.Tensor, metadata: Sequence[dict]) -> dict:
    if images.shape[0] != len(metadata):
        raise VgpoError(f"text evaluate: got {images.shape[0]} images but {len(metadata)} metadata dicts")
    if not metadata:
        raise VgpoError("text evaluate: no images to evaluate")
    from vgpo.rewards.ocr import exact_match, normalize, ocr_score

    judge = _judge()
    prompts = [str(m.get("prompt", "")) for m in metadata]
    targets = judge.targets(prompts, metadata)
    texts = [text for text, _ in judge.read(images)]
    scores = [ocr_score(text, target) for text, target in zip(texts, targets)]
    exact = [float(exact_match(text, target)) for text, target in zip(texts, targets)]
    mean = sum(scores) / len(scores)
    variance = sum((s - mean) ** 2 for s in scores) / (len(scores) - 1) if len(scores) > 1 else 0.0
    metrics: dict = {
        "ocr/accuracy": mean,
        "ocr/accuracy_se": math.sqrt(variance / len(scores)),
        "ocr/exact": sum(exact) / len(exact),
        "ocr/count": len(scores),
    }
    for length in sorted({len(normalize(t)) for t in targets}):
        idx = [i for i, t in enumerate(targets) if len(normalize(t)) == length]
        metrics[f"len{length}/accuracy"] = sum(scores[i] for i in idx) / len(idx)
        metrics[f"len{length}/exact"] = sum(exact[i] for i in idx) / len(idx)
        metrics[f"len{length}/count"] = len(idx)
    return metrics


def accuracy_standard_error(metrics: dict) -> float:
    """Standard error of ``ocr/accuracy`` from an ``evaluate`` result (the images treated as independent)."""
    if "ocr/accuracy_se" not in metrics:
        raise VgpoError("text standard error: expected an evaluate() result with 'ocr/accuracy_se'")
    return metrics["ocr/accuracy_se"]


def format_table(metrics: dict) -> str:
    """Rows: overall, then each target length; columns: accuracy, exact, count."""
    rows = [("overall", "ocr")]
    rows += [
        (f"{key[3:-6]} letters", key[:-6])
        for key in sorted(metrics)
        if key.startswith("len") and key.endswith("/count")
    ]
    lines = [f"{'text':<12}{'accuracy':>10}{'exact':>8}{'count':>7}"]
    for label, prefix in rows:
        if f"{prefix}/accuracy" not in metrics:
            continue
        lines.append(
            f"{label:<12}{metrics[f'{prefix}/accuracy']:>10.3f}{metrics[f'{prefix}/exact']:>8.3f}"
            f"{int(metrics.get(f'{prefix}/count', 0)):>7d}"
        )
    return "\n".join(lines)
