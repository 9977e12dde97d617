"""Shapes prompts: vocabulary, GenEval-format metadata, phrasing, loading, splits, perturbations and the
noisy captions of web-like pretraining.

Metadata follows GenEval's JSONL format, one object per line::

    {"tag": "position", "include": [{"class": "circle", "count": 1},
                                    {"class": "square", "count": 1, "position": ["left of", 0]}],
     "prompt": "a photo of a square left of a circle"}

Semantics as in GenEval: an include ``count`` is a minimum; an exclude ``count`` means "fewer than this
many" (counting prompts exclude ``count + 1`` to make the count exact); ``"position": [rel, j]`` means
this include's objects are ``rel`` include ``j``'s objects ("a X left of a Y": X is left of Y).
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from itertools import combinations, permutations
from pathlib import Path
from typing import Any

from vgpo.config import doc
from vgpo.errors import VgpoError
from vgpo.worlds import caption_rates, check_caption_rates, read_prompt_lines

CLASSES = ("circle", "square", "triangle")
COLORS = ("red", "green", "blue", "yellow", "purple", "orange")
RELATIONS = ("left of", "right of", "above", "below")
OPPOSITE = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}
TAGS = ("single_object", "two_object", "counting", "colors", "position", "color_attr")
NUMBERS = ("one", "two", "three", "four")
MAX_COUNT = len(NUMBERS)

_INCLUDE_KEYS = {"class", "count", "color", "position"}
_TOP_KEYS = {"tag", "include", "exclude", "prompt"}


def vocabulary() -> list[str]:
    """Every word a prompt can contain: the tiny model's word-level tokenizer is built from it."""
    words = {"a", "an", "photo", "of", "and", *NUMBERS, *COLORS, *CLASSES}
    words |= {plural(c) for c in CLASSES}
    words |= {w for rel in RELATIONS for w in rel.split()}
    return sorted(words)


def plural(cls: str) -> str:
    return cls + "s"


def _noun_phrase(obj: dict, numeral: bool) -> str:
    """GenEval's phrasing: "a red circle", "an orange square", "three triangles"; counting prompts spell
    the number even for one ("one circle")."""
    count = obj["count"]
    words = ([obj["color"]] if "color" in obj else []) + [obj["class"] if count == 1 else plural(obj["class"])]
    if numeral or count > 1:
        return " ".join([NUMBERS[count - 1], *words])
    return " ".join(["an" if words[0][0] in "aeiou" else "a", *words])


def phrase(meta: dict) -> str:
    """The prompt for a metadata record; position prompts name the positioned object first."""
    inc = meta["include"]
    numeral = meta["tag"] == "counting"
    if "position" in inc[-1]:
        rel, target = inc[-1]["position"]
        return f"a photo of {_noun_phrase(inc[-1], numeral)} {rel} {_noun_phrase(inc[target], numeral)}"
    return "a photo of " + " and ".join(_noun_phrase(obj, numeral) for obj in inc)


def object_words(meta: dict) -> list[list[int]]:
    """Per include entry, the positions in ``phrase(meta)``'s words of its colour word (if any) and its
    class word: the tokens the grounding loss asks that entry's pixels to attend to."""
    inc = meta["include"]
    order = list(range(len(inc)))
    if "position" in inc[-1]:
        order = [len(inc) - 1, inc[-1]["position"][1]]
    spans, at = {}, len("a photo of".split())
    for k, i in enumerate(order):
        words = _noun_phrase(inc[i], meta["tag"] == "counting").split()
        last = at + len(words) - 1  # the class word ends every noun phrase; a colour word comes just before it
        spans[i] = [last - 1, last] if "color" in inc[i] else [last]
        at += len(words)
        if k + 1 < len(order):  # the words between two noun phrases: "and", or the relation
            at += len(inc[-1]["position"][0].split()) if "position" in inc[-1] else 1
    return [spans[i] for i in range(len(inc))]


#: Per relation, the image-plane direction (x right, y down) from the target's centre to the subject's.
DIRECTIONS = {"left of": (-1.0, 0.0), "right of": (1.0, 0.0), "above": (0.0, -1.0), "below": (0.0, 1.0)}


def object_relations(meta: dict) -> list[tuple[int, int, tuple[float, float]]]:
    """Per relation in the prompt: (subject include, target include, direction from the target's centre to
    the subject's in the image, x right and y down); what the relation loss of pretraining supervises the
    two objects' attention with. Empty for prompts without a relation."""
    inc = meta["include"]
    return [(i, obj["position"][1], DIRECTIONS[obj["position"][0]]) for i, obj in enumerate(inc) if "position" in obj]


# ---------------------------------------------------------------------------------------------------
# Loading


def _check_include(obj: Any, index: int, key: str) -> str | None:
    """Why ``obj`` is not a valid include/exclude entry, or None."""
    where = f"{key}[{index}]"
    if not isinstance(obj, dict):
        return f"{where}: expected an object, got {obj!r}"
    allowed = _INCLUDE_KEYS if key == "include" else {"class", "count"}
    extra = sorted(set(obj) - allowed)
    if extra:
        return f"{where}: unknown key '{extra[0]}'; expected only {', '.join(sorted(allowed))}"
    if obj.get("class") not in CLASSES:
        return f"{where}: unknown class {obj.get('class')!r}; expected one of {', '.join(CLASSES)}"
    count = obj.get("count")
    low, high = (1, MAX_COUNT) if key == "include" else (1, MAX_COUNT + 1)
    if not isinstance(count, int) or isinstance(count, bool) or not low <= count <= high:
        return f"{where}: count {count!r}; expected an integer {low}-{high}"
    if "color" in obj and obj["color"] not in COLORS:
        return f"{where}: unknown color {obj['color']!r}; expected one of {', '.join(COLORS)}"
    if "position" in obj:
        pos = obj["position"]
        if not (
            isinstance(pos, list)
            and len(pos) == 2
            and pos[0] in RELATIONS
            and isinstance(pos[1], int)
            and not isinstance(pos[1], bool)
            and 0 <= pos[1] < index
        ):
            return (
                f"{where}: position {pos!r}; expected [relation, index of an earlier include] with relation "
                f"one of {', '.join(RELATIONS)}"
            )
    return None


def validate(meta: Any) -> str | None:
    """Why ``meta`` is not valid shapes metadata, or None. Checks what render and score rely on."""
    if not isinstance(meta, dict):
        return f"expected a JSON object, got {type(meta).__name__}"
    extra = sorted(set(meta) - _TOP_KEYS)
    if extra:
        return f"unknown key '{extra[0]}'; expected only {', '.join(sorted(_TOP_KEYS))}"
    if meta.get("tag") not in TAGS:
        return f"unknown tag {meta.get('tag')!r}; expected one of {', '.join(TAGS)}"
    for key in ("include", "exclude"):
        entries = meta.get(key, [])
        if not isinstance(entries, list) or (key == "include" and not entries):
            return f"{key}: expected a {'non-empty ' if key == 'include' else ''}list of objects"
        for i, obj in enumerate(entries):
            problem = _check_include(obj, i, key)
            if problem:
                return problem
    if sum(obj["count"] for obj in meta["include"]) > MAX_COUNT:
        return f"include: {sum(o['count'] for o in meta['include'])} objects in all; expected at most {MAX_COUNT}"
    for exc in meta.get("exclude", []):
        shown = sum(o["count"] for o in meta["include"] if o["class"] == exc["class"])
        if exc["count"] <= shown:
            return f"exclude: fewer than {exc['count']} {exc['class']} contradicts include of {shown}"
    prompt = meta.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        return "prompt: expected a non-empty string"
    unknown = sorted(set(prompt.split()) - set(vocabulary()))
    if unknown:
        return f"prompt: unknown word '{unknown[0]}'; the tokenizer knows only vocabulary() words"
    return None


def load_prompts(path: Path | str) -> list[dict]:
    """Read a shapes JSONL prompt file (blank lines skipped); any malformed line raises a one-line
    ``VgpoError`` naming file:line and what was expected."""
    records = []
    for where, line in read_prompt_lines(path, "a JSONL file of GenEval-style metadata"):
        try:
            meta = json.loads(line)
        except json.JSONDecodeError as err:
            raise VgpoError(f"{where}: invalid JSON ({err.msg}); expected one JSON object per line") from None
        problem = validate(meta)
        if problem:
            raise VgpoError(f"{where}: {problem}")
        records.append(meta)
    return records


# ---------------------------------------------------------------------------------------------------
# Combinations and the train/test split

# Test lines per tag: GenEval's 80/99/80/94/100/100 halved.
TEST_LINES = {"single_object": 40, "two_object": 50, "counting": 40, "colors": 47, "position": 50, "color_attr": 50}
# Scenes held out of training per tag (of 12 counting, 18 colors, 12 position, 90 color_attr scenes).
HELD_OUT_SCENES = {"counting": 4, "colors": 6, "position": 4, "color_attr": 25}


def _meta(tag: str, include: list[dict], exclude: list[dict] | None = None) -> dict:
    meta = {"tag": tag, "include": include, **({"exclude": exclude} if exclude else {})}
    meta["prompt"] = phrase(meta)
    return meta


def _obj(cls: str, count: int = 1, **extra: Any) -> dict:
    return {"class": cls, "count": count, **extra}


def scenes(tag: str) -> list[list[dict]]:
    """All prompts of a tag grouped by scene: the phrasings in a group describe the same picture.

    Grouping keeps "a circle left of a square" and "a square right of a circle" in the same split, so a
    held-out test scene is not a mere rewording of a training one.
    """
    if tag == "single_object":
        return [[_meta(tag, [_obj(c)])] for c in CLASSES]
    if tag == "two_object":
        return [[_meta(tag, [_obj(a), _obj(b)]) for a, b in permutations(pair)] for pair in combinations(CLASSES, 2)]
    if tag == "counting":
        return [[_meta(tag, [_obj(c, n)], [_obj(c, n + 1)])] for c in CLASSES for n in range(1, MAX_COUNT + 1)]
    if tag == "colors":
        return [[_meta(tag, [_obj(c, color=col)])] for col in COLORS for c in CLASSES]
    if tag == "position":
        return [
            [_meta(tag, [_obj(b), _obj(a, position=[r, 0])]), _meta(tag, [_obj(a), _obj(b, position=[OPPOSITE[r], 0])])]
            for a, b in combinations(CLASSES, 2)
            for r in RELATIONS
        ]
    if tag == "color_attr":  # two different shapes in two different colours, as GenEval pairs them
        return [
            [_meta(tag, [_obj(x, color=cx), _obj(y, color=cy)]), _meta(tag, [_obj(y, color=cy), _obj(x, color=cx)])]
            for x, y in combinations(CLASSES, 2)
            for cx, cy in permutations(COLORS, 2)
        ]
    raise VgpoError(f"unknown tag {tag!r}; expected one of {', '.join(TAGS)}")


def _atoms(metas: Iterable[dict]) -> set[tuple]:
    """The parts a scene is composed of (each class, colour, count, relation); test scenes must only
    combine parts seen in training."""
    atoms: set[tuple] = set()
    for meta in metas:
        for obj in meta["include"]:
            atoms |= {
                ("class", obj["class"]),
                ("count", obj["count"]),
                ("color", obj.get("color")),
                ("relation", obj.get("position", [None])[0]),
            }
    return atoms


def _repeat_to(items: list[dict], n: int, rng: random.Random) -> list[dict]:
    """``n`` lines cycling through a shuffled copy: each prompt appears floor or ceil(n / len) times."""
    order = rng.sample(items, len(items))
    return [order[i % len(order)] for i in range(n)]


def make_splits(seed: int = 0) -> tuple[list[dict], list[dict]]:
    """Deterministic (train, test) metadata lists.

    - counting, colors, position, color_attr: ``HELD_OUT_SCENES`` scenes per tag, drawn at random among
      draws whose parts all still appear in training, go to test only: unseen (shape, count), (colour,
      shape), (shape pair, relation) and (colour, shape, colour, shape) combinations.
    - single_object (3 prompts) cannot hold anything out without hiding a shape: its prompts are in both
      splits. two_object (3 scenes) holds out word order only: training has one ordering of each pair
      ("a circle and a square"), test the other ("a square and a circle"); the scene is not new.
    - Training lists every other prompt once. Test has ``TEST_LINES`` lines per tag (GenEval's
      proportions); a tag with fewer held-out prompts repeats them, each repeat being one more sample of
      the prompt like GenEval's four images per prompt. The overall score is a mean over tags, so these
      counts set each tag's sample size, not its weight.
    """
    rng = random.Random(seed)
    train: list[dict] = []
    test: list[dict] = []
    for tag in TAGS:
        groups = scenes(tag)
        if tag == "single_object":
            train_tag, test_tag = [m for g in groups for m in g], [m for g in groups for m in g]
        elif tag == "two_object":
            flips = [rng.randrange(2) for _ in groups]
            train_tag = [g[f] for g, f in zip(groups, flips)]
            test_tag = [g[1 - f] for g, f in zip(groups, flips)]
        else:
            while True:
                order = rng.sample(groups, len(groups))
                held, kept = order[: HELD_OUT_SCENES[tag]], order[HELD_OUT_SCENES[tag] :]
                train_tag, test_tag = [m for g in kept for m in g], [m for g in held for m in g]
                if _atoms(test_tag) <= _atoms(train_tag):
                    break
        train += train_tag
        test += _repeat_to(test_tag, TEST_LINES[tag], rng)
    return train, test


# Validation lines per tag: the test split's, so that a recipe is chosen at the precision it is judged at.
VAL_LINES = dict(TEST_LINES)
# Training scenes held out for validation per tag (of the 8 counting, 12 colors, 8 position and 65
# color_attr scenes the train split keeps): about the test split's held-out fraction of what is left.
VAL_SCENES = {"counting": 2, "colors": 3, "position": 2, "color_attr": 16}


def make_val_split(train: list[dict], seed: int = 1) -> tuple[list[dict], list[dict]]:
    """Deterministic (val_train, val) from the train split: validation for choosing recipes, never
    touching the test split.

    The test split's rule, applied to the training scenes: per tag, ``VAL_SCENES`` whole scenes drawn at
    random among draws whose parts all still appear in the remaining training scenes become the
    validation prompts, held-out compositions of the same kinds as the test split's. ``val_train`` is the
    train split without them, in its order: what a run that is judged on val trains on (a run judged on
    the test split trains on the whole train split). single_object and two_object hold nothing out, as
    in the test split: val repeats the train split's prompts of those tags (single_object's three prompts
    are in every split; two_object's test prompts are the other word order). Lines per tag: ``VAL_LINES``,
    repeated as the test split repeats them.
    """
    rng = random.Random(seed)
    in_train = {m["prompt"] for m in train}
    held: set[str] = set()
    val: list[dict] = []
    for tag in TAGS:
        tag_train = [m for m in train if m["tag"] == tag]
        if tag in ("single_object", "two_object"):
            val += _repeat_to(tag_train, VAL_LINES[tag], rng)
            continue
        groups = [g for g in scenes(tag) if all(m["prompt"] in in_train for m in g)]
        while True:
            order = rng.sample(groups, len(groups))
            chosen, kept = order[: VAL_SCENES[tag]], order[VAL_SCENES[tag] :]
            val_tag = [m for g in chosen for m in g]
            if _atoms(val_tag) <= _atoms(m for g in kept for m in g):
                break
        held |= {m["prompt"] for m in val_tag}
        val += _repeat_to(val_tag, VAL_LINES[tag], rng)
    return [m for m in train if m["prompt"] not in held], val


def composition_key(meta: dict) -> tuple:
    """What a prompt asks for, independent of its phrasing: its tag, the set of (class, count, colour)
    objects and the relation read in one direction ("a circle left of a square" and "a square right of a
    circle" share a key). The tag keeps counting's "one circle" (exactly one) apart from single_object's
    "a circle" (at least one); within a tag, excludes follow from the includes."""
    inc = meta["include"]
    objects = frozenset((o["class"], o["count"], o.get("color")) for o in inc)
    relation = None
    for o in inc:
        if "position" in o:
            rel, target = o["position"]
            a, b = (o["class"], o.get("color")), (inc[target]["class"], inc[target].get("color"))
            if rel in ("right of", "below"):  # read every relation as left-of or above
                rel, a, b = OPPOSITE[rel], b, a
            relation = (a, rel, b)
    return meta["tag"], objects, relation


# ---------------------------------------------------------------------------------------------------
# Violations


def perturb(meta: dict, rng: random.Random) -> dict:
    """Metadata that a scene rendered from ``meta`` (exactly its includes, nothing else) violates.

    One edit, chosen at random among those that apply: a class no include names (that shape is absent),
    another colour for an object whose class appears once, another count (counting: too many fails the
    include, too few fails the exclude), or the opposite relation.
    """
    edits = []
    inc = meta["include"]
    named = {o["class"] for o in inc}
    absent = [c for c in CLASSES if c not in named]
    for i, obj in enumerate(inc):
        if absent:
            edits.append(("class", i, rng.choice(absent)))
        if "color" in obj and sum(o["class"] == obj["class"] for o in inc) == 1 and obj["count"] == 1:
            edits.append(("color", i, rng.choice([c for c in COLORS if c != obj["color"]])))
        if "position" in obj:
            edits.append(("position", i, [OPPOSITE[obj["position"][0]], obj["position"][1]]))
        if meta["tag"] == "counting":
            edits.append(("count", i, rng.choice([n for n in range(1, MAX_COUNT + 1) if n != obj["count"]])))
    if not edits:
        raise VgpoError(f"cannot perturb {meta['prompt']!r}: no edit is sure to be violated")
    key, i, value = rng.choice(edits)
    include = [dict(o) for o in inc]
    old_class = include[i]["class"]
    include[i][key] = value
    exclude = [dict(e) for e in meta.get("exclude", [])]
    for exc in exclude:
        if exc["class"] == old_class and key in ("class", "count"):
            exc["class"], exc["count"] = include[i]["class"], include[i]["count"] + 1
    return _meta(meta["tag"], include, exclude)


def swap_binding(meta: dict) -> dict | None:
    """The same scene with its binding exchanged, or None where the prompt has no binding to exchange:
    color_attr's two colours swapped between their objects ("a red circle and a blue square" -> "a blue
    circle and a red square"), position's relation reversed ("a circle left of a square" -> "a circle right
    of a square"). The objects and colours named stay the same, so only which-goes-with-which tells the
    two apart: what the binding-contrast pretraining loss trains the model to read."""
    include = [dict(o) for o in meta["include"]]
    if meta["tag"] == "color_attr" and len(include) == 2 and all("color" in o for o in include):
        a, b = include
        if a["color"] == b["color"]:
            return None
        a["color"], b["color"] = b["color"], a["color"]
    elif meta["tag"] == "position" and "position" in include[-1]:
        rel, target = include[-1]["position"]
        include[-1]["position"] = [OPPOSITE[rel], target]
    else:
        return None
    return _meta(meta["tag"], include, [dict(e) for e in meta.get("exclude", [])])


# ---------------------------------------------------------------------------------------------------
# Noisy captions


def composition_space() -> list[dict]:
    """Every prompt of every tag, train, validation and test compositions alike: what web-like
    pretraining renders (a real base has seen every kind of composition; RL then aligns, not teaches)."""
    return [m for tag in TAGS for group in scenes(tag) for m in group]


@dataclass(frozen=True)
class CaptionNoise:
    """Rates at which a caption misdescribes its picture, each corruption drawn independently."""

    relation: float = doc(0.0, "position prompts: the relation replaced by one of the other three")
    color: float = doc(0.0, "per coloured object: another colour (half the time) or no colour word (the other half)")
    count: float = doc(0.0, "counting prompts: the number off by one, staying within 1..MAX_COUNT")
    omit: float = doc(0.0, "two-object scenes (two_object, position, color_attr): one object left out of the caption")

    def __post_init__(self) -> None:
        check_caption_rates(self)


#: The web-like rates of the probe that first pretrained a base on the whole composition space (its
#: rates as the learning-results issue lists them: relation 0.3, colour 0.3, count 0.25, omission 0.15).
WEB_CAPTION_NOISE = CaptionNoise(relation=0.3, color=0.3, count=0.25, omit=0.15)
#: Named rates ``caption_noise`` accepts instead of a mapping.
CAPTION_NOISE_PRESETS = {"web": WEB_CAPTION_NOISE}


def caption_noise(spec: dict | str) -> CaptionNoise:
    """``CaptionNoise`` from a mapping of rates ({relation, color, count, omit}; absent keys are 0) or a
    preset name ("web"); a one-line VgpoError naming ``caption_noise.<key>`` otherwise."""
    return caption_rates(CaptionNoise, spec, CAPTION_NOISE_PRESETS)


def noisy_caption(meta: dict, noise: CaptionNoise, rng: random.Random) -> str:
    """The caption of a scene rendered from ``meta``, as a web caption might misdescribe it: each
    corruption of ``noise`` applied independently with its rate (see ``CaptionNoise``). The corrupted
    metadata is phrased by ``phrase``, so every caption is valid vocabulary; with all rates 0 it is
    ``phrase(meta)``. The picture is not touched: pretraining renders ``meta`` and trains on this."""
    tag = meta["tag"]
    include = [dict(o) for o in meta["include"]]
    for obj in include:
        if "position" in obj and rng.random() < noise.relation:
            rel, target = obj["position"]
            obj["position"] = [rng.choice([r for r in RELATIONS if r != rel]), target]
    for obj in include:
        if "color" in obj and rng.random() < noise.color:
            if rng.random() < 0.5:
                obj["color"] = rng.choice([c for c in COLORS if c != obj["color"]])
            else:
                del obj["color"]
    exclude = [dict(e) for e in meta.get("exclude", [])]
    if tag == "counting" and rng.random() < noise.count:
        obj = include[0]
        n = obj["count"]
        obj["count"] = n + rng.choice([step for step in (-1, 1) if 1 <= n + step <= MAX_COUNT])
        exclude = [{"class": obj["class"], "count": obj["count"] + 1}]
    if len(include) == 2 and rng.random() < noise.omit:
        kept = {k: v for k, v in include[rng.randrange(2)].items() if k != "position"}
        # The remaining object phrased alone, as single_object or colors phrase one object.
        return phrase(_meta("colors" if "color" in kept else "single_object", [kept]))
    return phrase({"tag": tag, "include": include, "exclude": exclude})


def noisy_captioner(spec: dict | str) -> Callable[[dict, random.Random], str]:
    """``caption(meta, rng)`` with the rates of ``spec`` (checked once, here): the shapes world's
    ``World.caption_noise``."""
    noise = caption_noise(spec)
    return lambda meta, rng: noisy_caption(meta, noise, rng)
