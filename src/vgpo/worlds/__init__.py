"""Worlds: a prompt set, a renderer of ground-truth images, a reward and an evaluation table.

The trainer and the pretrainer only see the ``World`` interface; registered worlds are
``shapes`` (GenEval-style compositions) and ``text`` (OCR-judged text rendering), and for real models the
prompt-file worlds ``geneval``, ``ocr`` and ``pickscore`` (``prompts_file``: prompts only, no renderer).
"""

from __future__ import annotations

import importlib
import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, TypeVar

import torch

from vgpo.errors import VgpoError


@dataclass(frozen=True)
class World:
    """Everything a world provides.

    name: registry name.
    image_size: (H, W) of renders and of the tiny model's canvas.
    train_file / test_file: prompt files shipped in the package.
    val_file: held-out prompts for choosing recipes, carved from the train split, never from the test
        split; train_minus_val_file: the train split without val's prompts, what a run judged on
        val_file trains on. None where a world has no validation split.
    load_prompts(path) -> list of metadata dicts, each with at least "prompt"; raises VgpoError naming
        the file and line on malformed input.
    render(metadata, seed) -> (3, H, W) float32 in [0, 1], an image that satisfies the metadata.
    reward: default reward name for ``vgpo.rewards.build``.
    evaluate(images, metadata) -> dict of metrics (flat, JSON-serialisable; keys like "overall/strict").
    format_table(metrics) -> str, the printable table (GenEval-style for shapes).
    vocabulary() -> words and characters the tiny model's tokenizer must know.
    headline: the key of ``evaluate``'s metrics that progress bars, plots and benchmarks report.
    standard_error(metrics) -> float: the headline's sampling standard error from an ``evaluate`` result
        (the noise of the images drawn), what the demo report and ``benchmarks/demo_seeds.py`` quote.
        None where a world cannot say.
    composition_space() -> every prompt the world can compose, test compositions included: what
        web-like pretraining renders. None where a world has no such finite space.
    caption_noise(spec) -> caption(metadata, rng) -> str: checks caption corruption rates (a mapping,
        or a preset name such as "web") once and returns the function that captions a scene rendered
        from ``metadata`` with them, drawing from the ``random.Random`` it is given. None where a world
        has no noisy captions.
    swap_binding(metadata) -> the metadata of the same objects with their binding exchanged (which colour
        or side goes with which object), or None where a prompt has none: the binding-contrast pretraining
        loss's negative captions. None where a world has no bindings to exchange.
    object_masks(metadata, seed) -> per include entry of ``render(metadata, seed)``, the positions of its
        words in the exact prompt (colour and class) and the (H, W) fraction of each pixel it covers: what
        the grounding loss of pretraining supervises cross-attention with. None where a world has none.
    relations(metadata) -> per relation the prompt states, (subject include, target include, (dx, dy)): the
        image-plane direction (x right, y down) from the target's centre to the subject's; what the relation
        loss of pretraining supervises the two objects' attention with. None where a world has none.
    """

    name: str
    image_size: tuple[int, int]
    train_file: Path
    test_file: Path
    load_prompts: Callable[[Path], list[dict]]
    render: Callable[[dict, int], torch.Tensor]
    reward: str
    evaluate: Callable[[torch.Tensor, Sequence[dict]], dict]
    format_table: Callable[[dict], str]
    vocabulary: Callable[[], list[str]]
    headline: str = "overall/strict"  # the metric of ``evaluate`` that summarises a run
    standard_error: Callable[[dict], float] | None = None
    val_file: Path | None = None
    train_minus_val_file: Path | None = None
    composition_space: Callable[[], list[dict]] | None = None
    caption_noise: Callable[[dict | str], Callable[[dict, random.Random], str]] | None = None
    swap_binding: Callable[[dict], dict | None] | None = None
    object_masks: Callable[[dict, int], list[tuple[list[int], torch.Tensor]]] | None = None
    relations: Callable[[dict], list[tuple[int, int, tuple[float, float]]]] | None = None

    def prompt_file(self, split: str) -> Path:
        """The shipped prompt file of ``split`` (one of ``SPLITS``); a one-line VgpoError for an unknown
        split or one this world does not ship."""
        if split not in SPLITS:
            raise VgpoError(f"split: unknown split '{split}'; expected one of: {', '.join(SPLITS)}")
        path = getattr(self, f"{split}_file")
        if path is None:
            raise VgpoError(f"split: world '{self.name}' has no '{split}' split (pass a prompt file instead)")
        return path

    def headline_standard_error(self, metrics: dict) -> float:
        """``standard_error(metrics)``; a one-line VgpoError where the world has none."""
        if self.standard_error is None:
            raise VgpoError(f"world '{self.name}' has no standard error for its headline {self.headline}")
        return self.standard_error(metrics)

    def all_compositions(self) -> list[dict]:
        """``composition_space()``; a one-line VgpoError where the world has none."""
        if self.composition_space is None:
            raise VgpoError(f"prompts: world '{self.name}' has no composition space to render ('all')")
        return self.composition_space()

    def captioner(self, spec: dict | str) -> Callable[[dict, random.Random], str]:
        """``caption_noise(spec)``; a one-line VgpoError where the world has no noisy captions."""
        if self.caption_noise is None:
            raise VgpoError(f"caption_noise: world '{self.name}' has no noisy captions; leave caption_noise empty")
        return self.caption_noise(spec)

    def binding_swapper(self) -> Callable[[dict], dict | None]:
        """``swap_binding``; a one-line VgpoError where the world has none."""
        if self.swap_binding is None:
            raise VgpoError(f"binding_contrast: world '{self.name}' has no bindings to exchange; leave it at 0")
        return self.swap_binding

    def masker(self) -> Callable[[dict, int], list[tuple[list[int], torch.Tensor]]]:
        """``object_masks``; a one-line VgpoError where the world has none."""
        if self.object_masks is None:
            raise VgpoError(f"grounding_loss: world '{self.name}' has no object masks; leave it at 0")
        return self.object_masks

    def relation_finder(self) -> Callable[[dict], list[tuple[int, int, tuple[float, float]]]]:
        """``relations``; a one-line VgpoError where the world has none."""
        if self.relations is None or self.object_masks is None:
            raise VgpoError(f"relation_loss: world '{self.name}' has no object relations; leave it at 0")
        return self.relations


#: Prompt splits a world can ship: train/test, and for choosing recipes val with train_minus_val.
SPLITS = ("train", "test", "val", "train_minus_val")


# name -> "module" (its WORLD) or "module:ATTRIBUTE" (one module defining several worlds).
_WORLD_MODULES = {
    "shapes": "vgpo.worlds.shapes",
    "text": "vgpo.worlds.text",
    "geneval": "vgpo.worlds.prompts_file:GENEVAL",
    "ocr": "vgpo.worlds.prompts_file:OCR",
    "pickscore": "vgpo.worlds.prompts_file:PICKSCORE",
}


def get_world(name: str) -> World:
    if name not in _WORLD_MODULES:
        raise VgpoError(f"unknown world '{name}'; expected one of: {', '.join(sorted(_WORLD_MODULES))}")
    module, _, attribute = _WORLD_MODULES[name].partition(":")
    return getattr(importlib.import_module(module), attribute or "WORLD")


def read_prompt_lines(path: Path | str, expected: str, comments: bool = False) -> list[tuple[str, str]]:
    """The non-blank lines of a prompt file as ``("file:line", text)`` pairs, stripped (and without
    ``#`` comment lines when ``comments``). A missing, unreadable or empty file raises a one-line
    VgpoError saying what was ``expected``; every world's loader goes through here."""
    path = Path(path)
    if not path.is_file():
        raise VgpoError(f"{path}: prompt file not found; expected {expected}")
    try:
        raw = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise VgpoError(f"{path}: cannot read prompt file ({err})") from None
    lines = [
        (f"{path}:{n}", ln.strip())
        for n, ln in enumerate(raw, start=1)
        if ln.strip() and not (comments and ln.strip().startswith("#"))
    ]
    if not lines:
        raise VgpoError(f"{path}: no prompts; expected {expected}")
    return lines


_Rates = TypeVar("_Rates")


def check_caption_rates(noise: Any) -> None:
    """Every field of the caption-noise dataclass ``noise`` (a world's ``CaptionNoise``) a finite rate in
    [0, 1]; a one-line VgpoError naming ``caption_noise.<field>`` otherwise. Its ``__post_init__`` calls this."""
    for f in fields(noise):
        rate = getattr(noise, f.name)
        if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not math.isfinite(rate):
            raise VgpoError(f"caption_noise.{f.name}: expected a finite rate in [0, 1], got {rate!r}")
        if not 0.0 <= rate <= 1.0:
            raise VgpoError(f"caption_noise.{f.name}: expected a rate in [0, 1], got {rate}")


def caption_rates(kind: type[_Rates], spec: dict | str, presets: dict[str, _Rates]) -> _Rates:
    """A world's caption-noise dataclass ``kind`` from a mapping of its rates (absent keys are 0) or the
    name of one of ``presets`` ("web"); a one-line VgpoError naming ``caption_noise.<key>`` otherwise."""
    if isinstance(spec, str):
        if spec not in presets:
            raise VgpoError(
                f"caption_noise: unknown preset {spec!r}; expected one of {', '.join(presets)} or a mapping of rates"
            )
        return presets[spec]
    if not isinstance(spec, dict):
        raise VgpoError(f"caption_noise: expected a mapping of rates or a preset name, got {spec!r}")
    known = [f.name for f in fields(kind)]
    unknown = sorted(str(k) for k in set(spec) - set(known))
    if unknown:
        raise VgpoError(f"caption_noise.{unknown[0]}: unknown rate; expected some of {', '.join(known)}")
    return kind(**spec)


def balanced_choice(prompts: Sequence[dict], n: int, generator: torch.Generator) -> list[int]:
    """Draw ``n`` prompt indices, uniform over tags first, then uniform within the tag. GenEval-style
    scores average over tags, and the train split is dominated by its largest tag (color_attr), so
    uniform sampling over prompts would all but ignore single objects and counting."""
    by_tag: dict[str, list[int]] = {}
    for i, m in enumerate(prompts):
        by_tag.setdefault(m.get("tag", ""), []).append(i)
    tags = sorted(by_tag)
    tag_idx = torch.randint(len(tags), (n,), generator=generator).tolist()
    within = torch.rand(n, generator=generator).tolist()
    return [by_tag[tags[t]][int(u * len(by_tag[tags[t]]))] for t, u in zip(tag_idx, within)]
