"""The grounding and relation losses of pretraining (``PretrainConfig.grounding_loss``, TokenCompose's token
loss; ``relation_loss``) and their parts: per-object masks from the renderer, each object's words in its
prompt, each stated relation's direction, the U-Net's kept cross-attention, and ``init`` (pretraining that
starts from a checkpoint)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch

from vgpo.cli import main
from vgpo.errors import VgpoError
from vgpo.models.tiny import AttnBlock, TinyConfig, TinyFlowModel
from vgpo.pretrain import (
    PretrainConfig,
    cross_attention_maps,
    grounded_scenes,
    grounding_loss,
    pretrain,
    relation_loss,
    relation_weight,
)
from vgpo.worlds import get_world
from vgpo.worlds.shapes.prompts import composition_space, object_relations, object_words
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


def _uniform_attention_model() -> TinyFlowModel:
    """Every query weight zero: each pixel attends to the prompt's tokens uniformly."""
    torch.manual_seed(0)
    model = _model()
    with torch.no_grad():
        for block in (m for m in model.net.modules() if isinstance(m, AttnBlock)):
            block.q.weight.zero_()
            block.q.bias.zero_()
    return model


def _scenes(n: int = 6, tag: str = "color_attr"):
    world = get_world("shapes")
    metas = [m for m in composition_space() if m["tag"] == tag][:: 3 if tag == "position" else 1][:n]
    objects = [world.object_masks(m, i) for i, m in enumerate(metas)]
    x0 = torch.stack([world.render(m, i) for i, m in enumerate(metas)]) * 2 - 1
    t = torch.full((n,), 0.7)
    xt = 0.3 * x0 + 0.7 * torch.randn(x0.shape, generator=torch.Generator().manual_seed(0))
    return metas, objects, xt, t


@pytest.mark.parametrize("tag", ["color_attr", "colors", "counting"])  # two objects; one; one word for several
def test_uniform_attention_finds_each_object_in_proportion_to_its_area(tag):
    """With every query weight zero, each pixel attends to the prompt's tokens uniformly, so the fraction of
    a token's attention inside its object is the object's share of the canvas (pooling keeps areas)."""
    model = _uniform_attention_model()
    metas, objects, xt, t = _scenes(tag=tag)
    maps = cross_attention_maps(model, xt, t, [m["prompt"] for m in metas])
    loss, inside = grounding_loss(maps, objects, model.tokenizer.max_tokens)
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
    n_tok = model.tokenizer.max_tokens
    _, before = grounding_loss(cross_attention_maps(model, xt, t, captions), objects, n_tok)
    for _ in range(30):
        loss, _ = grounding_loss(cross_attention_maps(model, xt, t, captions), objects, n_tok)
        opt.zero_grad()
        loss.backward()
        opt.step()
    _, after = grounding_loss(cross_attention_maps(model, xt, t, captions), objects, n_tok)
    assert before < 0.15 and after > 2 * before, (before, after)


def test_relations_point_from_the_rendered_target_to_the_rendered_subject():
    """The stated direction agrees with the renderer: the subject mask's centre minus the target's, projected
    on it, is at least the two objects' smallest possible half-sizes apart; prompts without one state none."""
    world = get_world("shapes")
    ys, xs = torch.meshgrid(torch.arange(32.0), torch.arange(32.0), indexing="ij")
    for i, meta in enumerate(composition_space()):
        stated = object_relations(meta)
        assert len(stated) == (meta["tag"] == "position")
        for s, j, (dx, dy) in stated:
            (_, ms), (_, mt) = world.object_masks(meta, i)[s], world.object_masks(meta, i)[j]
            centre = lambda m: torch.stack([(m * xs).sum(), (m * ys).sum()]) / m.sum()  # noqa: E731
            assert float(((centre(ms) - centre(mt)) * torch.tensor([dx, dy])).sum()) >= 7.0 + 2.0


def test_uniform_attention_centres_every_word_so_the_relation_loss_is_the_margin():
    model = _uniform_attention_model()
    metas, objects, xt, t = _scenes(tag="position")
    maps = cross_attention_maps(model, xt, t, [m["prompt"] for m in metas])
    loss, projection = relation_loss(maps, objects, [object_relations(m) for m in metas], 24, margin=0.2)
    assert projection == pytest.approx(0.0, abs=1e-6) and loss.item() == pytest.approx(0.2, rel=1e-4)


def test_descending_the_relation_loss_moves_each_subject_to_its_side():
    torch.manual_seed(0)
    model = _model()
    metas, objects, xt, t = _scenes(tag="position")
    captions, stated = [m["prompt"] for m in metas], [object_relations(m) for m in metas]
    assert {d for scene in stated for _, _, d in scene} == {(-1.0, 0.0), (1.0, 0.0), (0.0, -1.0), (0.0, 1.0)}
    t = torch.full_like(t, 0.95)  # nearly pure noise: the side must come from the caption, not the pixels
    opt = torch.optim.Adam(model.net.parameters(), lr=3e-3)
    n_tok = model.tokenizer.max_tokens
    _, before = relation_loss(cross_attention_maps(model, xt, t, captions), objects, stated, n_tok, 0.3)
    for _ in range(30):
        loss, _ = relation_loss(cross_attention_maps(model, xt, t, captions), objects, stated, n_tok, 0.3)
        opt.zero_grad()
        loss.backward()
        opt.step()
    _, after = relation_loss(cross_attention_maps(model, xt, t, captions), objects, stated, n_tok, 0.3)
    assert abs(before) < 0.02 and after > 0.1, (before, after)


def test_query_positions_start_at_zero_so_a_base_grows_them_unchanged(tmp_path):
    torch.manual_seed(0)
    base = _model()
    grown = TinyFlowModel(dataclasses.replace(base.cfg, query_positions=True), precision="fp32")
    missing, unexpected = grown.net.load_state_dict(base.net.state_dict(), strict=False)
    assert not unexpected and missing and all(".q_pos." in k for k in missing)
    metas, _, xt, t = _scenes(tag="position")
    captions = [m["prompt"] for m in metas]
    with torch.no_grad():
        maps = lambda model: torch.cat([m.flatten() for m in cross_attention_maps(model, xt, t, captions)])  # noqa: E731
        assert torch.equal(maps(base), maps(grown))
        for block in (m for m in grown.net.modules() if isinstance(m, AttnBlock)):
            block.q_pos.weight.normal_()
        assert not torch.allclose(maps(base), maps(grown), atol=1e-3)
    grown.save(tmp_path / "grown")
    assert TinyFlowModel.load(tmp_path / "grown", precision="fp32").cfg.query_positions
    with pytest.raises(VgpoError, match="query_positions:"):
        TinyConfig(backbone="dit", query_positions=True)


def test_pretraining_logs_grounding_starts_from_init_and_refuses_bad_fields(capsys, tmp_path):
    gl = ["--prompts", "all", "--text-encoder", "ordered"]
    assert main(TINY + gl + ["--steps", "2", "--out", str(tmp_path / "base")]) == 0
    init = ["--init", str(tmp_path / "base"), "--grounding-loss", "0.5"]
    assert main(TINY + gl + init + ["--steps", "1", "--lr", "1e-12", "--out", str(tmp_path / "tuned")]) == 0
    capsys.readouterr()
    rows = [json.loads(line) for line in (tmp_path / "tuned" / "log.jsonl").read_text().splitlines()]
    assert len(rows) == 1 and 0 < rows[0]["grounding"] < 1 and 0 < rows[0]["grounding_inside"] < 1
    relate = ["--init", str(tmp_path / "base"), "--relation-loss", "1", "--query-positions", "true"]
    relate += ["--grounding-loss", "0.5", "--relation-warmup-steps", "2", "--relation-batch", "4"]
    assert main(TINY + gl + relate + ["--steps", "3", "--out", str(tmp_path / "related")]) == 0
    rows = [json.loads(line) for line in (tmp_path / "related" / "log.jsonl").read_text().splitlines()]
    assert ["grounding" in r for r in rows] == [False, False, True]  # the warm-up trains the relation alone
    assert all(0 <= r["relation"] <= 1.3 and abs(r["relation_projection"]) < 1 for r in rows)
    back = ["--init", str(tmp_path / "related"), "--steps", "1", "--out", str(tmp_path / "back")]
    assert main(TINY + gl + back) == 2  # a network with query positions cannot start one without them
    assert "query positions" in capsys.readouterr().err
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
    with pytest.raises(VgpoError, match="relation_loss:.*unet"):
        PretrainConfig(**cfg, relation_loss=1.0, backbone="dit")
    with pytest.raises(VgpoError, match="relation_margin:"):
        PretrainConfig(**cfg, relation_loss=1.0, relation_margin=0.0)
    with pytest.raises(VgpoError, match="relation_warmup_steps:.*relation_loss"):
        PretrainConfig(**cfg, relation_warmup_steps=1)
    with pytest.raises(VgpoError, match="relation_warmup_steps:"):
        PretrainConfig(**cfg, relation_loss=1.0, relation_warmup_steps=2)
    with pytest.raises(VgpoError, match="relation_warmup_trains: expected one of all, attention"):
        PretrainConfig(**cfg, relation_loss=1.0, relation_warmup_steps=1, relation_warmup_trains="conv")
    with pytest.raises(VgpoError, match="relation_warmup_trains:.*relation_warmup_steps > 0"):
        PretrainConfig(**cfg, relation_loss=1.0, relation_warmup_trains="attention")
    with pytest.raises(VgpoError, match="relation_trains: expected one of all, attention"):
        PretrainConfig(**cfg, relation_loss=1.0, relation_trains="text")
    with pytest.raises(VgpoError, match="relation_trains:.*relation_loss > 0"):
        PretrainConfig(**cfg, relation_trains="attention")
    with pytest.raises(VgpoError, match="relation_decay_steps:.*relation_loss > 0"):
        PretrainConfig(**cfg, relation_decay_steps=1)
    with pytest.raises(VgpoError, match="relation_decay_steps: expected >= 0"):
        PretrainConfig(**cfg, relation_loss=1.0, relation_decay_steps=-1)
    with pytest.raises(VgpoError, match="grounding_scenes: expected one of multi, all"):
        PretrainConfig(**cfg, grounding_loss=1.0, grounding_scenes="single")
    with pytest.raises(VgpoError, match="grounding_scenes:.*grounding_loss > 0"):
        PretrainConfig(**cfg, grounding_scenes="all")
    with pytest.raises(VgpoError, match="relation_batch:"):
        PretrainConfig(**cfg, relation_loss=1.0, relation_batch=0)
    with pytest.raises(VgpoError, match="relation_loss: world 'text' has no object relations"):
        pretrain(PretrainConfig(world="text", relation_loss=1.0, steps=1, out=str(tmp_path / "text")))


def test_a_relation_run_resumed_across_its_warm_up_ends_where_a_straight_one_does(capsys, tmp_path):
    base = TINY + ["--prompts", "all", "--text-encoder", "ordered"]
    assert main(base + ["--steps", "1", "--out", str(tmp_path / "base")]) == 0
    relate = ["--init", str(tmp_path / "base"), "--query-positions", "true", "--relation-loss", "1"]
    relate += ["--relation-warmup-steps", "2", "--relation-batch", "4", "--grounding-loss", "0.5"]
    assert main(base + relate + ["--steps", "3", "--out", str(tmp_path / "full")]) == 0
    assert main(base + relate + ["--steps", "2", "--out", str(tmp_path / "part")]) == 0
    assert main(base + relate + ["--steps", "3", "--out", str(tmp_path / "part")]) == 0
    weights = [(tmp_path / run / "model.safetensors").read_bytes() for run in ("full", "part")]
    assert weights[0] == weights[1]
    other = [a if a != "1" or b != "--relation-loss" else "2" for b, a in zip([""] + relate, relate)]
    assert main(base + other + ["--steps", "4", "--out", str(tmp_path / "full")]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "resume.pt" in err and "relation_loss=1.0" in err


def test_the_grounding_loss_reads_multi_object_scenes_unless_asked_for_all():
    metas = [
        m for tag in ("colors", "two_object", "counting", "position") for m in composition_space() if m["tag"] == tag
    ]
    multi, every = grounded_scenes(metas, "multi"), grounded_scenes(metas, "all")
    assert every == list(range(len(metas)))
    assert {metas[i]["tag"] for i in multi} == {"two_object", "position"}
    assert all(len(metas[i]["include"]) == 1 for i in set(every) - set(multi))


def test_single_object_scenes_train_the_grounding_loss_only_when_asked(tmp_path):
    colors = [m for m in composition_space() if m["tag"] == "colors"]
    (tmp_path / "colors.jsonl").write_text("".join(json.dumps(m) + "\n" for m in colors))
    run = TINY + ["--prompts", str(tmp_path / "colors.jsonl"), "--text-encoder", "ordered", "--steps", "1"]
    run += ["--grounding-loss", "0.5"]
    assert main(run + ["--out", str(tmp_path / "multi")]) == 0
    assert main(run + ["--grounding-scenes", "all", "--out", str(tmp_path / "all")]) == 0
    (multi,), (every,) = (
        [json.loads(x) for x in (tmp_path / d / "log.jsonl").read_text().splitlines()] for d in ("multi", "all")
    )
    assert "grounding" not in multi  # one object a scene: nothing for the default to read
    assert 0 < every["grounding"] < 1 and 0 < every["grounding_inside"] < 1
    assert every["loss"] == multi["loss"]  # the flow loss: the same batch and network; only the auxiliary term differs
    weights = [(tmp_path / d / "model.safetensors").read_bytes() for d in ("multi", "all")]
    assert weights[0] != weights[1]


def test_the_relation_weight_holds_through_the_warm_up_then_falls_linearly_to_zero():
    cfg = PretrainConfig(prompts="all", steps=10, relation_loss=0.5, relation_warmup_steps=2, relation_decay_steps=4)
    assert [relation_weight(cfg, s) for s in range(9)] == [0.5, 0.5, 0.5, 0.375, 0.25, 0.125, 0.0, 0.0, 0.0]
    constant = dataclasses.replace(cfg, relation_decay_steps=0)
    assert [relation_weight(constant, s) for s in range(10)] == [0.5] * 10


def test_a_decayed_relation_term_is_logged_with_its_weight_and_then_is_off(tmp_path):
    base = TINY + ["--prompts", "all", "--text-encoder", "ordered"]
    assert main(base + ["--steps", "1", "--out", str(tmp_path / "base")]) == 0
    relate = ["--init", str(tmp_path / "base"), "--query-positions", "true", "--relation-loss", "1"]
    relate += ["--relation-warmup-steps", "1", "--relation-batch", "4", "--grounding-loss", "0.5"]
    decayed = relate + ["--relation-decay-steps", "2", "--steps", "4"]
    assert main(base + decayed + ["--out", str(tmp_path / "decayed")]) == 0
    rows = [json.loads(line) for line in (tmp_path / "decayed" / "log.jsonl").read_text().splitlines()]
    assert [r.get("relation_weight") for r in rows] == [1.0, 1.0, 0.5, None]
    assert "relation" not in rows[3] and "grounding" in rows[3]  # the term and its batch are gone, the rest trains
    # Until the decay begins the run is the constant-weight one, bit for bit.
    assert main(base + relate + ["--relation-decay-steps", "1000", "--steps", "2", "--out", str(tmp_path / "a")]) == 0
    assert main(base + relate + ["--steps", "2", "--out", str(tmp_path / "b")]) == 0
    weights = [(tmp_path / run / "model.safetensors").read_bytes() for run in ("a", "b")]
    assert weights[0] == weights[1]


@pytest.mark.parametrize("scope", ["attention", "attention+text"])
def test_a_scoped_warm_up_moves_only_the_query_key_path_and_its_scope(tmp_path, scope):
    base = TINY + ["--prompts", "all", "--text-encoder", "ordered"]
    assert main(base + ["--steps", "1", "--out", str(tmp_path / "base")]) == 0
    relate = ["--init", str(tmp_path / "base"), "--query-positions", "true", "--relation-loss", "1"]
    relate += ["--relation-warmup-steps", "2", "--relation-batch", "4", "--relation-warmup-trains", scope]
    assert main(base + relate + ["--steps", "2", "--out", str(tmp_path / "warm")]) == 0
    init = TinyFlowModel.load(tmp_path / "base", precision="fp32").net.state_dict()
    warm = torch.load(tmp_path / "warm" / "resume.pt", weights_only=True)["net"]  # the raw weights, not the EMA
    query_key = (".norm2.", ".q.", ".kv.", ".q_pos.")
    moved = {k for k in warm if k not in init or not torch.equal(init[k], warm[k])}
    assert all(k.startswith("attn_") and any(part in k for part in query_key) or k.startswith("text.") for k in moved)
    assert {k for k in warm if k.startswith("attn_") and (".q." in k or ".q_pos." in k)} <= moved
    assert any(k.startswith("text.") for k in moved) == (scope == "attention+text")
    assert not any(k.startswith(("conv_", "down", "up", "mid.", "time_mlp", "text_proj")) for k in moved)


def test_a_scoped_relation_term_leaves_the_rest_to_the_flow_and_grounding_losses(tmp_path):
    # No clipping: a clip would scale every weight's step by the norm, which the term changes.
    base = TINY + ["--prompts", "all", "--text-encoder", "ordered", "--grad-clip", "1e9"]
    assert main(base + ["--steps", "1", "--out", str(tmp_path / "base")]) == 0
    tune = ["--init", str(tmp_path / "base"), "--query-positions", "true", "--grounding-loss", "0.5", "--steps", "1"]
    relate = ["--relation-loss", "1", "--relation-batch", "4"]
    runs = {
        "none": tune,
        "attention": tune + relate + ["--relation-trains", "attention"],
        "all": tune + relate,
    }
    weights = {}
    for name, args in runs.items():
        assert main(base + args + ["--out", str(tmp_path / name)]) == 0
        weights[name] = torch.load(tmp_path / name / "resume.pt", weights_only=True)["net"]  # raw, not the EMA
    query_key = (".norm2.", ".q.", ".kv.", ".q_pos.")
    scoped = {k for k in weights["none"] if k.startswith("attn_") and any(part in k for part in query_key)}

    def differ(a, b):
        return {k for k in weights[a] if not torch.equal(weights[a][k], weights[b][k])}

    assert differ("attention", "none") <= scoped  # the rest took the flow and grounding losses' step alone
    assert {k for k in scoped if ".q." in k or ".q_pos." in k} <= differ("attention", "none")
    assert any(k.startswith(("conv_", "down", "mid.", "up")) for k in differ("all", "none"))


SHIPPED_WARM_UPS = [("shapes-base-relation", ("all", 300)), ("shapes-base-relation-attention", ("attention", 500))]


@pytest.mark.parametrize(("folder", "warm_up"), SHIPPED_WARM_UPS)
def test_the_shipped_relation_bases_load_with_learned_query_positions(folder, warm_up):
    root = Path(__file__).resolve().parent.parent / "checkpoints"
    model = TinyFlowModel.load(root / folder, precision="fp32")
    base = TinyFlowModel.load(root / "shapes-base-grounded", precision="fp32")
    assert model.cfg.query_positions and dataclasses.replace(model.cfg, query_positions=False) == base.cfg
    assert all(b.q_pos.weight.abs().max() > 0.01 for b in model.net.modules() if isinstance(b, AttnBlock))
    pretrained = json.loads((root / folder / "config.json").read_text())["pretrain"]
    assert (pretrained.get("relation_warmup_trains", "all"), pretrained["relation_warmup_steps"]) == warm_up
