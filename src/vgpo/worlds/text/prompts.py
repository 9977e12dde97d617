"""Prompts of the text world: Flow-GRPO's convention, the target text between the first pair of double quotes.

A prompt file holds one item per line; blank lines and lines starting with ``#`` are skipped. An item is
either a bare word (``RIVER``), which gets template ``i % len(TEMPLATES)`` for the file's i-th item, or a whole prompt
(``a sign that says "RIVER"``) whose words outside the quotes are template words. Targets are 1 to
``MAX_CHARS`` upper-case letters A-Z: the tiny model tokenizes the quoted text character by character.
"""

from __future__ import annotations

import random
import re
import string
from collections.abc import Mapping, Sequence
from pathlib import Path

from vgpo.errors import VgpoError
from vgpo.worlds import read_prompt_lines

TAG = "text"
MAX_CHARS = 6
TEMPLATES = (
    'a sign that says "{}"',
    'a poster with the word "{}"',
    'the word "{}" written in bold letters',
    'a label that reads "{}"',
)
_TARGET_RE = re.compile(rf"[A-Z]{{1,{MAX_CHARS}}}")
_QUOTED_RE = re.compile(r'"([^"]*)"')


def template_words() -> list[str]:
    """The words of all templates (outside the quotes), in first-seen order."""
    seen: dict[str, None] = {}
    for template in TEMPLATES:
        for word in template.replace('"{}"', " ").split():
            seen.setdefault(word, None)
    return list(seen)


def quoted_text(prompt: str) -> str | None:
    """The text between the first pair of double quotes, or None when the prompt has no such pair."""
    match = _QUOTED_RE.search(prompt)
    return match.group(1) if match else None


def target_text(prompt: str, metadata: Mapping | None = None) -> str:
    """The text an image for ``prompt`` must show: the prompt's first quoted span, else ``metadata["text"]``."""
    text = quoted_text(prompt)
    if text is None and metadata is not None and isinstance(metadata.get("text"), str):
        text = metadata["text"]
    if text is None:
        raise VgpoError(
            f"text prompt {prompt!r}: expected the target text between double quotes, "
            'e.g. a sign that says "RIVER" (or a "text" entry in its metadata)'
        )
    return text


def make_metadata(text: str, template: int = 0) -> dict:
    """Metadata dict of one prompt: ``{"tag": "text", "text": TEXT, "prompt": ...}``."""
    return {"tag": TAG, "text": text, "prompt": TEMPLATES[template % len(TEMPLATES)].format(text)}


def _parse_line(line: str, index: int, where: str) -> dict:
    if '"' not in line:
        if not _TARGET_RE.fullmatch(line):
            raise VgpoError(
                f"{where}: expected a word of 1-{MAX_CHARS} upper-case letters A-Z "
                f"or a prompt with the text in double quotes, got {line!r}"
            )
        return make_metadata(line, index)
    if line.count('"') != 2:
        raise VgpoError(f"{where}: expected exactly one pair of double quotes around the text, got {line!r}")
    text = quoted_text(line)
    if not _TARGET_RE.fullmatch(text):
        raise VgpoError(f"{where}: the quoted text must be 1-{MAX_CHARS} upper-case letters A-Z, got {text!r}")
    allowed = set(template_words())
    unknown = [w for w in _QUOTED_RE.sub(" ", line).split() if w not in allowed]
    if unknown:
        raise VgpoError(
            f"{where}: words outside the quotes must be template words "
            f"({', '.join(sorted(allowed))}); unknown: {', '.join(unknown)}"
        )
    return {"tag": TAG, "text": text, "prompt": " ".join(line.split())}


def load_prompts(path: Path | str) -> list[dict]:
    """Read a prompt file (see the module docstring) into metadata dicts; VgpoError names file and line."""
    prompts: list[dict] = []
    for where, line in read_prompt_lines(path, "one word or prompt per line", comments=True):
        prompts.append(_parse_line(line, len(prompts), where))
    return prompts


# Validation words: as many as the test split has, so that a recipe is chosen at the precision it is judged at.
VAL_WORDS = 222


def make_val_split(train_words: Sequence[str], seed: int = 1, size: int = VAL_WORDS) -> tuple[list[str], list[str]]:
    """Deterministic (train_minus_val, val) word lists, each sorted: ``size`` training words drawn
    uniformly at random (as the test words were drawn from the whole list: the test split's lengths
    follow the train split's) among draws that leave every letter A-Z in the remaining training words and
    give val every word length. A run judged on val trains on ``train_minus_val``, so its val words are
    unseen words, as the test words are for a run on the whole train list."""
    words = sorted(set(train_words))
    rng = random.Random(seed)
    while True:
        val = set(rng.sample(words, size))
        rest = [w for w in words if w not in val]
        if set("".join(rest)) == set(string.ascii_uppercase) and {len(w) for w in val} == {len(w) for w in words}:
            return rest, sorted(val)
