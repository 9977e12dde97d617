"""The text-context loss of pretraining (``ContextHead``, ``PretrainConfig.text_context_loss``).

Trained by the flow loss alone, the encoder's noun tokens stay near a bag of the sentence's words: a
linear probe reads the colour the prompt gives a noun from that noun's token no better than the other
object's colour (docs/learning-study.md, section 18). The auxiliary loss asks each token for the words
at fixed offsets around it, which a token can only answer by carrying its own context.
"""

from __future__ import annotations

import json
import random

import pytest
import torch

from vgpo.cli import main
from vgpo.errors import VgpoError
from vgpo.models.text_encoder import ContextHead
from vgpo.models.tiny import TinyConfig, TinyFlowModel
from vgpo.pretrain import PretrainConfig
from vgpo.worlds import get_world
from vgpo.worlds.shapes.prompts import COLORS, composition_space, scenes

TINY = ["pretrain", "--batch-size", "4", "--channels", "8,8,8", "--save-every", "1", "--threads", "1"]


def test_targets_are_the_words_at_each_offset_and_padding_outside():
    head = ContextHead(text_dim=4, vocab_size=10, window=2)
    ids = torch.tensor([[5, 6, 7, 0]])  # three words and one padding slot
    # offsets -2, -1, +1, +2 for each position
    assert head.targets(ids)[0].tolist() == [[0, 0, 6, 7], [0, 5, 7, 0], [5, 6, 0, 0], [6, 7, 0, 0]]


def test_loss_ignores_padding_and_empty_prompts():
    torch.manual_seed(0)
    head = ContextHead(text_dim=4, vocab_size=10, window=1)
    tokens = torch.randn(2, 3, 4)
    ids = torch.tensor([[5, 6, 0], [0, 0, 0]])  # the second prompt is the empty (CFG null) prompt
    mask = ids != 0
    changed = tokens.clone()
    changed[0, 2] += 100.0  # a padding position's feature
    changed[1] += 100.0  # the empty prompt's
    assert torch.equal(head.loss(tokens, ids, mask), head.loss(changed, ids, mask))
    assert head.loss(tokens, ids[1:], mask[1:]).item() == 0.0
    with pytest.raises(VgpoError, match="text_context_window"):
        ContextHead(text_dim=4, vocab_size=10, window=0)


def own_colour_probe(model: TinyFlowModel) -> tuple[float, float]:
    """Ridge probe accuracy (5 folds, held out by scene) of a noun token's own colour, and of the other
    object's colour, on the color_attr prompts."""
    feats, own, other, fold = [], [], [], []
    for g, group in enumerate(scenes("color_attr")):
        prompts = [meta["prompt"] for meta in group]
        tokens = model.encode_prompts(prompts)["tokens"].float()
        for meta, tok in zip(group, tokens):
            words = model.tokenizer.split(meta["prompt"])
            objs = meta["include"]
            for j, obj in enumerate(objs):
                i = next(i for i in range(1, len(words)) if words[i] == obj["class"] and words[i - 1] == obj["color"])
                feats.append(tok[i])
                own.append(COLORS.index(obj["color"]))
                other.append(COLORS.index(objs[1 - j]["color"]))
                fold.append(g % 5)
    x = torch.cat([torch.stack(feats), torch.ones(len(feats), 1)], 1)
    fold_t = torch.tensor(fold)

    def accuracy(labels: list[int]) -> float:
        y = torch.tensor(labels)
        right = 0
        for f in range(5):
            train, test = fold_t != f, fold_t == f
            a = x[train]
            w = torch.linalg.solve(
                a.T @ a + torch.eye(a.shape[1]), a.T @ torch.nn.functional.one_hot(y[train], 6).float()
            )
            right += int(((x[test] @ w).argmax(1) == y[test]).sum())
        return right / len(y)

    return accuracy(own), accuracy(other)


def test_context_loss_makes_a_noun_token_carry_its_own_colour():
    """Text only: an untrained ordered encoder's noun tokens tell their own colour from the other object's
    no better than chance-level structure allows; 150 steps of the context loss make the own colour
    linearly readable from every noun token."""
    torch.manual_seed(0)
    world = get_world("shapes")
    cfg = TinyConfig(
        vocab=world.vocabulary(), image_size=tuple(world.image_size), text_encoder="ordered", world="shapes"
    )
    model = TinyFlowModel(cfg)
    own_before, _ = own_colour_probe(model)
    encoder = model.net.text
    head = ContextHead(cfg.text_dim, model.tokenizer.vocab_size, window=3, generator=torch.Generator().manual_seed(0))
    opt = torch.optim.AdamW([*encoder.parameters(), *head.parameters()], lr=1e-3)
    space, rng = composition_space(), random.Random(0)
    losses = []
    for _ in range(150):
        ids, mask = model.tokenize([rng.choice(space)["prompt"] for _ in range(32)])
        loss = head.loss(encoder(ids, mask)["tokens"], ids, mask)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    own_after, _ = own_colour_probe(model)
    assert losses[-1] < 0.25 * losses[0]
    assert own_before < 0.6 and own_after > 0.95, (own_before, own_after)


def test_pretraining_logs_the_context_loss_resumes_exactly_and_refuses_another_weight(capsys, tmp_path):
    ctx = ["--prompts", "all", "--text-encoder", "ordered", "--text-context-loss", "0.1", "--text-context-window", "2"]
    assert main(TINY + ctx + ["--steps", "3", "--out", str(tmp_path / "full")]) == 0
    assert main(TINY + ctx + ["--steps", "2", "--out", str(tmp_path / "part")]) == 0
    assert main(TINY + ctx + ["--steps", "3", "--out", str(tmp_path / "part")]) == 0
    capsys.readouterr()
    full = (tmp_path / "full" / "model.safetensors").read_bytes()
    assert (tmp_path / "part" / "model.safetensors").read_bytes() == full
    rows = [json.loads(line) for line in (tmp_path / "full" / "log.jsonl").read_text().splitlines()]
    assert all(r["context_loss"] > 0 for r in rows) and len(rows) == 3
    meta = json.loads((tmp_path / "full" / "config.json").read_text())["pretrain"]
    assert meta["text_context_loss"] == 0.1 and meta["text_context_window"] == 2
    assert main(TINY + ctx[:4] + ["--steps", "4", "--out", str(tmp_path / "full")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "resume.pt" in err and "text_context_loss" in err


def test_bad_context_fields_name_the_field():
    cfg = dict(prompts="all", text_encoder="ordered", batch_size=4, channels=[8, 8, 8], steps=1, threads=1)
    with pytest.raises(VgpoError, match="text_context_loss"):
        PretrainConfig(**cfg, text_context_loss=-1.0)
    with pytest.raises(VgpoError, match="text_context_window"):
        PretrainConfig(**cfg, text_context_loss=0.1, text_context_window=0)


def test_context_loss_changes_nothing_at_weight_zero_nor_the_first_flow_loss(capsys, tmp_path):
    """At weight 0 there is no head (the window is unused). With a head, it draws its initialisation from
    a generator of its own and the batches are unchanged, so the first step's flow loss is the one without
    it (the weights then differ by the extra gradient)."""
    base = TINY + ["--prompts", "all", "--text-encoder", "ordered", "--steps", "2"]
    assert main(base + ["--out", str(tmp_path / "a")]) == 0
    assert main(base + ["--text-context-window", "5", "--out", str(tmp_path / "b")]) == 0  # window unused at 0
    capsys.readouterr()
    assert (tmp_path / "a" / "model.safetensors").read_bytes() == (tmp_path / "b" / "model.safetensors").read_bytes()
    with_ctx = TINY + ["--prompts", "all", "--text-encoder", "ordered", "--steps", "1", "--text-context-loss", "1"]
    assert main(with_ctx + ["--out", str(tmp_path / "c")]) == 0
    assert main(base[:-2] + ["--steps", "1", "--out", str(tmp_path / "d")]) == 0
    capsys.readouterr()
    first = [json.loads((tmp_path / run / "log.jsonl").read_text().splitlines()[0])["loss"] for run in "cd"]
    assert first[0] == first[1]


if __name__ == "__main__":  # the probe figures of docs/learning-study.md: python tests/test_text_context.py CKPT...
    import sys

    for path in sys.argv[1:]:
        own, other = own_colour_probe(TinyFlowModel.load(path))
        print(f"{path}: noun token -> its own colour {own:.3f}, the other object's colour {other:.3f} (chance 0.167)")
