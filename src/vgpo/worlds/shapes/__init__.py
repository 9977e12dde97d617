"""The shapes world: a synthetic GenEval on 32x32 canvases of coloured circles, squares and triangles.

Prompts use GenEval's six tags and metadata format (``prompts``), ground truth comes from an
antialiased renderer (``render``), and a batched palette/connected-component detector (``detect``)
scores images GenEval's way (``score``) for evaluation tables and the ``geneval-shapes`` rewards, and
Flow-GRPO's reward server's way for the ``geneval-shapes-server`` training reward. Splits: train, test
(held-out compositions), and for choosing recipes val (held-out compositions carved from train) with
train_minus_val (what a run judged on val trains on). Web-like pretraining renders the whole composition
space under noisy captions (``prompts.composition_space``, ``prompts.noisy_caption``).
"""

from pathlib import Path

import torch

from vgpo.worlds import World
from vgpo.worlds.shapes.prompts import (
    composition_space,
    load_prompts,
    noisy_captioner,
    object_relations,
    object_words,
    swap_binding,
    vocabulary,
)
from vgpo.worlds.shapes.renderer import IMAGE_SIZE, render, render_masks
from vgpo.worlds.shapes.score import evaluate, format_table, strict_standard_error

DATA = Path(__file__).parent / "data"


def object_masks(meta: dict, seed: int) -> list[tuple[list[int], torch.Tensor]]:
    """Per include entry of ``render(meta, seed)``: its words' positions in the exact prompt and its mask."""
    _, masks = render_masks(meta, seed)
    return list(zip(object_words(meta), masks))


WORLD = World(
    name="shapes",
    image_size=IMAGE_SIZE,
    train_file=DATA / "train.jsonl",
    test_file=DATA / "test.jsonl",
    load_prompts=load_prompts,
    render=render,
    reward="geneval-shapes",
    evaluate=evaluate,
    format_table=format_table,
    vocabulary=vocabulary,
    standard_error=strict_standard_error,
    val_file=DATA / "val.jsonl",
    train_minus_val_file=DATA / "train_minus_val.jsonl",
    composition_space=composition_space,
    caption_noise=noisy_captioner,
    swap_binding=swap_binding,
    object_masks=object_masks,
    relations=object_relations,
)
