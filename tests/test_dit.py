"""The tiny model's MM-DiT backbone (models/dit.py): SD3's joint-attention block on latents or pixels.

Small random networks; what is checked has an exact answer: adaLN-Zero makes every block the identity
and the network the zero velocity at initialisation; padded prompt tokens are masked out; patches go back
where they came from; the checkpoint, LoRA and FSDP paths see the DiT as they see the U-Net."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from conftest import TINY_RUN
from vgpo.config import from_dict
from vgpo.errors import VgpoError
from vgpo.models import load_model
from vgpo.models.dit import DIT_LORA_TARGETS, JointBlock, TinyDiT, grid_positions
from vgpo.models.tiny import TinyConfig, TinyFlowModel
from vgpo.pretrain import PretrainConfig, pretrain
from vgpo.train import TrainConfig, train
from vgpo.worlds import get_world

VOCAB = get_world("shapes").vocabulary()


def dit_model(patch: int = 4, seed: int = 0, perturb: bool = True, **extra) -> TinyFlowModel:
    """A DiT on 32x32 pixels, 4x4 patches (64 tokens) unless told; ``perturb`` gives the zero-initialised
    modulation and output layers random weights, so that the network is not the zero velocity."""
    torch.manual_seed(seed)
    cfg = TinyConfig(
        vocab=VOCAB, text_dim=16, text_layers=1, heads=2, emb_dim=32, text_encoder="ordered",
        backbone="dit", dit_width=16, dit_depth=2, dit_patch=patch, **extra,
    )  # fmt: skip
    model = TinyFlowModel(cfg, precision="fp32")
    if perturb:
        with torch.no_grad():
            for name, p in model.net.named_parameters():
                if name.endswith(("ada.weight", "ada_out.weight", "patch_out.weight")):
                    p.normal_(0, 0.2)
    return model


def velocity(model: TinyFlowModel, prompts: list[str], seed: int = 1) -> torch.Tensor:
    torch.manual_seed(seed)
    x = torch.randn(len(prompts), *model.latent_shape)
    with torch.no_grad():
        return model.velocity(x, torch.full((len(prompts),), 0.6), model.encode_prompts(prompts))


def test_adaln_zero_starts_at_the_zero_velocity_with_every_block_the_identity():
    model = dit_model(perturb=False)
    assert isinstance(model.net, TinyDiT) and len(model.net.blocks) == 2
    assert torch.equal(velocity(model, ["a red circle", "two blue squares"]), torch.zeros(2, 3, 32, 32))
    img, txt = torch.randn(2, 64, 16), torch.randn(2, 5, 16)
    block = model.net.blocks[0]
    out_img, out_txt = block(img, txt, torch.randn(2, 32), torch.ones(2, 1, 1, 69, dtype=torch.bool))
    assert torch.equal(out_img, img) and torch.equal(out_txt, txt)


def test_the_last_block_updates_only_the_image_stream():
    model = dit_model()
    first, last = model.net.blocks
    assert first.prompt.update and not last.prompt.update
    assert not hasattr(last.prompt, "mlp_in") and not hasattr(last.prompt, "qkv") and hasattr(last.image, "mlp_in")
    # Every parameter takes part in the loss (no dead weights for DDP/FSDP to trip on).
    torch.manual_seed(0)
    x = torch.randn(2, 3, 32, 32)
    v = model.net(x, torch.tensor([0.3, 0.8]), model.net.text(*model.tokenize(["a red circle", "two blue squares"])))
    v.square().sum().backward()
    dead = [n for n, p in model.net.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not dead


def test_padding_is_masked_and_the_prompt_reaches_every_position():
    model = dit_model()
    cond = model.encode_prompts(["a red circle", "a red circle and a blue square"])
    x, sigma = torch.randn(2, 3, 32, 32), torch.tensor([0.5, 0.5])
    with torch.no_grad():
        v = model.velocity(x, sigma, cond)
        garbage = {**cond, "tokens": torch.where(cond["mask"][..., None], cond["tokens"], 1e3)}
        torch.testing.assert_close(model.velocity(x, sigma, garbage), v, rtol=0, atol=1e-5)
        # The empty prompt (CFG's null condition) has no valid token: it attends to its padding, as in the
        # U-Net's cross-attention, so there (only there) the padded features matter.
        null = model.negative_condition(2)
        v_null = model.velocity(x, sigma, null)
        moved = model.velocity(x, sigma, {**null, "tokens": null["tokens"] + 1.0})
        assert torch.isfinite(v_null).all() and (moved - v_null).abs().max() > 1e-4
    # Swapping which object is red changes the velocity at every latent position (joint attention in
    # every block, at full resolution), not only through the pooled vector.
    a = velocity(model, ["a photo of a red circle and a blue square"])
    b = velocity(model, ["a photo of a blue circle and a red square"])
    assert ((a - b).abs().amax(dim=(0, 1)) > 1e-6).all()
    model.net.text_proj = None  # the prompt through attention alone
    a = velocity(model, ["a photo of a red circle and a blue square"])
    b = velocity(model, ["a photo of a blue circle and a red square"])
    assert ((a - b).abs().amax(dim=(0, 1)) > 1e-6).all()


@pytest.mark.parametrize("patch", [1, 2, 4])
def test_patches_return_where_they_came_from(patch):
    # With every block the identity (gates at zero), tokens do not mix, so changing one input pixel may only
    # change the output patch that holds it.
    model = dit_model(patch=patch, image_size=(16, 24))
    with torch.no_grad():
        for block in model.net.blocks:
            block.image.ada.weight.zero_()
            block.image.ada.bias.zero_()
    x = torch.randn(1, 3, 16, 24)
    sigma = torch.tensor([0.4])
    cond = model.encode_prompts(["a red circle"])
    y = x.clone()
    y[0, 1, 9, 13] += 1.0
    with torch.no_grad():
        changed = (model.velocity(y, sigma, cond) - model.velocity(x, sigma, cond)).abs().amax(dim=(0, 1)) > 0
    expect = torch.zeros(16, 24, dtype=torch.bool)
    r, c = 9 // patch * patch, 13 // patch * patch
    expect[r : r + patch, c : c + patch] = True
    assert torch.equal(changed, expect)


def test_grid_positions_code_rows_and_columns_apart():
    pos = grid_positions(4, 6, 16)
    assert pos.shape == (24, 16)
    assert len({tuple(p.tolist()) for p in pos.round(decimals=5)}) == 24  # every position distinct
    grid = pos.view(4, 6, 16)
    assert torch.equal(grid[:, 0, :8], grid[:, 5, :8]) and torch.equal(grid[0, :, 8:], grid[3, :, 8:])


def test_config_is_validated():
    with pytest.raises(VgpoError, match="^backbone: expected one of unet, dit, got 'vit'"):
        TinyConfig(vocab=VOCAB, backbone="vit")
    with pytest.raises(VgpoError, match="^dit_width: expected an even multiple of heads=4, got 18"):
        TinyConfig(vocab=VOCAB, backbone="dit", dit_width=18)
    assert TinyConfig(vocab=VOCAB, backbone="dit", dit_width=20).dit_width == 20
    with pytest.raises(VgpoError, match="^full_res_cross_attention: a U-Net option"):
        TinyConfig(vocab=VOCAB, backbone="dit", full_res_cross_attention=True)
    with pytest.raises(VgpoError, match="^dit_patch: 3 does not divide the latent size \\(32, 32\\)"):
        TinyFlowModel(TinyConfig(vocab=VOCAB, backbone="dit", dit_width=16, dit_depth=1, dit_patch=3))


def test_checkpoint_lora_and_fsdp_units(tmp_path):
    model = dit_model()
    model.save(tmp_path / "dit")
    loaded = TinyFlowModel.load(tmp_path / "dit", precision="fp32")
    assert loaded.cfg == model.cfg
    v = velocity(model, ["two blue squares"])
    torch.testing.assert_close(velocity(loaded, ["two blue squares"]), v, rtol=0, atol=0)
    root, units, whole = loaded.fsdp_units()  # each joint block its own unit, not the ModuleList
    assert root is loaded.net and whole == [loaded.net.text]
    assert [u for u in units if isinstance(u, JointBlock)] == list(loaded.net.blocks)
    assert not any(isinstance(u, torch.nn.ModuleList) for u in units)
    pytest.importorskip("peft")
    lora = load_model("tiny", str(tmp_path / "dit"), {"lora": {"rank": 2, "alpha": 4}, "precision": "fp32"})
    adapted = {n.split(".lora_")[0].rsplit(".", 1)[-1] for n, p in lora.net.named_parameters() if p.requires_grad}
    assert adapted == set(DIT_LORA_TARGETS)
    torch.testing.assert_close(velocity(lora, ["two blue squares"]), v, rtol=0, atol=1e-6)


def test_pretraining_a_dit(tmp_path):
    cfg = PretrainConfig(
        out=str(tmp_path / "base"), steps=2, batch_size=4, warmup_steps=1, save_every=2, threads=1,
        text_encoder="ordered", backbone="dit", dit_width=16, dit_depth=1, dit_patch=4,
    )  # fmt: skip
    model = TinyFlowModel.load(pretrain(cfg))
    assert model.cfg.backbone == "dit" and model.cfg.dit_patch == 4 and isinstance(model.net, TinyDiT)
    assert torch.isfinite(velocity(model, ["a red circle"])).all()


@pytest.mark.parametrize("algorithm,rise", [("vgpo", 0.02), ("nft", 0.0)])
def test_rl_trains_a_dit_checkpoint(tmp_path, algorithm, rise):
    # The trainer sees the DiT through TinyFlowModel only: the brightness reward rises within a few epochs
    # (by 0.02 under PPO's step; DiffusionNFT's old-policy ramp moves slower at this length) and every
    # trainable weight moves, while the prompt encoder stays frozen.
    dit_model(image_size=(16, 16)).save(tmp_path / "dit")
    # float32 pinned: the rise is a few hundredths, and bf16 autocast (the default where the CPU has it) moves it
    # with the host's kernels (on an AMX Xeon bf16 missed the 0.02 by 1e-4)
    run = dict(TINY_RUN, out=str(tmp_path / "run"), checkpoint=str(tmp_path / "dit"), algorithm=algorithm)
    run.update(model_options={"precision": "fp32"})
    run.update(epochs=6, prompts_per_epoch=4, lr=3e-3, clip_range=0.5, save_every=6, ema_decay=0.0)
    out = train(from_dict(TrainConfig, run))
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    rewards = [m["reward/mean"] for m in metrics if "reward/mean" in m]
    assert sum(rewards[-2:]) / 2 > rewards[0] + rise, rewards
    trained = load_file(str(out / "checkpoint" / "trainable.safetensors"))
    base = TinyFlowModel.load(tmp_path / "dit").net.state_dict()
    assert not [k for k in trained if not k.startswith("text.") and torch.equal(trained[k], base[k])]
    assert all(torch.equal(trained[k], base[k]) for k in trained if k.startswith("text."))
