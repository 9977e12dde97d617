"""Prompts of the text world: Flow-GRPO's convention, the target text between the first pair of double quotes.

A prompt file holds one item per line; blank lines and lines starting with ``#`` are skipped. An item is
either a bare word (``RIVER``), which gets template ``i % len(TEMPLATES)`` for the file's i-th item, or a whole prompt
(``a sign that says "RIVER"``) whose words outside the quotes are template words. Targets are 1 to
``MAX_CHARS`` upper-case letters A-Z: the tiny model tokenizes the quoted text character by character.

Web-like pretraining renders every word the world ships, test words included, under every template
(``composition_space``), with captions that misspell the word drawn at set rates (``noisy_caption``), as
captions of photographed signs often do.
"""

from __future__ import annotations

import random
import re
import string
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from vgpo.config import doc
from vgpo.errors import VgpoError
from vgpo.worlds import caption_rates, check_caption_rates, read_prompt_lines

DATA_DIR = Path(__file__).resolve().parent / "data"

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


# ---------------------------------------------------------------------------------------------------
# Noisy captions


def composition_space() -> list[dict]:
    """Every word of the train and test lists (val words are train words), each under every template: what
    web-like pretraining renders, so the base has drawn the test words as a real base has seen most words
    (RL then aligns, not teaches), and val and test words stand alike to it."""
    words = {m["text"] for name in ("train_words.txt", "test_words.txt") for m in load_prompts(DATA_DIR / name)}
    return [make_metadata(word, k) for word in sorted(words) for k in range(len(TEMPLATES))]


@dataclass(frozen=True)
class CaptionNoise:
    """Rates at which a caption misspells the word its picture shows, each corruption drawn independently
    (in this order, so a caption can carry several)."""

    swap: float = doc(0.0, "two neighbouring, different letters exchanged (none where every neighbour is the same)")
    letter: float = doc(0.0, "one letter replaced by another of A-Z")
    drop: float = doc(0.0, "one letter left out (words of two or more letters)")

    def __post_init__(self) -> None:
        check_caption_rates(self)


#: Web-like rates, our choice (no reference states rates for misspelled sign captions): 31% of captions
#: misspell their word (1 - 0.9 * 0.85 * 0.9); the shapes world's web rates misdescribe 0-58% of scenes by tag.
WEB_CAPTION_NOISE = CaptionNoise(swap=0.1, letter=0.15, drop=0.1)
#: Named rates ``caption_noise`` accepts instead of a mapping.
CAPTION_NOISE_PRESETS = {"web": WEB_CAPTION_NOISE}


def caption_noise(spec: dict | str) -> CaptionNoise:
    """``CaptionNoise`` from a mapping of rates ({swap, letter, drop}; absent keys are 0) or a preset name
    ("web"); a one-line VgpoError naming ``caption_noise.<key>`` otherwise."""
    return caption_rates(CaptionNoise, spec, CAPTION_NOISE_PRESETS)


def misspell(text: str, noise: CaptionNoise, rng: random.Random) -> str:
    """``text`` with each corruption of ``noise`` applied with its rate; always 1 to ``MAX_CHARS`` letters A-Z."""
    letters = list(text)
    if rng.random() < noise.swap:
        pairs = [i for i in range(len(letters) - 1) if letters[i] != letters[i + 1]]
        if pairs:
            i = rng.choice(pairs)
            letters[i], letters[i + 1] = letters[i + 1], letters[i]
    if rng.random() < noise.letter:
        i = rng.randrange(len(letters))
        letters[i] = rng.choice([c for c in string.ascii_uppercase if c != letters[i]])
    if len(letters) > 1 and rng.random() < noise.drop:
        del letters[rng.randrange(len(letters))]
    return "".join(letters)


def noisy_caption(meta: dict, noise: CaptionNoise, rng: random.Random) -> str:
    """The caption of a render of ``meta``'s word, as a web caption might misspell it: the same prompt with
    ``misspell``'s text between the quotes; with all rates 0 it is ``meta["prompt"]``. The picture is not
    touched: pretraining renders ``meta`` and trains on this."""
    text = meta["text"]
    return meta["prompt"].replace(f'"{text}"', f'"{misspell(text, noise, rng)}"', 1)


def noisy_captioner(spec: dict | str) -> Callable[[dict, random.Random], str]:
    """``caption(meta, rng)`` with the rates of ``spec`` (checked once, here): the text world's
    ``World.caption_noise``."""
    noise = caption_noise(spec)
    return lambda meta, rng: noisy_caption(meta, noise, rng)
