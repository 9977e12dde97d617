"""The text world's web-like pretraining data: every shipped word, captions that misspell it at set rates."""

import json
import math
import random
import string

import pytest

from vgpo.cli import main
from vgpo.errors import VgpoError
from vgpo.pretrain import PretrainConfig, _batch, training_prompts
from vgpo.worlds import get_world
from vgpo.worlds.text.prompts import (
    TEMPLATES,
    WEB_CAPTION_NOISE,
    CaptionNoise,
    _parse_line,
    caption_noise,
    composition_space,
    noisy_caption,
    quoted_text,
)

SPACE = composition_space()
WORLD = get_world("text")


def _words(split):
    return {m["text"] for m in WORLD.load_prompts(WORLD.prompt_file(split))}


def test_composition_space_is_every_word_under_every_template():
    words = {m["text"] for m in SPACE}
    assert words == _words("train") | _words("test")  # test words included; val words are train words
    assert _words("val") <= words and not _words("train") & _words("test")
    assert len(SPACE) == len(words) * len(TEMPLATES) == len({m["prompt"] for m in SPACE})
    assert training_prompts(WORLD, "all") == SPACE


def test_zero_rates_give_the_exact_prompt():
    rng = random.Random(0)
    assert all(noisy_caption(m, CaptionNoise(), rng) == m["prompt"] for m in SPACE)


def test_rate_one_of_each_kind_always_misspells_and_only_the_quoted_word():
    rng = random.Random(1)
    for meta in SPACE[::3]:
        word = meta["text"]
        swapped = quoted_text(noisy_caption(meta, CaptionNoise(swap=1.0), rng))
        diff = [i for i in range(len(word)) if swapped[i] != word[i]]
        if len(set(word)) == 1:
            assert swapped == word  # no two neighbouring letters differ
        else:
            assert sorted(swapped) == sorted(word) and len(diff) == 2 and diff[1] == diff[0] + 1
        replaced = quoted_text(noisy_caption(meta, CaptionNoise(letter=1.0), rng))
        assert len(replaced) == len(word) and sum(a != b for a, b in zip(replaced, word)) == 1
        dropped = quoted_text(noisy_caption(meta, CaptionNoise(drop=1.0), rng))
        assert len(dropped) == len(word) - 1 and any(word[:i] + word[i + 1 :] == dropped for i in range(len(word)))
        for noise in (CaptionNoise(swap=1.0), CaptionNoise(letter=1.0), CaptionNoise(drop=1.0)):
            said = noisy_caption(meta, noise, rng)
            assert said.replace(f'"{quoted_text(said)}"', f'"{word}"') == meta["prompt"]  # the template kept


def test_one_letter_words_are_never_dropped_to_nothing():
    meta = _parse_line('a sign that says "A"', 0, "t")
    rng = random.Random(3)
    assert {noisy_caption(meta, CaptionNoise(swap=1.0, drop=1.0), rng) for _ in range(50)} == {meta["prompt"]}


def test_noisy_captions_are_valid_prompts():
    """Every caption parses as a prompt of the world: 1 to 6 letters A-Z between quotes, template words outside."""
    rng = random.Random(4)
    heavy = CaptionNoise(swap=0.5, letter=0.5, drop=0.5)
    for i, meta in enumerate(SPACE):
        parsed = _parse_line(noisy_caption(meta, heavy, rng), i, "caption")
        assert set(parsed["text"]) <= set(string.ascii_uppercase)


def test_empirical_rates_match_the_configured_ones():
    rng = random.Random(2)
    metas = [rng.choice(SPACE) for _ in range(4000)]
    changed = sum(noisy_caption(m, WEB_CAPTION_NOISE, rng) != m["prompt"] for m in metas) / len(metas)
    # A swap is void only in words without two different neighbours (none ship), and no corruption undoes another:
    # a swap changes two letters, a replacement one, a drop the length.
    rate = 1 - (1 - WEB_CAPTION_NOISE.swap) * (1 - WEB_CAPTION_NOISE.letter) * (1 - WEB_CAPTION_NOISE.drop)
    assert abs(changed - rate) < 3 * math.sqrt(rate * (1 - rate) / len(metas))


def test_bad_rates_name_the_field():
    with pytest.raises(VgpoError, match=r"^caption_noise\.leter: unknown rate; expected some of swap, letter, drop"):
        caption_noise({"leter": 0.3})
    with pytest.raises(VgpoError, match=r"^caption_noise\.drop: expected a rate in \[0, 1\], got 2"):
        caption_noise({"drop": 2})
    with pytest.raises(VgpoError, match=r"^caption_noise\.swap: expected a finite rate"):
        CaptionNoise(swap=math.inf)
    with pytest.raises(VgpoError, match=r"^caption_noise: unknown preset 'webb'"):
        caption_noise("webb")
    assert caption_noise("web") == WEB_CAPTION_NOISE and caption_noise({"drop": 0.2}) == CaptionNoise(drop=0.2)
    with pytest.raises(VgpoError, match=r"^prompts: world 'ocr' has no composition space"):
        get_world("ocr").all_compositions()
    with pytest.raises(VgpoError, match=r"^caption_noise: world 'ocr' has no noisy captions"):
        get_world("ocr").captioner("web")


def test_batches_change_only_their_texts():
    cfg = PretrainConfig(world="text", prompts="all", caption_noise="web", batch_size=48)
    exact = _batch(WORLD, SPACE, cfg, 5, (3, *WORLD.image_size))
    noisy = _batch(WORLD, SPACE, cfg, 5, (3, *WORLD.image_size), WORLD.captioner("web"))
    assert noisy.metas == exact.metas and noisy.seeds == exact.seeds and noisy.texts != exact.texts
    assert [s == "" for s in noisy.texts] == [s == "" for s in exact.texts]


def test_web_pretraining_on_text_runs_and_records_its_data(capsys, tmp_path):
    out = tmp_path / "text-web"
    argv = ["pretrain", "--world", "text", "--prompts", "all", "--caption-noise", "web", "--batch-size", "4"]
    argv += ["--channels", "8,8,8", "--steps", "2", "--threads", "1", "--out", str(out)]
    assert main(argv) == 0
    capsys.readouterr()
    meta = json.loads((out / "config.json").read_text())["pretrain"]
    assert (meta["world"], meta["prompts"], meta["caption_noise"], meta["completed_steps"]) == ("text", "all", "web", 2)
