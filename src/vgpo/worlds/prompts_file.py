"""Prompt-file worlds for real models: ``geneval``, ``ocr`` and ``pickscore`` (Flow-GRPO's prompt sets).

These worlds only supply prompts and the default reward; they have no renderer (no tiny-model
pretraining) and no judge of their own: held-out scores are the training reward on the evaluation
images, which the trainer logs as ``eval/reward/mean`` (the headline).

Files (defaults: Flow-GRPO's ``dataset/`` layout, relative to the working directory; override with
``train_prompts`` / ``test_prompts``):

* ``*.jsonl``: GenEval metadata, one JSON object per line with at least ``"prompt"``; the whole object
  is the sample's metadata (``tag``, ``include``, ``exclude``... reach the ``geneval-remote`` server as
  given).
* anything else: plain text, one prompt per line (blank lines skipped); metadata ``{"prompt": line}``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from functools import partial
from pathlib import Path

import torch

from vgpo.errors import VgpoError
from vgpo.worlds import World, read_prompt_lines


def load_prompts(path: Path | str, world: str = "prompts") -> list[dict]:
    """GenEval JSONL (``.jsonl``) or plain-text prompts; a one-line VgpoError names the file and line."""
    path = Path(path)
    prompts: list[dict] = []
    for where, line in read_prompt_lines(
        path, f"prompts for world '{world}' (set train_prompts / test_prompts, e.g. to Flow-GRPO's dataset/ files)"
    ):
        if path.suffix != ".jsonl":
            prompts.append({"prompt": line})
            continue
        try:
            meta = json.loads(line)
        except ValueError as err:
            raise VgpoError(f"{where}: invalid JSON ({err})") from None
        if not isinstance(meta, dict) or not isinstance(meta.get("prompt"), str) or not meta["prompt"].strip():
            raise VgpoError(f'{where}: expected a JSON object with a non-empty "prompt" string')
        prompts.append(meta)
    return prompts


def _no_renderer(world: str, metadata: dict, seed: int) -> torch.Tensor:
    raise VgpoError(
        f"world '{world}': this world has no renderer (it only supplies prompts for real models; "
        "pretrain tiny models on the shapes or text world)"
    )


def _no_vocabulary(world: str) -> list[str]:
    raise VgpoError(
        f"world '{world}': this world has no tiny-model vocabulary (it only supplies prompts for "
        "real models; use the shapes or text world for the tiny model)"
    )


def evaluate(images: torch.Tensor, metadata: Sequence[dict]) -> dict:
    """No judge of its own: the image count (the trainer adds ``reward/mean``, the training reward)."""
    return {"n": int(images.shape[0])}


def format_table(metrics: dict) -> str:
    return "\n".join(
        f"{key:<24}{value:>12.4f}" if isinstance(value, float) else f"{key:<24}{value!s:>12}"
        for key, value in sorted(metrics.items())
    )


def _world(name: str, reward: str, train: str, test: str) -> World:
    return World(
        name=name,
        image_size=(512, 512),  # nominal: these worlds serve 512 px SD3.5 / FLUX presets
        train_file=Path(train),
        test_file=Path(test),
        load_prompts=partial(load_prompts, world=name),
        render=partial(_no_renderer, name),
        reward=reward,
        evaluate=evaluate,
        format_table=format_table,
        vocabulary=partial(_no_vocabulary, name),
        headline="reward/mean",
    )


GENEVAL = _world(
    "geneval", "geneval-remote", "dataset/geneval/train_metadata.jsonl", "dataset/geneval/test_metadata.jsonl"
)
OCR = _world("ocr", "ocr", "dataset/ocr/train.txt", "dataset/ocr/test.txt")
PICKSCORE = _world("pickscore", "pickscore", "dataset/pickscore/train.txt", "dataset/pickscore/test.txt")
