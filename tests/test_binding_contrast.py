"""The binding-contrast loss of pretraining (``PretrainConfig.binding_contrast``, ``swap_binding``).

A base trained by the flow loss alone denoises a scene equally well under its caption and under the
caption with the binding exchanged ("a red circle and a blue square" against "a blue circle and a red
square"): a diffusion classifier built from it picks the right one about half the time
(docs/learning-study.md, section 27). The loss asks for the exact caption to win.
"""

from __future__ import annotations

import json
import math

import pytest
import torch

from vgpo.cli import main
from vgpo.errors import VgpoError
from vgpo.models.tiny import TinyConfig, TinyFlowModel
from vgpo.pretrain import PretrainConfig, binding_contrast_loss
from vgpo.worlds import get_world
from vgpo.worlds.shapes.prompts import composition_key, composition_space, swap_binding

TINY = ["pretrain", "--batch-size", "8", "--channels", "8,8,8", "--save-every", "1", "--threads", "1"]


def _meta(prompt: str) -> dict:
    return next(m for m in composition_space() if m["prompt"] == prompt)


def test_swap_exchanges_colours_and_reverses_relations_only():
    swapped = swap_binding(_meta("a photo of a red circle and a blue square"))
    assert swapped["prompt"] == "a photo of a blue circle and a red square" and swapped["tag"] == "color_attr"
    swapped = swap_binding(_meta("a photo of a square left of a triangle"))
    assert swapped["prompt"] == "a photo of a square right of a triangle"
    for tag in ("single_object", "two_object", "counting", "colors"):
        assert all(swap_binding(m) is None for m in composition_space() if m["tag"] == tag)
    bound = [m for m in composition_space() if m["tag"] in ("color_attr", "position")]
    for meta in bound:  # an involution that changes what the prompt asks for, never which objects it names
        swapped = swap_binding(meta)
        assert swap_binding(swapped)["prompt"] == meta["prompt"]
        assert composition_key(swapped) != composition_key(meta)
        assert sorted(o["class"] for o in swapped["include"]) == sorted(o["class"] for o in meta["include"])


def test_same_colour_pairs_have_no_binding_to_exchange():
    meta = {
        "tag": "color_attr",
        "include": [{"class": "circle", "count": 1, "color": "red"}, {"class": "square", "count": 1, "color": "red"}],
    }
    assert swap_binding(meta) is None


def _tiny_model() -> TinyFlowModel:
    world = get_world("shapes")
    cfg = TinyConfig(
        vocab=world.vocabulary(),
        image_size=tuple(world.image_size),
        channels=(8, 8, 8),
        text_encoder="ordered",
        world="shapes",
    )
    return TinyFlowModel(cfg, precision="fp32")


def _scenes(n: int = 8):
    world = get_world("shapes")
    metas = [m for m in composition_space() if m["tag"] == "color_attr"][:n]
    x0 = torch.stack([world.render(m, i) for i, m in enumerate(metas)]) * 2 - 1
    gen = torch.Generator().manual_seed(0)
    noise = torch.randn(x0.shape, generator=gen)
    t = torch.full((n,), 0.8)
    xt = (1 - 0.8) * x0 + 0.8 * noise
    return metas, xt, t, noise - x0


def test_loss_is_t_log_2_when_the_captions_agree():
    """T*softplus(0) = T*ln 2 whatever the model, and no scene counts as classified right."""
    torch.manual_seed(0)
    metas, xt, t, target = _scenes()
    prompts = [m["prompt"] for m in metas]
    loss, accuracy = binding_contrast_loss(_tiny_model(), xt, t, target, prompts, prompts, temperature=0.01)
    assert loss.item() == pytest.approx(0.01 * math.log(2), rel=1e-5) and accuracy == 0.0


def test_descending_the_loss_teaches_the_denoiser_which_caption_is_right():
    """A fixed batch of color_attr scenes at t = 0.8, the contrast loss alone: 40 Adam steps take the
    model's diffusion-classifier accuracy to 1 (a sign error would take it to 0)."""
    torch.manual_seed(0)
    model = _tiny_model()
    # The network's output conv and each cross-attention's output start at zero (as pretraining's first
    # flow steps find them), where the two captions' errors and gradients coincide; give them small weights.
    with torch.no_grad():
        for p in model.net.parameters():
            if not p.any():
                p.normal_(0.0, 0.02)
    metas, xt, t, target = _scenes()
    exact, swapped = [m["prompt"] for m in metas], [swap_binding(m)["prompt"] for m in metas]
    opt = torch.optim.Adam(model.net.parameters(), lr=3e-3)
    losses = []
    for _ in range(40):
        loss, accuracy = binding_contrast_loss(model, xt, t, target, exact, swapped, temperature=1e-3)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    _, accuracy = binding_contrast_loss(model, xt, t, target, exact, swapped, temperature=1e-3)
    assert accuracy == 1.0 and losses[-1] < 0.5 * losses[0], (accuracy, losses[0], losses[-1])


def test_pretraining_logs_the_contrast_resumes_exactly_and_refuses_another_weight(capsys, tmp_path):
    bc = ["--prompts", "all", "--caption-noise", "web", "--text-encoder", "ordered", "--binding-contrast", "0.5"]
    assert main(TINY + bc + ["--steps", "3", "--out", str(tmp_path / "full")]) == 0
    assert main(TINY + bc + ["--steps", "2", "--out", str(tmp_path / "part")]) == 0
    assert main(TINY + bc + ["--steps", "3", "--out", str(tmp_path / "part")]) == 0
    capsys.readouterr()
    weights = [(tmp_path / run / "model.safetensors").read_bytes() for run in ("full", "part")]
    assert weights[0] == weights[1]
    rows = [json.loads(line) for line in (tmp_path / "full" / "log.jsonl").read_text().splitlines()]
    assert len(rows) == 3 and all(r["binding"] > 0 and 0 <= r["binding_accuracy"] <= 1 for r in rows)
    meta = json.loads((tmp_path / "full" / "config.json").read_text())["pretrain"]
    assert meta["binding_contrast"] == 0.5 and meta["binding_contrast_temperature"] == 1e-3
    assert main(TINY + bc[:-2] + ["--steps", "4", "--out", str(tmp_path / "full")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "resume.pt" in err and "binding_contrast=0.5" in err


def test_bad_contrast_fields_and_worlds_without_bindings_name_the_field(capsys, tmp_path):
    cfg = dict(prompts="all", text_encoder="ordered", batch_size=4, channels=[8, 8, 8], steps=1, threads=1)
    with pytest.raises(VgpoError, match="binding_contrast:"):
        PretrainConfig(**cfg, binding_contrast=-1.0)
    with pytest.raises(VgpoError, match="binding_contrast_temperature"):
        PretrainConfig(**cfg, binding_contrast=1.0, binding_contrast_temperature=0.0)
    assert main(["pretrain", "--world", "text", "--binding-contrast", "1", "--steps", "1", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "binding_contrast" in err and "text" in err
