"""PickScore / CLIP score / aesthetic rewards on a tiny random CLIP saved to tmp_path (no download)."""

from __future__ import annotations

import pytest

pytest.importorskip("transformers")

import torch  # noqa: E402

import vgpo.rewards as rewards  # noqa: E402
from _tiny_pipelines import clip_model_and_processor, one_torch_thread  # noqa: E402, F401
from vgpo.errors import VgpoError  # noqa: E402

PROMPTS = ["a red cat", "two blue dogs", "a green cube"]


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    model, processor = clip_model_and_processor()
    path = tmp_path_factory.mktemp("clip")
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def images():
    g = torch.Generator().manual_seed(0)
    return torch.rand(3, 3, 40, 48, generator=g)  # not the CLIP size: the processor resizes and crops


def reference_logits(path, images, prompts):
    """CLIPModel.forward's logits_per_image diagonal (= logit_scale.exp() * cos), an independent path."""
    from transformers import CLIPModel, CLIPProcessor

    model = CLIPModel.from_pretrained(path).eval()
    processor = CLIPProcessor.from_pretrained(path)
    u8 = list((images * 255).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy())
    inputs = processor(text=prompts, images=u8, padding=True, return_tensors="pt")
    with torch.no_grad():
        out = model(**inputs)
    return out.logits_per_image.diagonal(), out.image_embeds, model


def test_pickscore_formula_shape_dtype_determinism(clip_dir, images):
    r = rewards.build(
        "pickscore",
        model_path=str(clip_dir),
        processor_path=str(clip_dir),
        device="cpu",
        local_files_only=True,
        batch_size=2,
    )
    s = r(images, PROMPTS, [{}] * 3)
    assert s.shape == (3,) and s.dtype == torch.float32 and s.device.type == "cpu"
    torch.testing.assert_close(r(images, PROMPTS, [{}] * 3), s)  # deterministic
    expected, _, model = reference_logits(clip_dir, images, PROMPTS)
    torch.testing.assert_close(s, expected, rtol=1e-4, atol=1e-4)
    assert not model.training and not r.model.training
    assert not any(p.requires_grad for p in r.model.parameters())
    # Flow-GRPO's scaling.
    r26 = rewards.build(
        "pickscore",
        model_path=str(clip_dir),
        processor_path=str(clip_dir),
        device="cpu",
        local_files_only=True,
        divide_by=26,
    )
    torch.testing.assert_close(r26(images, PROMPTS, [{}] * 3), expected / 26, rtol=1e-4, atol=1e-4)


def test_pickscore_prefers_the_matching_prompt(clip_dir, images):
    """Scores depend on the prompt: swapping prompts changes them."""
    r = rewards.build(
        "pickscore", model_path=str(clip_dir), processor_path=str(clip_dir), device="cpu", local_files_only=True
    )
    assert not torch.allclose(r(images, PROMPTS, [{}] * 3), r(images, PROMPTS[::-1], [{}] * 3))


def test_clipscore_weighted_in_registry(clip_dir, images):
    spec = {
        "clipscore": {
            "weight": 2.0,
            "model_path": str(clip_dir),
            "local_files_only": True,
            "device": "cpu",
            "divide_by": 30,
        }
    }
    r = rewards.build(spec)
    expected, _, _ = reference_logits(clip_dir, images, PROMPTS)
    torch.testing.assert_close(r(images, PROMPTS, [{}] * 3), 2.0 * expected / 30, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_aesthetic_head_formula(clip_dir, images, tmp_path, suffix):
    from safetensors.torch import save_file

    from vgpo.rewards.hf import AestheticMLP

    torch.manual_seed(1)
    head = AestheticMLP(16)
    path = tmp_path / f"head{suffix}"
    if suffix == ".pth":
        torch.save(head.state_dict(), path)
    else:
        save_file(head.state_dict(), str(path))
    r = rewards.build(
        "aesthetic", head_path=str(path), model_path=str(clip_dir), device="cpu", local_files_only=True, batch_size=2
    )
    s = r(images, PROMPTS, [{}] * 3)
    assert s.shape == (3,) and s.dtype == torch.float32
    _, image_embeds, _ = reference_logits(clip_dir, images, PROMPTS)  # CLIPModel normalises these
    with torch.no_grad():
        expected = head.eval()(image_embeds).squeeze(-1)
    torch.testing.assert_close(s, expected, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(r(images, PROMPTS, [{}] * 3), s)


def test_errors_are_one_line(clip_dir, tmp_path):
    with pytest.raises(VgpoError, match="pickscore.processor_path: cannot load") as err:
        rewards.build(
            "pickscore",
            model_path=str(clip_dir),
            processor_path=str(tmp_path / "missing"),
            device="cpu",
            local_files_only=True,
        )
    assert "\n" not in str(err.value)
    with pytest.raises(VgpoError, match="head_path: required"):
        rewards.build("aesthetic", model_path=str(clip_dir), device="cpu")
    with pytest.raises(VgpoError, match="no such file"):
        rewards.build("aesthetic", head_path=str(tmp_path / "nope.pth"), model_path=str(clip_dir), device="cpu")
    from vgpo.rewards.hf import AestheticMLP

    torch.save(AestheticMLP(8).state_dict(), tmp_path / "wrong.pth")
    with pytest.raises(VgpoError, match="16"):
        rewards.build(
            "aesthetic",
            head_path=str(tmp_path / "wrong.pth"),
            model_path=str(clip_dir),
            device="cpu",
            local_files_only=True,
        )
    r = rewards.build("clipscore", model_path=str(clip_dir), device="cpu", local_files_only=True)
    with pytest.raises(VgpoError, match="expected images"):
        r(torch.rand(2, 1, 8, 8), ["a", "b"], [{}, {}])
