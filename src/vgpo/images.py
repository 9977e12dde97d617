"""Image grids and PNG output."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """(B, 3, H, W) float in [0, 1] -> (B, H, W, 3) uint8."""
    return (images.detach().float().clamp(0, 1).permute(0, 2, 3, 1).cpu().numpy() * 255 + 0.5).astype(np.uint8)


def save_grid(
    images: torch.Tensor,
    captions: Sequence[str],
    path: str | Path,
    cols: int = 8,
    scale: int = 3,
    caption_chars: int = 26,
) -> Path:
    """Save a PNG grid of images (upscaled ``scale``x, nearest) with a wrapped caption under each."""
    arr = to_uint8(images)
    n, h, w, _ = arr.shape
    cols = max(1, min(cols, n))
    rows = (n + cols - 1) // cols
    font = ImageFont.load_default(size=10)
    cell_w = max(w * scale, 6 * caption_chars) + 8
    text_h = 36
    cell_h = h * scale + text_h
    canvas = Image.new("RGB", (cols * cell_w, rows * cell_h), "white")
    draw = ImageDraw.Draw(canvas)
    for i in range(n):
        r, c = divmod(i, cols)
        x0, y0 = c * cell_w + (cell_w - w * scale) // 2, r * cell_h
        canvas.paste(Image.fromarray(arr[i]).resize((w * scale, h * scale), Image.NEAREST), (x0, y0))
        caption = captions[i] if i < len(captions) else ""
        lines = [caption[j : j + caption_chars] for j in range(0, len(caption), caption_chars)][:3]
        for k, line in enumerate(lines):
            draw.text((c * cell_w + 4, y0 + h * scale + 2 + 11 * k), line, fill="black", font=font)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path)
    return path
