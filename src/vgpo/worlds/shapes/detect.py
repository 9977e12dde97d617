"""A cheap, batched detector for shapes scenes: palette unmixing, connected components, shape by fill.

Each pixel is explained as background mixed with one palette colour: ``p = bg + a (c_k - bg)``. The
colour whose mixing line passes closest to the pixel wins, and the pixel is foreground when that colour
covers at least half of it. Unmixing (rather than nearest palette colour) keeps antialiased edges with
their object: a half-covered blue edge pixel lies nearer to purple than to blue, but on blue's line.
Components are found per colour, so touching objects of different colours stay apart. The shape is read
off the component's coverage summed along rows (its row profile) and along columns: a triangle's row
profile grows from apex to base, so it is skewed; a square's profiles are flat, so its area equals its
widest row times its tallest column, where a circle's is pi/4 of that. Sums over whole rows barely move
under pixel noise a viewer cannot see; the tests used before, which hung on the box (the share of its
pixels above coverage 0.5, the mass centre's drop below its middle), did (docs/learning-study.md
sections 13 and 15).
Everything is vectorised over the batch except building the Detection lists.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass

import numpy as np
import torch
from scipy import ndimage

from vgpo.worlds.shapes.prompts import CLASSES, COLORS
from vgpo.worlds.shapes.renderer import PALETTE

_PALETTE = np.array([PALETTE[c] for c in COLORS], dtype=np.float32)  # (K, 3)
MIN_COVERAGE = 0.5  # a pixel is foreground when its colour covers at least this much of it
MAX_RESIDUAL = 0.25  # RGB distance from the mixing line beyond which a pixel is no palette colour
MIN_AREA_FRACTION = 8 / 1024  # smaller components are specks (8 px on a 32x32 canvas)
# Shape thresholds, each halfway between the ranges measured on renders of the train split's metadata.
# The skewness of the row profile (third standardised moment, y down) on 2,000 renders: triangles
# -0.623 to -0.499 (their apex is up), circles and squares -0.045 to 0.045. It is read first.
TRIANGLE_MAX_SKEW = -0.27
# squareness, area / (widest row x tallest column) of the coverage, on 5,000 renders (6-13 px objects):
# squares 0.999-1.049, circles 0.770-0.827 (triangles 0.544-0.722, told apart by the skewness first).
SQUARE_MIN_SCORE = 0.91
_SHAPE_CHUNK = 2048  # components measured at once, an (H, W) window each
# Components are connected within an image and colour plane (8-neighbourhood), never across planes.
_STRUCTURE = np.zeros((3, 3, 3), dtype=bool)
_STRUCTURE[1] = True


@dataclass(frozen=True)
class Detection:
    """One object: class and colour names, box centre (x, y) in pixels, box (x0, y0, x1, y1) with
    exclusive ends, area (coverage-weighted pixel count), and the skewness and squareness its class was
    read from (triangles at skew <= TRIANGLE_MAX_SKEW, then squares at squareness >= SQUARE_MIN_SCORE),
    kept for diagnostics."""

    cls: str
    color: str
    center: tuple[float, float]
    bbox: tuple[int, int, int, int]
    area: float
    squareness: float = float("nan")
    skew: float = float("nan")


def _background(x: np.ndarray) -> np.ndarray:
    """(B, 3) per-image background: median of the one-pixel border, where objects rarely reach."""
    border = np.concatenate([x[:, :, 0, :], x[:, :, -1, :], x[:, :, 1:-1, 0], x[:, :, 1:-1, -1]], axis=2)
    return np.median(border, axis=2)


def _unmix(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Coverage of every palette colour (B, K, H, W), and per pixel the winning palette index (B, H, W;
    -1 for background) and its coverage (B, H, W)."""
    b, _, h, w = x.shape
    bg = _background(x)
    v = (x - bg[:, :, None, None]).reshape(b, 3, h * w)  # (B, 3, P)
    d = _PALETTE[None] - bg[:, None, :]  # (B, K, 3)
    dd = np.maximum((d * d).sum(-1), 1e-4)[:, :, None]  # (B, K, 1)
    vd = d @ v  # (B, K, P)
    alpha = np.clip(vd / dd, 0.0, 1.0)
    residual = (v * v).sum(1)[:, None] - alpha * (2 * vd - alpha * dd)  # |v - alpha d|^2
    best = residual.argmin(1)  # (B, P)
    coverage = np.take_along_axis(alpha, best[:, None], 1)[:, 0]
    fit = np.take_along_axis(residual, best[:, None], 1)[:, 0]
    foreground = (coverage >= MIN_COVERAGE) & (fit <= MAX_RESIDUAL**2)
    return alpha.reshape(b, -1, h, w), np.where(foreground, best, -1).reshape(b, h, w), coverage.reshape(b, h, w)


def _classify(skew: np.ndarray, squareness: np.ndarray) -> np.ndarray:
    """Class index per component (0 circle, 1 square, 2 triangle) from the features measured above."""
    return np.where(skew <= TRIANGLE_MAX_SKEW, 2, np.where(squareness >= SQUARE_MIN_SCORE, 1, 0))


def _shape_features(
    alpha: np.ndarray, labels: np.ndarray, background: np.ndarray, box: np.ndarray, ids: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """The skewness of each component's row profile and its squareness, area / (widest row x tallest
    column), both from its coverage in its colour plane.

    alpha and labels are (B*K, H, W) (coverage per colour plane, component labels), background (B, H, W) the
    pixels no colour claims, box the components' (plane, x0, y0, x1, y1), ids the components to measure.
    The window is the box grown by one pixel, so edge pixels under coverage 0.5 count with their coverage;
    inside it only the component's own pixels and unclaimed ones count, so a neighbour never does.
    """
    k = alpha.shape[0] // background.shape[0]
    _, h, w = alpha.shape
    plane, x0, y0, x1, y1 = box[ids].T
    top, left = np.maximum(y0 - 1, 0), np.maximum(x0 - 1, 0)
    bottom, right = np.minimum(y1 + 1, h), np.minimum(x1 + 1, w)
    # Every window is (H, W), the most a grown box can span, so a component's sums never depend on the
    # other components measured with it (the batch, the chunk).
    row_index = np.arange(h)[None]  # (1, H)
    rows = top[:, None] + row_index  # (n, H)
    cols = left[:, None] + np.arange(w)[None]
    inside = (rows < bottom[:, None])[:, :, None] & (cols < right[:, None])[:, None, :]
    p, r, c = plane[:, None, None], np.minimum(rows, h - 1)[:, :, None], np.minimum(cols, w - 1)[:, None, :]
    counted = inside & ((labels[p, r, c] == (ids + 1)[:, None, None]) | background[p // k, r, c])
    cover = np.where(counted, alpha[p, r, c], 0.0)
    profile = cover.sum(2)  # (n, H): the row sums
    area = np.maximum(profile.sum(1), 1e-12)
    offset = row_index - (profile * row_index).sum(1, keepdims=True) / area[:, None]
    variance = (profile * offset**2).sum(1) / area
    skew = (profile * offset**3).sum(1) / area / np.maximum(variance, 1e-12) ** 1.5
    return skew, area / np.maximum(profile.max(1) * cover.sum(1).max(1), 1e-12)


def detect(images: torch.Tensor) -> list[list[Detection]]:
    """Objects in each image of a (B, 3, H, W) batch in [0, 1]; NaNs and out-of-range values are
    tolerated (read as clipped), so blurry or broken samples give few or odd detections, never errors."""

    x = torch.nan_to_num(images.detach().float().cpu(), nan=0.5).clamp(0, 1).numpy()
    b, _, h, w = x.shape
    k = len(COLORS)
    alpha, index, coverage = _unmix(x)
    planes = index[:, None] == np.arange(k)[None, :, None, None]  # (B, K, H, W)
    labels, n = ndimage.label(planes.reshape(b * k, h, w), structure=_STRUCTURE)
    if n == 0:
        return [[] for _ in range(b)]
    # Each pixel lies in at most one colour plane: gather its label there, so statistics run over (B, H, W).
    own = np.take_along_axis(labels.reshape(b, k, h * w), np.maximum(index, 0).reshape(b, 1, h * w), 1).ravel()
    pixels = np.bincount(own, minlength=n + 1)[1:]
    area = np.bincount(own, weights=coverage.ravel(), minlength=n + 1)[1:]
    box = np.array([(s[0].start, s[2].start, s[1].start, s[2].stop, s[1].stop) for s in ndimage.find_objects(labels)])
    keep = np.flatnonzero(pixels >= MIN_AREA_FRACTION * h * w)
    skew, squareness = np.full(n, np.nan), np.full(n, np.nan)
    plane_alpha, unclaimed = alpha.reshape(b * k, h, w), index < 0
    for start in range(0, keep.size, _SHAPE_CHUNK):  # in chunks: bounded memory on broken samples
        ids = keep[start : start + _SHAPE_CHUNK]
        skew[ids], squareness[ids] = _shape_features(plane_alpha, labels, unclaimed, box, ids)
    shape = _classify(skew, squareness)
    found: list[list[Detection]] = [[] for _ in range(b)]
    for i in keep[np.argsort(-area[keep], kind="stable")]:
        p, left, top, right, bottom = (int(v) for v in box[i])
        found[p // k].append(
            Detection(
                CLASSES[shape[i]],
                COLORS[p % k],
                ((left + right) / 2, (top + bottom) / 2),
                (left, top, right, bottom),
                float(area[i]),
                float(squareness[i]),
                float(skew[i]),
            )
        )
    return found


def unmatched(reference: list[Detection], found: list[Detection]) -> tuple[list[Detection], list[Detection]]:
    """Compare two detections of one scene by (class, colour), as counts: the objects of ``reference``
    that ``found`` lacks, and those of ``found`` that ``reference`` lacks (a square read as a circle is in
    each). Used to see which objects an image's change (a round trip, noise) misreads."""
    spare = collections.Counter((d.cls, d.color) for d in found)
    missing = []
    for d in reference:
        if spare[d.cls, d.color]:
            spare[d.cls, d.color] -= 1
        else:
            missing.append(d)
    extra = []
    for d in found:
        if spare[d.cls, d.color]:
            spare[d.cls, d.color] -= 1
            extra.append(d)
    return missing, extra
