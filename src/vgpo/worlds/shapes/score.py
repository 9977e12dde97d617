"""GenEval scoring of detected objects: strict (all constraints) and partial (fraction met) per image.

Constraints, as GenEval checks them but for one departure below: per include, its count (at least
``count`` objects of the class), its colour if given (at least ``count`` of them in that colour), its
position if given (the include's objects, largest first, all stand in the relation to those of the
referenced include, which must itself be satisfied); per exclude, fewer than ``count`` objects of the
class. Strict is 1 when all hold (GenEval's
``correct``); partial is the fraction of these checks that hold, each one GenEval's pass/fail test.

One departure from GenEval's ``evaluate``: a colour constraint holds when any ``count`` objects of the
class have the colour, where GenEval classifies the colour of the first ``count`` objects only (by
detector confidence; here objects are ordered by size).

Flow-GRPO trains on another score, its GenEval reward server's (``server_terms``): counts exact, every
include scored in parts, excludes ignored. It is a training reward here (``geneval-shapes-server``);
evaluation tables stay GenEval's.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from vgpo.errors import VgpoError
from vgpo.worlds.shapes.detect import Detection, detect
from vgpo.worlds.shapes.prompts import TAGS

POSITION_MARGIN = 0.1  # GenEval's POSITION_THRESHOLD: offsets shrink by this fraction of the box sizes


def relations(a: Detection, b: Detection) -> set[str]:
    """Where ``a`` is relative to ``b``: GenEval's ``relative_position`` on box centres (y points down).

    Each axis offset shrinks by a margin proportional to the boxes' sizes; a relation holds when its
    shrunk offset exceeds half of the full distance, so a diagonal neighbour can be both left and above.
    Box centres rather than mass centroids, as in GenEval: a triangle's centroid sits h/6 below its box
    centre, which would bias vertical relations.
    """
    dx, dy = a.center[0] - b.center[0], a.center[1] - b.center[1]
    norm = math.hypot(dx, dy)
    if norm == 0:
        return set()
    size_x = POSITION_MARGIN * (a.bbox[2] - a.bbox[0] + b.bbox[2] - b.bbox[0])
    size_y = POSITION_MARGIN * (a.bbox[3] - a.bbox[1] + b.bbox[3] - b.bbox[1])
    rx = math.copysign(max(abs(dx) - size_x, 0.0), dx) / norm
    ry = math.copysign(max(abs(dy) - size_y, 0.0), dy) / norm
    found = set()
    if rx < -0.5:
        found.add("left of")
    if rx > 0.5:
        found.add("right of")
    if ry < -0.5:
        found.add("above")
    if ry > 0.5:
        found.add("below")
    return found


def constraints(found: Sequence[Detection], meta: dict) -> list[bool]:
    """Each constraint of ``meta`` checked against the detections of one image (largest first)."""
    results: list[bool] = []
    groups: list[list[Detection] | None] = []
    for req in meta["include"]:
        count = req["count"]
        objects = [d for d in found if d.cls == req["class"]]
        met = len(objects) >= count
        results.append(met)
        if "color" in req:
            objects = [d for d in objects if d.color == req["color"]]
            met = len(objects) >= count
            results.append(met)
        if "position" in req:
            rel, target = req["position"]
            anchors = groups[target]
            met = met and anchors is not None and all(rel in relations(a, b) for a in objects[:count] for b in anchors)
            results.append(met)
        groups.append(objects[:count] if met else None)
    for req in meta.get("exclude", []):
        results.append(sum(d.cls == req["class"] for d in found) < req["count"])
    return results


# The reward server keeps at most this many detections per class (its MAX_OBJECTS).
SERVER_MAX_OBJECTS = 16


def server_terms(found: Sequence[Detection], meta: dict) -> tuple[list[float], bool]:
    """Flow-GRPO's GenEval reward server on the detections of one image (largest first): the per-include
    terms whose mean is its reward ``score``, and its ``strict_correct`` (every count exact, every colour and
    relation right).

    Per include of ``count`` objects of a class, with ``n`` the number of objects of that class detected
    (at most ``SERVER_MAX_OBJECTS``; no minimum-count reading, so extra objects cost reward):

    - count term ``1 - |count - n| / count``, unclipped: one extra circle for "a circle" gives 0, two give -1;
    - when ``n != count`` and the include has a colour or a position: one 0 term for both (a wrong count
      zeroes them, without checking them);
    - else colour term ``k / count``, ``k`` of the ``n`` objects having the colour (``1 - |count - k| / count``);
    - else, when the colour held (or none was asked), position: 0 when the referenced include did not fully
      match; else 1 when every object stands in the relation to every object of the referenced include,
      and when one pair does not, a 0 term *and* a 1 term (the server appends its 1 after the failing
      pair's 0 too, so a wrong relation weighs like half a term; kept, since this is the reward reproduced).

    Excludes add no term (the exact count term already penalises a counting prompt's extra objects), so
    objects of a class the prompt does not name cost nothing; a position after a failed colour adds no
    term either. GenEval's evaluation (``constraints``) differs: counts are minimums, colour and position
    are checked on the ``count`` largest objects of the class, an exclude is a constraint, and every
    constraint weighs the same.
    """
    terms: list[float] = []
    groups: list[list[Detection] | None] = []
    exact = True
    for req in meta["include"]:
        count = req["count"]
        objects = [d for d in found if d.cls == req["class"]][:SERVER_MAX_OBJECTS]
        terms.append(1.0 - abs(count - len(objects)) / count)
        matched = len(objects) == count
        if not matched:
            if "color" in req or "position" in req:
                terms.append(0.0)
        else:
            if "color" in req:
                hits = sum(d.color == req["color"] for d in objects)
                terms.append(1.0 - abs(count - hits) / count)
                matched = hits == count
            if "position" in req and matched:
                rel, target = req["position"]
                anchors = groups[target]
                if anchors is None:
                    terms.append(0.0)
                    matched = False
                else:
                    if not all(rel in relations(a, b) for a in objects for b in anchors):
                        terms.append(0.0)
                        matched = False
                    terms.append(1.0)
        exact = exact and matched
        groups.append(objects if matched else None)
    return terms, exact


def server_score(images: torch.Tensor, metadata: Sequence[dict]) -> tuple[torch.Tensor, torch.Tensor]:
    """(exact, score), each a (B,) float32 CPU tensor: the reward server's ``strict_correct`` and ``score``
    (the mean of ``server_terms``: 1 for a scene exactly as asked; it can go below 0, since a class
    detected more than twice as often as asked has a negative count term)."""
    _check_batch(images, metadata, "shapes server score")
    results = [server_terms(found, meta) for found, meta in zip(detect(images), metadata)]
    exact = torch.tensor([float(ok) for _, ok in results], dtype=torch.float32)
    value = torch.tensor([sum(terms) / len(terms) for terms, _ in results], dtype=torch.float32)
    return exact, value


def _check_batch(images: torch.Tensor, metadata: Sequence[dict], what: str) -> None:
    if images.ndim != 4 or images.shape[1] != 3 or images.shape[0] != len(metadata):
        raise VgpoError(
            f"{what}: expected images (B, 3, H, W) with one metadata record each, got "
            f"{tuple(images.shape)} and {len(metadata)} records"
        )


def score(images: torch.Tensor, metadata: Sequence[dict]) -> tuple[torch.Tensor, torch.Tensor]:
    """(strict, partial), each a (B,) float32 CPU tensor, for images (B, 3, H, W) in [0, 1]."""
    _check_batch(images, metadata, "shapes score")
    return _strict_partial(detect(images), metadata)


def _strict_partial(
    detections: Sequence[Sequence[Detection]], metadata: Sequence[dict]
) -> tuple[torch.Tensor, torch.Tensor]:
    checks = [constraints(found, meta) for found, meta in zip(detections, metadata)]
    strict = torch.tensor([float(all(c)) for c in checks], dtype=torch.float32)
    partial = torch.tensor([sum(c) / len(c) for c in checks], dtype=torch.float32)
    return strict, partial


def extra_objects(found: Sequence[Detection], meta: dict) -> bool:
    """True when the image holds more objects than the prompt's includes ask for in all: the duplicate
    that GenEval's minimum counts let pass (and the strict reward does not punish)."""
    return len(found) > sum(req["count"] for req in meta["include"])


def evaluate(images: torch.Tensor, metadata: Sequence[dict]) -> dict:
    """Per-tag and overall accuracy, flat keys ``"<tag>/strict"``, ``"<tag>/partial"``, ``"<tag>/n"``, and
    the hacking monitor ``"monitor/extra_objects"``, ``"monitor/exact_scene"`` (fractions of all images).

    ``overall/*`` is GenEval's overall score: the mean over the tags present of each tag's accuracy, so
    a tag's number of images sets its precision, not its weight. ``overall/n`` counts all images.
    """
    if not metadata:
        raise VgpoError("shapes evaluate: expected at least one image")
    _check_batch(images, metadata, "shapes evaluate")
    detections = detect(images)
    strict, partial = _strict_partial(detections, metadata)
    metrics: dict = {}
    tags = [tag for tag in TAGS if any(m["tag"] == tag for m in metadata)]
    for tag in tags:
        rows = torch.tensor([m["tag"] == tag for m in metadata])
        metrics[f"{tag}/strict"] = strict[rows].mean().item()
        metrics[f"{tag}/partial"] = partial[rows].mean().item()
        metrics[f"{tag}/n"] = int(rows.sum())
    metrics["overall/strict"] = sum(metrics[f"{t}/strict"] for t in tags) / len(tags)
    metrics["overall/partial"] = sum(metrics[f"{t}/partial"] for t in tags) / len(tags)
    metrics["overall/n"] = len(metadata)
    # The reward-hacking monitor beside the task score: images with objects beyond those asked for, and
    # scenes exactly as asked (the reward server's strict_correct: exact counts), over all images.
    metrics["monitor/extra_objects"] = sum(map(extra_objects, detections, metadata)) / len(metadata)
    metrics["monitor/exact_scene"] = sum(server_terms(f, m)[1] for f, m in zip(detections, metadata)) / len(metadata)
    return metrics


def strict_standard_error(metrics: dict) -> float:
    """Standard error of ``overall/strict`` from an ``evaluate`` result: each tag's accuracy as a binomial
    proportion over its images, ``sqrt(sum_t p_t (1 - p_t) / n_t) / T``. It is the sampling noise of the
    images drawn; it treats a repeated test prompt's images as independent, as GenEval's four images per
    prompt are treated."""
    tags = [t for t in TAGS if f"{t}/n" in metrics]
    if not tags:
        raise VgpoError("strict_standard_error: expected an evaluate() result with per-tag keys")
    var = sum(metrics[f"{t}/strict"] * (1 - metrics[f"{t}/strict"]) / metrics[f"{t}/n"] for t in tags)
    return math.sqrt(var) / len(tags)


def format_table(metrics: dict) -> str:
    """GenEval-style table: one row per tag (strict accuracy, partial score, images), then overall."""
    lines = [f"{'task':<16}{'strict':>8}{'partial':>9}{'n':>7}"]
    for tag in [t for t in TAGS if f"{t}/n" in metrics] + ["overall"]:
        if tag == "overall":
            lines.append("-" * len(lines[0]))
        lines.append(
            f"{tag:<16}{metrics[f'{tag}/strict']:>8.2%}{metrics[f'{tag}/partial']:>9.2%}{metrics[f'{tag}/n']:>7d}"
        )
    lines.append("overall = mean over tasks of each task's accuracy (GenEval)")
    if "monitor/extra_objects" in metrics:
        lines.append(
            f"monitor: {metrics['monitor/extra_objects']:.2%} of images hold objects beyond those asked for, "
            f"{metrics['monitor/exact_scene']:.2%} are exactly the scene asked for (exact counts)"
        )
    return "\n".join(lines)
