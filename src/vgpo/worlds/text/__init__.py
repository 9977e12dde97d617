"""The text world: render a short word (3-6 letters, A-Z) on a 32x96 canvas, judged by a real OCR model.

Prompts follow Flow-GRPO's convention (``a sign that says "RIVER"``); the train and test splits are word
lists in ``data/`` whose test words never appear in training; for choosing recipes, val words are drawn
from the train list and ``train_minus_val_words.txt`` is the rest (``make_val_split``). The reward is
``ocr`` (RapidOCR's PP-OCR models, installed by the ``ocr`` extra); ``evaluate`` reports ``ocr/accuracy``
and ``ocr/exact``. Web-like pretraining renders every shipped word under captions that misspell it at set
rates (``prompts.composition_space``, ``prompts.noisy_caption``).
"""

from __future__ import annotations

import string

from vgpo.worlds import World

from .evaluate import accuracy_standard_error, evaluate, format_table
from .prompts import (
    DATA_DIR,
    TEMPLATES,
    composition_space,
    load_prompts,
    make_metadata,
    noisy_captioner,
    target_text,
    template_words,
)
from .render import IMAGE_SIZE, render, render_text


def vocabulary() -> list[str]:
    """Template words, then the characters A-Z (the quoted text is tokenized character by character)."""
    return template_words() + list(string.ascii_uppercase)


WORLD = World(
    name="text",
    image_size=IMAGE_SIZE,
    train_file=DATA_DIR / "train_words.txt",
    test_file=DATA_DIR / "test_words.txt",
    load_prompts=load_prompts,
    render=render,
    reward="ocr",
    evaluate=evaluate,
    format_table=format_table,
    vocabulary=vocabulary,
    headline="ocr/accuracy",
    standard_error=accuracy_standard_error,
    val_file=DATA_DIR / "val_words.txt",
    train_minus_val_file=DATA_DIR / "train_minus_val_words.txt",
    composition_space=composition_space,
    caption_noise=noisy_captioner,
)

__all__ = [
    "IMAGE_SIZE",
    "TEMPLATES",
    "WORLD",
    "evaluate",
    "format_table",
    "load_prompts",
    "make_metadata",
    "render",
    "render_text",
    "target_text",
    "vocabulary",
]
