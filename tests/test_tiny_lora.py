"""LoRA on the tiny model: PEFT layers, the adapter-disabled network as the reference, training and resume."""

import json

import pytest
import torch

from conftest import TINY_RUN
from vgpo.config import from_dict
from vgpo.errors import VgpoError
from vgpo.models import load_model
from vgpo.train import TrainConfig, train
from vgpo.train.trainer import load_trained_model

pytest.importorskip("peft")

LORA = {"lora": {"rank": 4, "alpha": 8}}


def _velocity(model, prompts=("a red circle", "two blue squares")):
    torch.manual_seed(1)
    x = torch.randn(len(prompts), *model.latent_shape)
    return model.velocity(x, torch.full((len(prompts),), 0.6), model.encode_prompts(list(prompts)))


def test_lora_starts_as_the_base_and_only_the_adapter_trains(tiny_checkpoint):
    base = load_model("tiny", str(tiny_checkpoint))
    model = load_model("tiny", str(tiny_checkpoint), LORA)
    params = model.trainable_parameters()
    assert params and all(".lora_" in n for n, p in model.net.named_parameters() if p.requires_grad)
    assert sum(p.numel() for p in params) < 0.5 * sum(p.numel() for p in base.trainable_parameters())
    v_base = _velocity(base).detach()
    tol = 1e-5 * float(v_base.abs().max())  # float noise scales with the velocity, whatever the kernels
    torch.testing.assert_close(_velocity(model), v_base, rtol=0, atol=tol)
    with torch.no_grad():
        for p in params:
            p.add_(0.05 * torch.randn_like(p))
    assert (_velocity(model) - v_base).abs().max() > 100 * tol
    with model.reference():  # the adapter-disabled network is the base policy
        torch.testing.assert_close(_velocity(model), v_base, rtol=0, atol=tol)
    assert all(p.requires_grad for p in params)  # re-enabled after the reference


def test_lora_state_dict_round_trip(tiny_checkpoint):
    model = load_model("tiny", str(tiny_checkpoint), LORA)
    with torch.no_grad():
        for p in model.trainable_parameters():
            p.add_(0.05 * torch.randn_like(p))
    state = model.trainable_state_dict()
    assert state and all(".lora_" in k for k in state)
    other = load_model("tiny", str(tiny_checkpoint), LORA)
    other.load_trainable_state_dict(state)
    torch.testing.assert_close(_velocity(other), _velocity(model), rtol=0, atol=0)
    with pytest.raises(VgpoError, match="different rank"):
        load_model("tiny", str(tiny_checkpoint), {"lora": {"rank": 2}}).load_trainable_state_dict(state)


def test_merged_forward_is_peft_lora(tiny_checkpoint):
    """The merged-weight layers (lora_layers.py) compute PEFT's function and gradients, share its state dict,
    and bypass the adapter as PEFT's do for the reference."""
    models = {}
    for merged in (False, True):
        torch.manual_seed(0)
        options = {"lora": {"rank": 4, "alpha": 8, "merged_forward": merged}, "precision": "fp32"}
        models[merged] = load_model("tiny", str(tiny_checkpoint), options)
    peft_path, merged = models[False], models[True]
    assert any(type(m).__name__ == "MergedConv2d" for m in merged.net.modules())
    assert any(type(m).__name__ == "MergedLinear" for m in merged.net.modules())
    with torch.no_grad():
        for p in peft_path.trainable_parameters():
            p.add_(0.05 * torch.randn_like(p))
    state = peft_path.trainable_state_dict()
    assert state.keys() == merged.trainable_state_dict().keys()
    merged.load_trainable_state_dict(state)
    v_peft, v_merged = _velocity(peft_path), _velocity(merged)
    tol = 1e-5 * float(v_peft.detach().abs().max())
    torch.testing.assert_close(v_merged, v_peft, rtol=0, atol=tol)
    base = load_model("tiny", str(tiny_checkpoint), {"precision": "fp32"})
    assert (v_peft - _velocity(base)).abs().max() > 100 * tol  # the adapter is not a no-op
    grads = []
    for model, v in ((peft_path, v_peft), (merged, v_merged)):
        (v**2).mean().backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.trainable_parameters()]))
    assert grads[0].norm() > 0
    assert (grads[1] - grads[0]).norm() < 1e-4 * grads[0].norm()
    with merged.reference():
        torch.testing.assert_close(_velocity(merged), _velocity(base), rtol=0, atol=tol)


@pytest.mark.parametrize(
    "options, field",
    [
        ({"lora": {"rnk": 4}}, "model_options.lora.rnk"),
        ({"lora": {"merged_forward": True, "dropout": 0.1}}, "model_options.lora.merged_forward"),
        ({"lora": {"merged_forward": "yes"}}, "model_options.lora.merged_forward"),
        ({"dropout": 0.1}, "model_options.dropout"),
        ({"lora": {"target_modules": ["nope"]}}, "lora.target_modules"),
    ],
)
def test_bad_tiny_options_name_the_field(tiny_checkpoint, options, field):
    with pytest.raises(VgpoError, match=field.replace(".", r"\.")):
        load_model("tiny", str(tiny_checkpoint), options)


@pytest.mark.parametrize("merged_forward", [False, True])
def test_lora_training_changes_only_the_adapter_and_resumes(tmp_path, tiny_checkpoint, merged_forward):
    lora = {"lora": dict(LORA["lora"], merged_forward=merged_forward)}
    kw = dict(
        TINY_RUN,
        checkpoint=str(tiny_checkpoint),
        model_options=lora,
        lr=1e-2,
        beta=0.04,
        eval_base=True,
        save_every=1,
        ema_decay=0.5,
    )
    full = train(from_dict(TrainConfig, dict(kw, out=str(tmp_path / "full"), epochs=2)))
    (first,) = [
        json.loads(ln) for ln in (full / "metrics.jsonl").read_text().splitlines() if json.loads(ln)["epoch"] == 1
    ]
    assert first["losses/ratio_dev_first"] < 1e-5
    model, cfg, epoch = load_trained_model(full)
    assert epoch == 2 and cfg.model_options == lora
    base = load_model("tiny", str(tiny_checkpoint))
    assert (_velocity(model) - _velocity(base)).abs().max() > 1e-5  # the adapter moved
    with model.reference():  # the frozen base did not
        torch.testing.assert_close(_velocity(model), _velocity(base), rtol=0, atol=1e-6)
    half = from_dict(TrainConfig, dict(kw, out=str(tmp_path / "half"), epochs=1))
    train(half)
    resumed = train(from_dict(TrainConfig, dict(kw, out=str(tmp_path / "half"), epochs=2)), resume=True)
    a = load_trained_model(full)[0].trainable_state_dict()
    b = load_trained_model(resumed)[0].trainable_state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_fixed_weights_merge_once_and_follow_any_change(tiny_checkpoint, monkeypatch):
    """Inside ``fixed_weights`` a merged layer merges once for its no-grad passes and gives the same bits; an
    in-place change of an adapter (an optimizer step, a weight swap) or a pass with grad merges again."""
    from vgpo.models.lora_layers import MERGED_LAYERS

    model = load_model("tiny", str(tiny_checkpoint), {"lora": {"rank": 4, "alpha": 8, "merged_forward": True}})
    params = model.trainable_parameters()
    with torch.no_grad():
        for p in params:
            p.add_(0.05 * torch.randn_like(p))
        before = _velocity(model)
    merges = []
    for cls in MERGED_LAYERS.values():
        own = cls.get_delta_weight
        monkeypatch.setattr(cls, "get_delta_weight", lambda self, a, own=own: merges.append(1) or own(self, a))
    n_layers = sum(type(m) in MERGED_LAYERS.values() for m in model.net.modules())
    with model.fixed_weights(), torch.no_grad():
        assert torch.equal(_velocity(model), before) and len(merges) == n_layers
        with model.fixed_weights():  # a nested scope keeps the outer one's merged weights
            assert torch.equal(_velocity(model), before) and len(merges) == n_layers
        assert torch.equal(_velocity(model), before) and len(merges) == n_layers
        params[-1].add_(0.1)  # in place, as an optimizer step or OldPolicy.active()'s copy_
        changed = _velocity(model)
        assert len(merges) == n_layers + 1 and not torch.equal(changed, before)
        with torch.enable_grad():
            _velocity(model).square().mean().backward()
        assert len(merges) == 2 * n_layers + 1 and all(p.grad is not None for p in params)
    with torch.no_grad():
        assert torch.equal(_velocity(model), changed)  # outside the scope: merged afresh, same bits
    assert len(merges) == 3 * n_layers + 1
    assert all(getattr(m, "_reused", None) is None for m in model.net.modules())
    plain = load_model("tiny", str(tiny_checkpoint))
    with plain.fixed_weights(), torch.no_grad():  # nothing to reuse without merged LoRA layers
        torch.testing.assert_close(_velocity(plain), _velocity(load_model("tiny", str(tiny_checkpoint))))
