"""LoRA layers that run the merged weight: one matmul or convolution with ``W + (alpha / r)·B·A`` instead of
PEFT's ``W·x + (alpha / r)·B·(A·x)``.

The two compute the same function (with dropout 0). The merged form costs one weight-sized product per layer
per forward; PEFT's costs two extra activation-sized ones, in the forward and again in the backward. Where
activations outnumber weights, as in the tiny U-Net's convolutions (a 32x32 map per sample), the merged form
is the cheaper (docs/speed.md). Autograd keeps each layer's merged weight for the backward: one weight-sized
tensor per layer, which a multi-billion-parameter transformer may not afford, so the option is off by default.

The merge runs in float32 whatever autocast is active (the adapter is kept in float32); under bf16 autocast
the merged weight is then rounded to bf16 for the product, as full fine-tuning's float32 weights are.
``get_delta_weight`` is PEFT's own (differentiable), so gradients reach A and B through the merge.

Passes without grad while the weights stay fixed (a rollout, an evaluation, the old policy's anchors) need the
merge once, not once per forward: inside ``reusing_merged_weights`` each layer keeps the merged weight of its
first such pass and reuses it while its base and adapter tensors are the same ones at the same version (an
in-place change, as an optimizer step or a weight swap by ``copy_``, bumps the version). The reused weight is the
one the merge would compute, so outputs are bit-identical; the scope keeps one merged weight per layer alive.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F
from peft.tuners.lora.layer import Conv2d, Linear


class _MergedForward:
    """Mixin over a PEFT LoRA layer: the forward with the merged weight (PEFT's own forward wherever it
    differs from plain LoRA: adapters disabled, weights merged in place, per-sample adapters, DoRA, bias)."""

    #: (key, merged weight) inside ``reusing_merged_weights``, None outside; the key is ``_merge_key``'s
    _reused: list | None = None

    def _plain_adapters(self, kwargs: dict[str, Any]) -> list[str]:
        """The active adapters to merge; empty where PEFT's own forward must run."""
        if self.disable_adapters or self.merged or kwargs.get("adapter_names") is not None:
            return []
        active = [a for a in self.active_adapters if a in self.lora_A]
        return [] if any(a in self.lora_variant or self.lora_bias[a] for a in active) else active

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        adapters = self._plain_adapters(kwargs)
        if not adapters:
            return super().forward(x, *args, **kwargs)
        self._check_forward_args(x, *args, **kwargs)
        base = self.get_base_layer()
        return self._run_base(base, x, self._merged_weight(base, adapters, x.device.type))

    def _merge_key(self, base: torch.nn.Module, adapters: list[str]) -> tuple:
        """What the merged weight depends on: each tensor's identity and in-place version, and the scales."""
        tensors = [base.weight] + [m[a].weight for a in adapters for m in (self.lora_A, self.lora_B)]
        return (*adapters, *(self.scaling[a] for a in adapters), *((t.data_ptr(), t._version) for t in tensors))

    def _merged_weight(self, base: torch.nn.Module, adapters: list[str], device_type: str) -> torch.Tensor:
        reuse = self._reused is not None and not torch.is_grad_enabled()
        key = self._merge_key(base, adapters) if reuse else None
        if reuse and self._reused and self._reused[0] == key:
            return self._reused[1]
        weight = base.weight
        with torch.autocast(device_type, enabled=False):
            for adapter in adapters:
                weight = weight + self.get_delta_weight(adapter)
        weight = weight.to(base.weight.dtype)
        if reuse:
            self._reused[:] = [key, weight]
        return weight


class MergedLinear(_MergedForward, Linear):
    def _run_base(self, base: torch.nn.Linear, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        return F.linear(x, weight, base.bias)


class MergedConv2d(_MergedForward, Conv2d):
    def _run_base(self, base: torch.nn.Conv2d, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        return base._conv_forward(x, weight, base.bias)


@contextmanager
def reusing_merged_weights(module: torch.nn.Module) -> Iterator[None]:
    """Inside it, the merged layers of ``module`` merge once for their passes without grad (module docstring).
    Enter it where the weights stay fixed, after any weight swap; nested scopes share the outer one's weights."""
    layers = [m for m in module.modules() if isinstance(m, _MergedForward) and m._reused is None]
    for layer in layers:
        layer._reused = []
    try:
        yield
    finally:
        for layer in layers:
            layer._reused = None


#: What ``LoraOptions(merged_forward=True)`` registers with PEFT (other layer types keep PEFT's layers).
MERGED_LAYERS: dict[type[torch.nn.Module], type[torch.nn.Module]] = {
    torch.nn.Linear: MergedLinear,
    torch.nn.Conv2d: MergedConv2d,
}
