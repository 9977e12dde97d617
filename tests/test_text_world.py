"""The text world: word lists, prompt parsing and validation, renderer, vocabulary, evaluation table."""

from __future__ import annotations

import re
import string

import pytest
import torch

from vgpo.errors import VgpoError
from vgpo.worlds import World, get_world
from vgpo.worlds.text import (
    TEMPLATES,
    load_prompts,
    make_metadata,
    render,
    render_text,
    target_text,
    vocabulary,
)

WORLD = get_world("text")


def _words(path):
    return [m["text"] for m in load_prompts(path)]


def test_world_fields():
    assert isinstance(WORLD, World) and WORLD.name == "text" and WORLD.reward == "ocr"
    h, w = WORLD.image_size
    assert h % 8 == 0 and w % 8 == 0 and h * w <= 48 * 96
    assert WORLD.train_file.is_file() and WORLD.test_file.is_file()


def test_splits_are_disjoint_short_upper_case_words():
    train, test = _words(WORLD.train_file), _words(WORLD.test_file)
    assert len(train) >= 1000 and len(test) >= 200
    assert len(set(train)) == len(train) and len(set(test)) == len(test)
    assert not set(train) & set(test)
    assert all(re.fullmatch(r"[A-Z]{3,6}", w) for w in train + test)
    assert {len(w) for w in test} == {3, 4, 5, 6}
    assert set("".join(train)) == set(string.ascii_uppercase)  # every letter is seen in training


def test_metadata_convention():
    prompts = load_prompts(WORLD.test_file)
    for i, meta in enumerate(prompts[:8]):
        assert set(meta) == {"tag", "text", "prompt"} and meta["tag"] == "text"
        assert meta["prompt"] == TEMPLATES[i % len(TEMPLATES)].format(meta["text"])
        assert target_text(meta["prompt"]) == meta["text"]
    assert make_metadata("RIVER") == {"tag": "text", "text": "RIVER", "prompt": 'a sign that says "RIVER"'}


def test_target_text_parsing():
    assert target_text('a sign that says "RIVER"') == "RIVER"
    assert target_text('"AB" and "CD"') == "AB"  # the first quoted span
    assert target_text("no quotes", {"text": "CAT"}) == "CAT"
    with pytest.raises(VgpoError, match="double quotes"):
        target_text("no quotes here")


def test_load_prompts_accepts_prompts_comments_and_blank_lines(tmp_path):
    path = tmp_path / "p.txt"
    path.write_text('# header\n\nRIVER\n  a label that reads "CAT"  \nDOG\n')
    prompts = load_prompts(path)
    assert [m["text"] for m in prompts] == ["RIVER", "CAT", "DOG"]
    assert prompts[0]["prompt"] == 'a sign that says "RIVER"'
    assert prompts[1]["prompt"] == 'a label that reads "CAT"'
    assert prompts[2]["prompt"] == TEMPLATES[2].format("DOG")


@pytest.mark.parametrize(
    "line, match",
    [
        ("river", "upper-case"),
        ("RIV3R", "upper-case"),
        ("TOOLONGWORD", "upper-case"),
        ('a sign that says "river"', "quoted text"),
        ('a sign that says "RIVER', "one pair of double quotes"),
        ('a neon sign that says "RIVER"', "unknown: neon"),
    ],
)
def test_load_prompts_names_file_and_line(tmp_path, line, match):
    path = tmp_path / "bad.txt"
    path.write_text(f"CAT\n# comment\n{line}\n")
    with pytest.raises(VgpoError, match=match) as info:
        load_prompts(path)
    assert f"{path}:3" in str(info.value)


def test_load_prompts_missing_or_empty_file(tmp_path):
    with pytest.raises(VgpoError, match="missing.txt: prompt file not found"):
        load_prompts(tmp_path / "missing.txt")
    (tmp_path / "empty.txt").write_text("# nothing\n")
    with pytest.raises(VgpoError, match="no prompts"):
        load_prompts(tmp_path / "empty.txt")


def test_render_shape_range_determinism():
    meta = make_metadata("RIVER")
    a, b, c = render(meta, 3), render(meta, 3), render(meta, 4)
    assert a.shape == (3, *WORLD.image_size) and a.dtype == torch.float32
    assert 0.0 <= a.min() and a.max() <= 1.0
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert torch.equal(render({"prompt": 'a sign that says "RIVER"'}, 3), a)  # target from the prompt


@pytest.mark.parametrize("word", ["WWWWWW", "MEMORY", "COMMON", "CAT", "I"])
def test_render_keeps_the_word_inside_the_canvas(word):
    for seed in range(6):
        image = render_text(word, seed)
        background = image[:, 0, 0]
        ink = (image - background[:, None, None]).abs().amax(0) > 0.1
        assert ink.any()
        rows, cols = ink.any(1).nonzero(), ink.any(0).nonzero()
        assert rows.min() >= 2 and rows.max() <= image.shape[1] - 3
        assert cols.min() >= 2 and cols.max() <= image.shape[2] - 3


def test_render_varies_colour_and_position():
    images = torch.stack([render_text("RIVER", s) for s in range(8)])
    assert images[:, :, 0, 0].std(0).max() > 0.01  # background colour varies
    ink_cols = [(img.mean(0) < 0.5).any(0).nonzero().min().item() for img in images]
    assert len(set(ink_cols)) > 1  # horizontal position varies


def test_vocabulary_covers_every_prompt():
    vocab = vocabulary()
    assert set(string.ascii_uppercase) <= set(vocab) and len(vocab) == len(set(vocab))
    for meta in load_prompts(WORLD.train_file)[:8] + load_prompts(WORLD.test_file)[:8]:
        outside = meta["prompt"].replace(f'"{meta["text"]}"', " ").split()
        assert set(outside) <= set(vocab) and set(meta["text"]) <= set(vocab)


def test_evaluate_and_table():
    pytest.importorskip("rapidocr")
    prompts = load_prompts(WORLD.test_file)[:6]
    images = torch.stack([render(m, i) for i, m in enumerate(prompts)])
    images[0] = 1.0  # a blank image: read as nothing
    metrics = WORLD.evaluate(images, prompts)
    assert metrics["ocr/count"] == 6
    assert WORLD.headline in metrics
    assert metrics["ocr/exact"] == pytest.approx(5 / 6)
    assert metrics["ocr/accuracy"] == pytest.approx(5 / 6)
    # five scores of 1 and one of 0: sample variance 1/6, standard error sqrt(1/6 / 6) = 1/6
    assert metrics["ocr/accuracy_se"] == pytest.approx(1 / 6)
    assert WORLD.headline_standard_error(metrics) == metrics["ocr/accuracy_se"]
    assert sum(metrics[k] for k in metrics if k.startswith("len") and k.endswith("/count")) == 6
    table = WORLD.format_table(metrics)
    assert "overall" in table and "0.833" in table and "letters" in table
    with pytest.raises(VgpoError, match="metadata"):
        WORLD.evaluate(images, prompts[:2])
