"""Models behind one protocol (``FlowModel``); the trainer depends on nothing else."""

from vgpo.models.protocol import Condition, FlowModel, cat_conditions

__all__ = ["Condition", "FlowModel", "cat_conditions"]


def load_model(kind: str, checkpoint: str, options: dict | None = None, device: str = "cpu") -> FlowModel:
    """Build a model adapter by name: ``tiny`` (a folder written by ``vgpo pretrain``), ``sd3`` or
    ``flux`` (a diffusers folder or hub id; needs the ``real`` extra)."""
    from vgpo.errors import VgpoError

    options = dict(options or {})
    if kind == "tiny":
        from vgpo.models.dit import DIT_LORA_TARGETS
        from vgpo.models.lora import LoraOptions
        from vgpo.models.tiny import TINY_LORA_TARGETS, TinyFlowModel

        lora = options.pop("lora", None)
        precision = options.pop("precision", "auto")
        if options:
            raise VgpoError(f"model_options.{sorted(options)[0]}: unknown tiny-model option; expected: lora, precision")
        model = TinyFlowModel.load(checkpoint, device=device, precision=precision)
        if lora is not None:
            if not isinstance(lora, dict):
                raise VgpoError(f"model_options.lora: expected a map of LoRA options, got {lora!r}")
            targets = DIT_LORA_TARGETS if model.cfg.backbone == "dit" else TINY_LORA_TARGETS
            model.add_lora(LoraOptions.from_spec({"target_modules": targets, **lora}, "model_options.lora"))
        return model
    if kind in ("sd3", "flux"):
        try:
            if kind == "sd3":
                from vgpo.models.sd3 import SD3FlowModel as adapter
            else:
                from vgpo.models.flux import FluxFlowModel as adapter
        except ImportError as err:
            raise VgpoError(f"model: '{kind}' needs the real-model extra (pip install 'vgpo[real]'): {err}") from None
        return adapter.from_pretrained(checkpoint, device=device, **options)
    raise VgpoError(f"model: unknown model '{kind}'; expected tiny, sd3 or flux")
