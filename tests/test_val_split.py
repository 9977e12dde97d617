"""The validation splits for choosing recipes: carved from the train split by the test split's rule, never
overlapping the test split's held-out compositions, deterministic from their seed, reachable by name."""

from __future__ import annotations

import string
from collections import Counter

import pytest

from vgpo.cli import main
from vgpo.errors import VgpoError
from vgpo.worlds import SPLITS, get_world
from vgpo.worlds.shapes.prompts import TAGS, VAL_LINES, VAL_SCENES, _atoms, composition_key, make_splits, make_val_split
from vgpo.worlds.text.prompts import VAL_WORDS
from vgpo.worlds.text.prompts import make_val_split as make_val_words

SHAPES = get_world("shapes")
TRAIN, TEST = SHAPES.load_prompts(SHAPES.train_file), SHAPES.load_prompts(SHAPES.test_file)
VAL, TRAIN_MINUS_VAL = SHAPES.load_prompts(SHAPES.val_file), SHAPES.load_prompts(SHAPES.train_minus_val_file)
HELD_OUT_TAGS = tuple(VAL_SCENES)  # the tags whose val prompts are held-out compositions


def _by_tag(records, tag):
    return [m for m in records if m["tag"] == tag]


def test_shapes_val_files_match_their_generator_and_seed():
    assert (TRAIN, TEST) == make_splits(0)
    assert (TRAIN_MINUS_VAL, VAL) == make_val_split(TRAIN, 1), "stale: run benchmarks/make_shapes_prompts.py"
    assert make_val_split(TRAIN, 1) == make_val_split(TRAIN, 1)
    assert make_val_split(TRAIN, 2)[1] != VAL  # the seed decides which scenes are held out


def test_shapes_val_is_nonempty_per_tag_with_the_test_splits_sizes():
    assert Counter(m["tag"] for m in VAL) == VAL_LINES == Counter(m["tag"] for m in TEST)
    for tag in HELD_OUT_TAGS:
        assert len({composition_key(m) for m in _by_tag(VAL, tag)}) == VAL_SCENES[tag]


def test_shapes_val_is_disjoint_from_test():
    test_prompts, test_keys = {m["prompt"] for m in TEST}, {composition_key(m) for m in TEST}
    # By prompt text everywhere but single_object, whose three prompts are in every split.
    assert not {m["prompt"] for m in VAL if m["tag"] != "single_object"} & test_prompts
    # By composition for every tag that holds compositions out; two_object's val prompts are the training
    # word order of the pairs whose other order is the test split's.
    assert not {composition_key(m) for m in VAL if m["tag"] in HELD_OUT_TAGS} & test_keys
    assert {m["prompt"] for m in _by_tag(VAL, "two_object")} == {m["prompt"] for m in _by_tag(TRAIN, "two_object")}


def test_shapes_val_is_held_out_of_train_minus_val_and_carved_from_train():
    held = [m for m in VAL if m["tag"] in HELD_OUT_TAGS]
    assert not {composition_key(m) for m in held} & {composition_key(m) for m in TRAIN_MINUS_VAL}
    assert {m["prompt"] for m in VAL} <= {m["prompt"] for m in TRAIN}
    assert {m["prompt"] for m in TRAIN_MINUS_VAL} | {m["prompt"] for m in held} == {m["prompt"] for m in TRAIN}
    assert [m for m in TRAIN if m in TRAIN_MINUS_VAL] == TRAIN_MINUS_VAL  # the train split's order
    # Val combines only parts that its training prompts show, as the test split does for the train split.
    assert _atoms(held) <= _atoms(TRAIN_MINUS_VAL)
    for tag in TAGS:
        assert _by_tag(TRAIN_MINUS_VAL, tag), f"{tag}: nothing left to train on"


def test_composition_key_ignores_phrasing_and_keeps_bindings():
    pos = {m["prompt"]: composition_key(m) for m in TRAIN + TEST if m["tag"] == "position"}
    same = [
        k
        for p, k in pos.items()
        if p in ("a photo of a circle left of a square", "a photo of a square right of a circle")
    ]
    assert len(same) == 2 and same[0] == same[1]
    assert pos.get("a photo of a square left of a circle", "absent") != same[0]


def _words(world, split):
    return [m["text"] for m in world.load_prompts(world.prompt_file(split))]


def test_text_val_words_are_drawn_from_train_and_disjoint_from_test():
    text = get_world("text")
    train, test, val, rest = (_words(text, s) for s in ("train", "test", "val", "train_minus_val"))
    assert (rest, val) == make_val_words(train, 1), "stale: run benchmarks/make_text_val_words.py"
    assert make_val_words(train, 2)[1] != val
    assert len(val) == VAL_WORDS and len(set(val)) == len(val)
    assert set(val) <= set(train) and not set(val) & set(test) and not set(val) & set(rest)
    assert set(val) | set(rest) == set(train)
    assert {len(w) for w in val} == {3, 4, 5, 6} and set("".join(rest)) == set(string.ascii_uppercase)


def test_prompt_file_names_every_split_and_refuses_unknown_ones():
    for name in ("shapes", "text"):
        world = get_world(name)
        assert [world.prompt_file(s).is_file() for s in SPLITS] == [True] * len(SPLITS)
        assert world.prompt_file("train") == world.train_file and world.prompt_file("test") == world.test_file
    with pytest.raises(VgpoError, match="unknown split 'dev'"):
        SHAPES.prompt_file("dev")
    with pytest.raises(VgpoError, match="no 'val' split"):
        get_world("geneval").prompt_file("val")


def test_eval_cli_reads_a_split_by_name(capsys, monkeypatch, tiny_checkpoint):
    import vgpo.evaluate

    seen, real = [], vgpo.evaluate.evaluate_world

    def recording(model, world, metas, **kwargs):
        seen.append(list(metas))
        return real(model, world, metas, **kwargs)

    monkeypatch.setattr(vgpo.evaluate, "evaluate_world", recording)
    # Lines 41-42 are two_object prompts, in the train split's word order in val and the other in test.
    assert (
        main(
            [
                "eval",
                "--checkpoint",
                str(tiny_checkpoint),
                "--split",
                "val",
                "--steps",
                "1",
                "--limit",
                "42",
                "--images-per-prompt",
                "1",
            ]
        )
        == 0
    )
    capsys.readouterr()
    assert seen == [VAL[:42]] and VAL[40:42] != TEST[40:42]
