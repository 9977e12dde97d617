"""Ground-truth renders of the text world: the target word in DejaVu Sans Bold on a light canvas.

The font ships with matplotlib (a core dependency), so renders are identical wherever vgpo installs.
Each seed varies the font size (14-17 px, shrunk until the word fits), the position (a few pixels around
the centre) and the colours (a dark text colour on a light background); the word always stays inside
the canvas with a margin, so the OCR judge reads clean renders.
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from vgpo.errors import VgpoError

from .prompts import target_text

IMAGE_SIZE = (32, 96)  # (H, W): multiples of 8 for the tiny U-Net, room for 6 letters
FONT_SIZES = (14, 15, 16, 17)
MIN_FONT_SIZE = 9
MARGIN = 3  # pixels kept free on every side
MAX_SHIFT = 4  # pixels of random offset from the centre, each axis (clipped by the margin)


def font_path() -> Path:
    import matplotlib

    return Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans-Bold.ttf"


@functools.cache
def _font(size: int) -> ImageFont.FreeTypeFont:
    path = font_path()
    if not path.is_file():
        raise VgpoError(f"text world: font {path} not found (it ships with matplotlib; reinstall matplotlib)")
    return ImageFont.truetype(str(path), size)


def _fit(text: str, size: int, height: int, width: int) -> tuple[ImageFont.FreeTypeFont, tuple[int, int, int, int]]:
    while True:
        font = _font(size)
        box = font.getbbox(text)
        if (box[2] - box[0] <= width - 2 * MARGIN and box[3] - box[1] <= height - 2 * MARGIN) or size <= MIN_FONT_SIZE:
            return font, box
        size -= 1


def render_text(text: str, seed: int, image_size: tuple[int, int] = IMAGE_SIZE) -> torch.Tensor:
    """(3, H, W) float32 in [0, 1] showing ``text``; deterministic in (text, seed, image_size)."""
    height, width = image_size
    rng = np.random.default_rng(seed)
    font, (left, top, right, bottom) = _fit(text, int(rng.choice(FONT_SIZES)), height, width)
    text_w, text_h = right - left, bottom - top
    background = rng.uniform(0.82, 1.0, size=3)
    foreground = rng.uniform(0.0, 0.3, size=3)
    x0 = (width - text_w) / 2 + rng.uniform(-MAX_SHIFT, MAX_SHIFT)
    y0 = (height - text_h) / 2 + rng.uniform(-MAX_SHIFT / 2, MAX_SHIFT / 2)
    x0 = min(max(x0, MARGIN), max(width - MARGIN - text_w, MARGIN))
    y0 = min(max(y0, MARGIN), max(height - MARGIN - text_h, MARGIN))
    image = Image.new("RGB", (width, height), tuple(round(255 * c) for c in background))
    draw = ImageDraw.Draw(image)
    draw.text((round(x0) - left, round(y0) - top), text, font=font, fill=tuple(round(255 * c) for c in foreground))
    array = np.asarray(image, dtype=np.float32) / 255.0
    return torch.from_numpy(array.transpose(2, 0, 1).copy())


def render(metadata: dict, seed: int) -> torch.Tensor:
    """World renderer: the metadata's target text (``"text"``, else the prompt's quoted span)."""
    text = metadata.get("text")
    if not isinstance(text, str):
        text = target_text(str(metadata.get("prompt", "")), metadata)
    return render_text(text, seed)
