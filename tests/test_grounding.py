"""The grounding loss of pretraining (``PretrainConfig.grounding_loss``, TokenCompose's token loss) and its
parts: per-object masks from the renderer, each object's words in its prompt, the U-Net's kept
cross-attention, and ``init`` (pretraining that starts from a checkpoint)."""

from __future__ import annotations

import json

import pytest
import torch

from vgpo.cli import main
from vgpo.errors import VgpoError
from vgpo.models.tiny import AttnBlock, TinyConfig, TinyFlowModel
from vgpo.pretrain import PretrainConfig, grounding_loss
from vgpo.worlds import get_world
from vgpo.worlds.shapes.prompts import composition_space, object_words
from vgpo.worlds.shapes.renderer import render, render_masks

TINY = ["pretrain", "--batch-size", "8", "--channels", "8,8,8", "--save-every", "1", "--threads", "1"]


def test_masks_come_with_the_unchanged_render_and_cover_each_object():
    for i, meta in enumerate(m for m in composition_space() if len(m["include"]) > 1):
        image, masks = render_masks(meta, i)
        assert torch.equal(image, render(meta, i)) and masks.shape == (len(meta["include"]), 32, 32)
        assert (masks.sum(0) <= 1).all() and (masks.flatten(1).sum(1) > 20).all()  # disjoint, each drawn
        background = (image - image[:, :1, :1]).abs().amax(0) < 0.05  # the corner is background
        assert (masks.sum(0)[background] < 0.5).all()


def test_object_words_name_each_entry_in_its_prompt():
    for meta in composition_space():
        words = meta["prompt"].split()
        for obj, where in zip(meta["include"], object_words(meta)):
            noun = obj["class"] if obj["count"] == 1 else obj["class"] + "s"
            assert [words[w] for w in where] == [obj["color"], noun] if "color" in obj else [noun]


def _model() -> TinyFlowModel:
    world = get_world("shapes")
    cfg = TinyConfig(
        vocab=world.vocabulary(), image_size=tuple(world.image_size), channels=(8, 8, 8), text_encoder="ordered"
    )
    return TinyFlowModel(cfg, precision="fp32")


def _scenes(n: int = 6):
    world = get_world("shapes")
    metas = [m for m in composition_space() if m["tag"] == "color_attr"][:n]
    objects = [world.object_masks(m, i) for i, m in enumerate(metas)]
    x0 = torch.stack([world.render(m, i) for i, m in enumerate(metas)]) * 2 - 1
    t = torch.full((n,), 0.7)
    xt = 0.3 * x0 + 0.7 * torch.randn(x0.shape, generator=torch.Generator().manual_seed(0))
    return metas, objects, xt, t


def test_uniform_attention_finds_each_object_in_proportion_to_its_area():
    """With every query weight zero, each pixel attends to the prompt's tokens uniformly, so the fraction of
    a token's attention inside its object is the object's share of the canvas (pooling keeps areas)."""
    torch.manual_seed(0)
    model = _model()
    with torch.no_grad():
        for block in (m for m in model.net.modules() if isinstance(m, AttnBlock)):
            block.q.weight.zero_()
            block.q.bias.zero_()
    metas, objects, xt, t = _scenes()
    loss, inside = grounding_loss(model, xt, t, [m["prompt"] for m in metas], objects)
    shares = torch.tensor([mask.mean().item() for scene in objects for words, mask in scene for _ in words])
    assert inside == pytest.approx(shares.mean().item(), rel=1e-4)
    assert loss.item() == pytest.approx(((1 - shares) ** 2).mean().item(), rel=1e-4)
    assert all(
        b.cross_attention is None and not b.keep_cross_attention
        for b in model.net.modules()
        if isinstance(b, AttnBlock)
    )


def test_descending_the_loss_draws_each_word_to_its_object():
    torch.manual_seed(0)
    model = _model()
    metas, objects, xt, t = _scenes()
    captions = [m["prompt"] for m in metas]
    opt = torch.optim.Adam(model.net.parameters(), lr=3e-3)
    _, before = grounding_loss(model, xt, t, captions, objects)
    for _ in range(30):
        loss, _ = grounding_loss(model, xt, t, captions, objects)
        opt.zero_grad()
        loss.backward()
        opt.step()
    _, after = grounding_loss(model, xt, t, captions, objects)
    assert before < 0.15 and after > 2 * before, (before, after)


def test_pretraining_logs_grounding_starts_from_init_and_refuses_bad_fields(capsys, tmp_path):
    gl = ["--prompts", "all", "--text-encoder", "ordered"]
    assert main(TINY + gl + ["--steps", "2", "--out", str(tmp_path / "base")]) == 0
    init = ["--init", str(tmp_path / "base"), "--grounding-loss", "0.5"]
    assert main(TINY + gl + init + ["--steps", "1", "--lr", "1e-12", "--out", str(tmp_path / "tuned")]) == 0
    capsys.readouterr()
    rows = [json.loads(line) for line in (tmp_path / "tuned" / "log.jsonl").read_text().splitlines()]
    assert len(rows) == 1 and 0 < rows[0]["grounding"] < 1 and 0 < rows[0]["grounding_inside"] < 1
    base, tuned = (TinyFlowModel.load(tmp_path / d, precision="fp32") for d in ("base", "tuned"))
    for p, q in zip(base.net.parameters(), tuned.net.parameters()):  # a step of lr 1e-12 from the init
        assert torch.allclose(p, q, atol=1e-6)
    wide = TINY[:-4] + ["--channels", "16,16,16", "--threads", "1"]
    assert main(wide + gl + init + ["--steps", "1", "--out", str(tmp_path / "wide")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "init: " in err and "architecture" in err
    cfg = dict(prompts="all", text_encoder="ordered", batch_size=4, steps=1)
    with pytest.raises(VgpoError, match="grounding_loss:"):
        PretrainConfig(**cfg, grounding_loss=-1.0)
    with pytest.raises(VgpoError, match="grounding_loss:.*unet"):
        PretrainConfig(**cfg, grounding_loss=1.0, backbone="dit")
