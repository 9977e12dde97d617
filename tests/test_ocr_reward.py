"""The ``ocr`` reward: Flow-GRPO's metric, batching, options, and a real RapidOCR judge with no network."""

from __future__ import annotations

import socket

import pytest
import torch
from PIL import Image, ImageDraw, ImageFont

import vgpo.rewards
from vgpo.errors import VgpoError

pytest.importorskip("rapidocr")
Levenshtein = pytest.importorskip("rapidfuzz.distance").Levenshtein

from vgpo.rewards.ocr import OcrReward, exact_match, normalize, ocr_score, target_of
from vgpo.worlds import get_world
from vgpo.worlds.text import load_prompts, make_metadata, render, render_text
from vgpo.worlds.text.render import font_path


@pytest.fixture(scope="module")
def reward():
    return vgpo.rewards.build("ocr", threads=2)


def _prompts(words):
    return [make_metadata(w)["prompt"] for w in words]


def _scene(word: str, size: int = 160) -> torch.Tensor:
    """A square image with the word on a plate in the middle of a coloured background."""
    image = Image.new("RGB", (size, size), (70, 120, 160))
    draw = ImageDraw.Draw(image)
    draw.rectangle((8, size // 2 - 24, size - 8, size // 2 + 24), fill=(245, 240, 225))
    font = ImageFont.truetype(str(font_path()), 28)
    draw.text((size // 2, size // 2), word, font=font, fill=(20, 20, 30), anchor="mm")
    return torch.from_numpy(__import__("numpy").asarray(image, dtype="float32") / 255).permute(2, 0, 1)


# -- metric ------------------------------------------------------------------------------------------
def test_metric_matches_flow_grpo_formula():
    for read, target in [("RIVR", "RIVER"), ("", "RIVER"), ("xyzxyzxyz", "CAT"), ("GARDEN", "RIVER")]:
        t, r = normalize(target), normalize(read)
        expected = 1 - min(Levenshtein.distance(r, t), len(t)) / len(t)
        assert ocr_score(read, target) == pytest.approx(expected)
    assert ocr_score("", "RIVER") == 0.0
    assert ocr_score("THE RIVER BANK", "RIVER") == 1.0  # target is a substring
    assert ocr_score("r i v e r", "RIVER") == 1.0  # spaces removed, lower-cased
    assert ocr_score("RIVERS", "RIVER") == 1.0


def test_exact_match_is_equality_after_normalising():
    assert exact_match("r i v e r", "RIVER") and exact_match("RIVER", "river")
    assert not exact_match("RIVERS", "RIVER")  # the metric's substring rule pays 1 here; the whole word does not
    assert not exact_match("RIVR", "RIVER") and not exact_match("", "RIVER")


def test_target_parsing():
    assert target_of('a sign that says "RIVER"') == "RIVER"
    assert target_of('"AB" then "CD"') == "AB"
    assert target_of("no quotes", {"text": "CAT"}) == "CAT"
    assert target_of('says "RIVER"', {"text": "CAT"}) == "RIVER"  # the prompt wins
    with pytest.raises(VgpoError, match="double quotes"):
        target_of("no quotes", {})


def test_registered_lazily_and_options_validated():
    assert "ocr" in vgpo.rewards.available()
    assert isinstance(vgpo.rewards.build("ocr"), OcrReward)
    combined = vgpo.rewards.build({"ocr": {"weight": 2.0, "mode": "rec"}, "brightness": 0.0})
    assert combined.rewards["ocr"].mode == "rec"
    for bad, match in [
        ({"mode": "fast"}, "mode"),
        ({"min_confidence": 2}, "min_confidence"),
        ({"threads": 0}, "threads"),
        ({"det_side_len": 500}, "multiple of 32"),
        ({"batch_size": -1}, "batch_size"),
        ({"exact_bonus": -0.5}, "exact_bonus"),
        ({"exact_bonus": float("nan")}, "exact_bonus"),
        ({"exact_bonus": True}, "exact_bonus"),
    ]:
        with pytest.raises(VgpoError, match=match):
            vgpo.rewards.build("ocr", **bad)
    assert OcrReward().resolve_mode(32, 96) == "rec" and OcrReward().resolve_mode(512, 512) == "det"


# -- the real judge ----------------------------------------------------------------------------------
def test_clean_renders_of_test_words_score_high(reward):
    prompts = load_prompts(get_world("text").test_file)
    images = torch.stack([render(m, i) for i, m in enumerate(prompts)])
    scores = reward(images, [m["prompt"] for m in prompts], prompts)
    assert scores.shape == (len(prompts),) and scores.dtype == torch.float32
    assert scores.mean().item() >= 0.95


def test_blank_and_noise_score_near_zero(reward):
    gen = torch.Generator().manual_seed(0)
    n = 16
    blocky = torch.nn.functional.interpolate(torch.rand(n, 1, 8, 24, generator=gen), size=(32, 96)).repeat(1, 3, 1, 1)
    for images in (
        torch.ones(n, 3, 32, 96),
        torch.zeros(n, 3, 32, 96),
        torch.rand(n, 3, 32, 96, generator=gen),
        blocky,
    ):
        scores = reward(images, _prompts(["RIVER"] * n), [])
        assert scores.mean().item() <= 0.05


def test_a_different_word_scores_by_the_formula(reward):
    pairs = [("RIVER", "GARDEN"), ("CAT", "CART"), ("PLANET", "PLANT"), ("HOUSE", "MOUSE")]
    images = torch.stack([render_text(drawn, 7) for drawn, _ in pairs])
    scores = reward(images, _prompts([asked for _, asked in pairs]), [])
    for (drawn, asked), score in zip(pairs, scores.tolist()):
        d, a = drawn.lower(), asked.lower()
        expected = 1.0 if a in d else 1 - min(Levenshtein.distance(d, a), len(a)) / len(a)
        assert score == pytest.approx(expected)


def test_exact_bonus_pays_whole_words_only():
    """Per-letter score plus the bonus where the reading equals the word; a superstring or a near miss gets none."""
    drawn_asked = [("RIVER", "RIVER"), ("RIVERS", "RIVER"), ("CART", "CAT"), ("GARDEN", "RIVER")]
    images = torch.stack([render_text(drawn, 7) for drawn, _ in drawn_asked])
    prompts = _prompts([asked for _, asked in drawn_asked])
    plain = vgpo.rewards.build("ocr", threads=2)
    with_bonus = vgpo.rewards.build("ocr", threads=2, exact_bonus=0.75)
    base, bonus = plain(images, prompts, []), with_bonus(images, prompts, [])
    assert plain.last_texts == with_bonus.last_texts
    for text, (_, asked), b, s in zip(plain.last_texts, drawn_asked, base.tolist(), bonus.tolist()):
        assert s == pytest.approx(b + (0.75 if exact_match(text, asked) else 0.0))
    assert bonus[0].item() == pytest.approx(1.75)  # a clean render of the asked word reads exactly
    assert bonus[1:].tolist() == pytest.approx(base[1:].tolist())  # RIVERS: 1 by the metric, no whole-word credit
    assert base[1].item() == 1.0


def test_one_engine_call_per_batch(reward, monkeypatch):
    engine = reward._engine()
    calls = []
    original = engine.recognize_txt
    monkeypatch.setattr(engine, "recognize_txt", lambda crops: calls.append(len(crops)) or original(crops))
    words = ["RIVER", "CAT", "GARDEN", "TIGER"] * 4
    scores = reward(torch.stack([render_text(w, i) for i, w in enumerate(words)]), _prompts(words), [])
    assert calls == [16] and scores.min().item() == 1.0


def test_detection_mode_reads_text_in_a_scene(reward):
    det = OcrReward(mode="auto", threads=2)
    det._ocr = reward._engine()  # share the loaded recogniser; the detector loads on first use
    session_calls = []
    images = torch.stack([_scene("RIVER"), _scene("TIGER"), torch.ones(3, 160, 160)])
    detector = det._detector()
    original = detector.session
    detector.session = lambda batch: session_calls.append(batch.shape[0]) or original(batch)
    try:
        scores = det(images, _prompts(["RIVER", "TIGER", "TIGER"]), [])
    finally:
        detector.session = original
    assert session_calls == [3]  # one detection call for the whole batch
    assert scores.tolist() == [1.0, 1.0, 0.0]
    assert det.last_texts[2] == ""


def test_no_network_access_at_load_or_call(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the OCR reward attempted network access")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    fresh = vgpo.rewards.build("ocr", threads=2)  # a new engine: models load under the patch
    canvas = fresh(render_text("RIVER", 0)[None], _prompts(["RIVER"]), [])
    scene = fresh(_scene("TIGER")[None], _prompts(["TIGER"]), [])
    assert canvas.item() == 1.0 and scene.item() == 1.0


def test_shape_and_length_errors(reward):
    with pytest.raises(VgpoError, match="images"):
        reward(torch.ones(2, 3, 32, 96), _prompts(["CAT"]), [])
    with pytest.raises(VgpoError, match="metadata"):
        reward(torch.ones(1, 3, 32, 96), _prompts(["CAT"]), [{}, {}])
    with pytest.raises(VgpoError, match=r"\(B, 3, H, W\)"):
        reward.read(torch.ones(1, 1, 32, 96))
    assert reward(torch.ones(0, 3, 32, 96), [], []).shape == (0,)


@pytest.mark.parametrize("threads, torch_threads, expected", [(None, 1, 1), (None, 3, 3), (2, 1, 2)])
def test_engine_threads_follow_torch_unless_set(monkeypatch, threads, torch_threads, expected):
    # A run's `threads` (and `vgpo bench --jobs`) must bound the OCR engine as it bounds torch.
    import rapidocr

    captured = {}
    monkeypatch.setattr(rapidocr, "RapidOCR", lambda params: captured.update(params) or object())
    monkeypatch.setattr(torch, "get_num_threads", lambda: torch_threads)
    OcrReward(threads=threads)._engine()
    assert captured["EngineConfig.onnxruntime.intra_op_num_threads"] == expected
