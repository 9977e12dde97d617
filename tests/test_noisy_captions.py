"""Web-like pretraining data: the whole composition space, captions corrupted at set rates."""

import json
import math
import random

import pytest
import torch
from safetensors.torch import load_file

from vgpo.cli import main
from vgpo.errors import VgpoError
from vgpo.pretrain import PretrainConfig, _batch, lr_factor, training_prompts
from vgpo.worlds import get_world
from vgpo.worlds.shapes.prompts import (
    CLASSES,
    COLORS,
    MAX_COUNT,
    NUMBERS,
    RELATIONS,
    WEB_CAPTION_NOISE,
    CaptionNoise,
    caption_noise,
    composition_space,
    noisy_caption,
    vocabulary,
)

SPACE = composition_space()


def _of(tag):
    return [m for m in SPACE if m["tag"] == tag]


def _relation(caption):
    return [r for r in RELATIONS if f" {r} " in caption]


def _colour_of(caption, cls):
    """The colour word bound to ``cls`` in a caption (the word before it), or None."""
    words = caption.split()
    before = words[words.index(cls) - 1]
    return before if before in COLORS else None


def _count(caption):
    return [NUMBERS.index(w) + 1 for w in caption.split() if w in NUMBERS]


def _classes(caption):
    return [c for c in CLASSES if c in caption.split() or c + "s" in caption.split()]


def test_zero_rates_give_the_exact_prompt():
    rng = random.Random(0)
    assert all(noisy_caption(m, CaptionNoise(), rng) == m["prompt"] for m in SPACE)


def test_rate_one_of_each_kind_always_misdescribes():
    rng = random.Random(1)
    for meta in _of("position"):
        said = noisy_caption(meta, CaptionNoise(relation=1.0), rng)
        assert len(_relation(said)) == 1 and _relation(said) != _relation(meta["prompt"])
        assert said.replace(_relation(said)[0], _relation(meta["prompt"])[0]) == meta["prompt"]  # only that
    for meta in _of("colors") + _of("color_attr"):
        said = noisy_caption(meta, CaptionNoise(color=1.0), rng)
        for obj in meta["include"]:
            assert _colour_of(said, obj["class"]) != obj["color"]  # another colour, or none
    for meta in _of("counting"):
        said = noisy_caption(meta, CaptionNoise(count=1.0), rng)
        (n,) = _count(said)
        assert abs(n - meta["include"][0]["count"]) == 1 and 1 <= n <= MAX_COUNT
    for meta in _of("two_object") + _of("position") + _of("color_attr"):
        said = noisy_caption(meta, CaptionNoise(omit=1.0), rng)
        (kept,) = _classes(said)
        (obj,) = [o for o in meta["include"] if o["class"] == kept]
        single = f"a photo of {'an' if (obj.get('color') or kept)[0] in 'aeiou' else 'a'} "
        assert said == single + " ".join([*([obj["color"]] if "color" in obj else []), kept])
    # A rate only touches the prompts it is about.
    for meta in _of("single_object") + _of("two_object"):
        assert noisy_caption(meta, CaptionNoise(relation=1.0, color=1.0, count=1.0), rng) == meta["prompt"]


@pytest.mark.parametrize("kind", ["relation", "color", "count", "omit"])
def test_empirical_rates_match_the_configured_ones(kind):
    rate = getattr(WEB_CAPTION_NOISE, kind)
    noise = CaptionNoise(**{kind: rate})
    tag = {"relation": "position", "color": "colors", "count": "counting", "omit": "color_attr"}[kind]
    rng = random.Random(2)
    metas = [rng.choice(_of(tag)) for _ in range(4000)]
    said = [noisy_caption(m, noise, rng) for m in metas]
    changed = [s != m["prompt"] for s, m in zip(said, metas)]
    se = math.sqrt(rate * (1 - rate) / len(metas))
    assert abs(sum(changed) / len(metas) - rate) < 3 * se
    if kind == "color":  # half of the corrupted colours are replaced, half dropped
        dropped = [_colour_of(s, m["include"][0]["class"]) is None for s, m, c in zip(said, metas, changed) if c]
        assert abs(sum(dropped) / len(dropped) - 0.5) < 3 * math.sqrt(0.25 / len(dropped))


def test_noisy_captions_use_the_vocabulary_only():
    rng = random.Random(3)
    words = set(vocabulary())
    heavy = CaptionNoise(relation=0.5, color=0.5, count=0.5, omit=0.5)
    for meta in SPACE * 4:
        said = noisy_caption(meta, heavy, rng)
        assert said.startswith("a photo of ") and set(said.split()) <= words


def test_composition_space_holds_every_split():
    world = get_world("shapes")
    space = {m["prompt"] for m in SPACE}
    for split in ("train", "test", "val", "train_minus_val"):
        assert {m["prompt"] for m in world.load_prompts(world.prompt_file(split))} <= space
    assert len(space) == len(SPACE)  # each composition once
    assert training_prompts(world, "all") == SPACE


def test_batches_are_a_pure_function_of_seed_and_step():
    world = get_world("shapes")
    cfg = PretrainConfig(prompts="all", caption_noise="web", batch_size=48)
    captioner = world.captioner(cfg.caption_noise)
    exact = _batch(world, SPACE, cfg, 5, (3, 32, 32))
    exact_texts = exact.texts
    noisy = _batch(world, SPACE, cfg, 5, (3, 32, 32), captioner)
    texts = noisy.texts
    assert texts == _batch(world, SPACE, cfg, 5, (3, 32, 32), captioner).texts
    assert texts != _batch(world, SPACE, cfg, 6, (3, 32, 32), captioner).texts
    # Only the texts change: the same scenes, renders, timesteps and dropped prompts as exact captions.
    assert noisy.metas == exact.metas and noisy.seeds == exact.seeds
    assert torch.equal(noisy.images, exact.images) and torch.equal(noisy.t, exact.t)
    assert [s == "" for s in texts] == [s == "" for s in exact_texts] and "" in texts
    assert texts != exact_texts


def test_bad_rates_name_the_field():
    with pytest.raises(VgpoError, match=r"^caption_noise\.relaton: unknown rate"):
        caption_noise({"relaton": 0.3})
    with pytest.raises(VgpoError, match=r"^caption_noise\.relation: expected a rate in \[0, 1\], got 1.5"):
        caption_noise({"relation": 1.5})
    with pytest.raises(VgpoError, match=r"^caption_noise\.omit: expected a finite rate"):
        CaptionNoise(omit=math.nan)
    with pytest.raises(VgpoError, match=r"^caption_noise: unknown preset 'webb'"):
        caption_noise("webb")
    assert caption_noise("web") == WEB_CAPTION_NOISE and caption_noise({"count": 0.2}) == CaptionNoise(count=0.2)


def _run_error(capsys, argv):
    code = main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and err.startswith("vgpo: error: ")
    return err


def _run(capsys, argv):
    assert main(argv) == 0
    capsys.readouterr()  # the progress bar


TINY = ["pretrain", "--batch-size", "4", "--channels", "8,8,8", "--save-every", "1", "--threads", "1"]


def test_cli_errors_are_one_line(capsys, tmp_path):
    out = ["--out", str(tmp_path / "run"), "--steps", "1"]
    assert "caption_noise.relaton" in _run_error(capsys, TINY + out + ["--caption-noise", "{relaton: 0.3}"])
    assert "caption_noise.count" in _run_error(capsys, TINY + out + ["--caption-noise", "{count: 1.5}"])
    assert "caption_noise" in _run_error(capsys, TINY + out + ["--set", "caption_noise={color: .nan}"])
    text = ["--world", "text"]
    assert "caption_noise.relation" in _run_error(capsys, TINY + out + text + ["--caption-noise", "{relation: 0.3}"])
    assert "nope.jsonl" in _run_error(capsys, TINY + out + ["--prompts", str(tmp_path / "nope.jsonl")])
    assert not (tmp_path / "run").exists()


def test_web_pretraining_records_its_data_and_refuses_other_data_on_resume(capsys, tmp_path):
    run = ["--out", str(tmp_path / "web"), "--prompts", "all"]
    _run(capsys, TINY + run + ["--steps", "2", "--caption-noise", "web"])
    meta = json.loads((tmp_path / "web" / "config.json").read_text())["pretrain"]
    assert meta["prompts"] == "all" and meta["caption_noise"] == "web" and meta["completed_steps"] == 2
    err = _run_error(capsys, TINY + run + ["--steps", "3", "--caption-noise", "{relation: 0.3}"])
    assert "resume.pt" in err and "caption_noise" in err
    assert "resume.pt" in _run_error(capsys, TINY + run[:2] + ["--steps", "3", "--caption-noise", "web"])
    _run(capsys, TINY + run + ["--steps", "3", "--caption-noise", "web"])  # the same data resumes
    assert json.loads((tmp_path / "web" / "config.json").read_text())["pretrain"]["completed_steps"] == 3


def test_resume_files_without_data_fields_were_exact_train_split(capsys, tmp_path):
    run = ["--out", str(tmp_path / "old")]
    _run(capsys, TINY + run + ["--steps", "1"])
    state = torch.load(tmp_path / "old" / "resume.pt", weights_only=True)
    del state["data"]  # as written before the prompts/caption_noise options
    torch.save(state, tmp_path / "old" / "resume.pt")
    assert "resume.pt" in _run_error(capsys, TINY + run + ["--steps", "2", "--prompts", "all"])
    _run(capsys, TINY + run + ["--steps", "2"])


def test_bf16_pretraining_runs_under_autocast_and_records_it(capsys, tmp_path):
    """``precision: bf16`` trains under autocast with float32 weights, a finite loss, and says so."""
    assert "precision" in _run_error(capsys, TINY + ["--out", str(tmp_path / "bad"), "--precision", "fp16"])
    _run(capsys, TINY + ["--out", str(tmp_path / "bf16"), "--steps", "2", "--precision", "bf16"])
    meta = json.loads((tmp_path / "bf16" / "config.json").read_text())["pretrain"]
    assert meta["precision"] == "bf16" and meta["completed_steps"] == 2
    rows = [json.loads(line) for line in (tmp_path / "bf16" / "log.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and all(math.isfinite(r["loss"]) for r in rows)
    state = torch.load(tmp_path / "bf16" / "resume.pt", weights_only=True)
    assert all(v.dtype == torch.float32 for v in state["net"].values() if v.is_floating_point())


def test_cooldown_decays_the_learning_rate_linearly_over_the_last_steps():
    cfg = PretrainConfig(steps=10, warmup_steps=2, cooldown_steps=4)
    assert [lr_factor(cfg, s) for s in range(10)] == [0.5, 1, 1, 1, 1, 1, 1, 0.75, 0.5, 0.25]
    assert [lr_factor(PretrainConfig(steps=10, warmup_steps=2), s) for s in (0, 9)] == [0.5, 1]
    with pytest.raises(VgpoError, match="cooldown_steps"):
        PretrainConfig(steps=10, cooldown_steps=11)


def test_a_run_extended_with_a_cooldown_ends_where_a_straight_one_does(capsys, tmp_path):
    # The cooldown touches only the last steps, so training 2 constant steps, then resuming to 4 with a
    # 2-step cooldown, is the same computation as 4 steps with that cooldown from the start.
    tiny = TINY + ["--warmup-steps", "1"]
    _run(capsys, tiny + ["--out", str(tmp_path / "straight"), "--steps", "4", "--cooldown-steps", "2"])
    _run(capsys, tiny + ["--out", str(tmp_path / "extended"), "--steps", "2"])
    _run(capsys, tiny + ["--out", str(tmp_path / "extended"), "--steps", "4", "--cooldown-steps", "2"])
    straight, extended = (load_file(tmp_path / run / "model.safetensors") for run in ("straight", "extended"))
    assert straight.keys() == extended.keys()
    assert all(torch.equal(straight[k], extended[k]) for k in straight)
    lrs = [json.loads(line)["lr"] for line in (tmp_path / "extended" / "log.jsonl").read_text().splitlines()]
    assert lrs[-1] == 0.0  # the rate after the last step: the cooldown ends at 0
