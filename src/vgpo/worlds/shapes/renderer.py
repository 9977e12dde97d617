"""Ground-truth scenes: antialiased shapes on a light background that satisfy a metadata record.

Renders are the pretraining data of the tiny model and the reference the detector is checked on, so
they draw exactly the included objects (no distractors), keep a gap between objects so that they stay
separable, and place positioned objects well inside the relation's cone so that the scene satisfies it
with a margin.
"""

from __future__ import annotations

import random

import numpy as np
import torch
from PIL import Image, ImageDraw

from vgpo.errors import VgpoError
from vgpo.worlds.shapes.prompts import COLORS

IMAGE_SIZE = (32, 32)  # (H, W)
# Well separated hues at full saturation; the detector classifies pixels against these.
PALETTE: dict[str, tuple[float, float, float]] = {
    "red": (0.86, 0.10, 0.10),
    "green": (0.10, 0.66, 0.16),
    "blue": (0.12, 0.26, 0.92),
    "yellow": (0.96, 0.84, 0.06),
    "purple": (0.56, 0.16, 0.76),
    "orange": (0.98, 0.50, 0.02),
}
COLOR_JITTER = 0.03  # per channel, per object: renders are not all one exact RGB value
SIZE_RANGE = (7.0, 12.0)  # bounding-box side in pixels
GAP = 2.0  # minimum pixels between bounding boxes
MARGIN = 1.0  # minimum pixels between a box and the canvas edge
SUPERSAMPLE = 4
ATTEMPTS = 500
# A positioned object's offset across the relation's axis is at most this fraction of its offset along it.
CONE = 0.4


def _separated(a: tuple[float, float, float], b: tuple[float, float, float]) -> bool:
    """Boxes (cx, cy, side) at least GAP apart along x or y."""
    reach = (a[2] + b[2]) / 2 + GAP
    return abs(a[0] - b[0]) >= reach or abs(a[1] - b[1]) >= reach


def _clearly(rel: str, a: tuple[float, float, float], b: tuple[float, float, float]) -> bool:
    """Box ``a`` is ``rel`` box ``b``: apart along the relation's axis and inside its cone (y points down)."""
    dx, dy = a[0] - b[0], a[1] - b[1]
    along, across = {"left of": (-dx, dy), "right of": (dx, dy), "above": (-dy, dx), "below": (dy, dx)}[rel]
    return along >= (a[2] + b[2]) / 2 + GAP and abs(across) <= CONE * along


def _place(meta: dict, owners: list[int], rng: random.Random) -> list[tuple[float, float, float]]:
    """Boxes (cx, cy, side) for objects owned by includes ``owners``, by rejection sampling.

    Sizes shrink towards the smallest as attempts fail, so crowded scenes (four large objects) still fit.
    """
    height, width = IMAGE_SIZE
    low, high = SIZE_RANGE
    for attempt in range(ATTEMPTS):
        top = max(low, high - attempt * (high - low) / 100)
        boxes = []
        for _ in owners:
            side = rng.uniform(low, top)
            half = side / 2 + MARGIN
            boxes.append((rng.uniform(half, width - half), rng.uniform(half, height - half), side))
        if not all(_separated(boxes[i], boxes[j]) for i in range(len(boxes)) for j in range(i)):
            continue
        if all(
            _clearly(meta["include"][oi]["position"][0], boxes[i], boxes[j])
            for i, oi in enumerate(owners)
            if "position" in meta["include"][oi]
            for j, oj in enumerate(owners)
            if oj == meta["include"][oi]["position"][1]
        ):
            return boxes
    raise VgpoError(f"cannot place the objects of {meta.get('prompt')!r} on a {width}x{height} canvas")


def _rgb8(color: tuple[float, float, float]) -> tuple[int, int, int]:
    return tuple(int(round(255 * min(max(c, 0.0), 1.0))) for c in color)


def render(meta: dict, seed: int) -> torch.Tensor:
    """(3, 32, 32) float32 image in [0, 1] showing exactly the included objects; deterministic in seed.

    Objects without a colour get a random palette colour each. Shapes are drawn at 4x and box-filtered
    down, which gives the soft edges a generative model produces.
    """
    return _draw(meta, seed, masks=False)[0]


def render_masks(meta: dict, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``render(meta, seed)`` and, per include entry, the fraction of each pixel its objects cover:
    (len(include), 32, 32) float32 in [0, 1] (a counted entry's instances share one mask). What the
    grounding loss of pretraining supervises attention with."""
    return _draw(meta, seed, masks=True)


def _draw(meta: dict, seed: int, masks: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    rng = random.Random(seed)
    owners = [i for i, obj in enumerate(meta["include"]) for _ in range(obj["count"])]
    colors = [meta["include"][i].get("color") or rng.choice(COLORS) for i in owners]
    boxes = _place(meta, owners, rng)
    grey = rng.uniform(0.86, 0.97)
    background = _rgb8(tuple(grey + rng.uniform(-0.02, 0.02) for _ in range(3)))
    height, width = IMAGE_SIZE
    size = (width * SUPERSAMPLE, height * SUPERSAMPLE)
    canvas = Image.new("RGB", size, background)
    draw = ImageDraw.Draw(canvas)
    layers = [Image.new("L", size, 0) for _ in meta["include"]] if masks else []
    pens = [ImageDraw.Draw(layer) for layer in layers]
    for owner, color, (cx, cy, side) in zip(owners, colors, boxes):
        fill = _rgb8(tuple(c + rng.uniform(-COLOR_JITTER, COLOR_JITTER) for c in PALETTE[color]))
        x0, y0 = round((cx - side / 2) * SUPERSAMPLE), round((cy - side / 2) * SUPERSAMPLE)
        x1, y1 = round((cx + side / 2) * SUPERSAMPLE) - 1, round((cy + side / 2) * SUPERSAMPLE) - 1
        shape = meta["include"][owner]["class"]
        for pen, ink in [(draw, fill)] + ([(pens[owner], 255)] if masks else []):
            if shape == "circle":
                pen.ellipse((x0, y0, x1, y1), fill=ink)
            elif shape == "square":
                pen.rectangle((x0, y0, x1, y1), fill=ink)
            else:
                pen.polygon([((x0 + x1) / 2, y0), (x1, y1), (x0, y1)], fill=ink)
    image = _small(canvas)
    if not masks:
        return image, None
    return image, torch.stack([_small(layer)[0] for layer in layers])


def _small(canvas: Image.Image) -> torch.Tensor:
    """A supersampled canvas box-filtered to IMAGE_SIZE: (channels, H, W) float32 in [0, 1]."""
    small = np.asarray(canvas.resize(IMAGE_SIZE[::-1], Image.Resampling.BOX), dtype=np.float32)
    small = small[..., None] if small.ndim == 2 else small
    return torch.from_numpy(np.ascontiguousarray(small.transpose(2, 0, 1)) / 255.0)
