import pytest
import torch

from vgpo.models.tiny import TinyConfig, TinyFlowModel
from vgpo.worlds import get_world


def _random_tiny(world_name: str, image_size: tuple[int, int], path):
    torch.manual_seed(0)
    world = get_world(world_name)
    cfg = TinyConfig(
        vocab=world.vocabulary(),
        image_size=image_size,
        channels=(8, 16, 16),
        text_dim=16,
        text_layers=1,
        heads=2,
        emb_dim=32,
        world=world_name,
    )
    model = TinyFlowModel(cfg)
    with torch.no_grad():
        for p in model.net.parameters():
            if p.abs().sum() == 0 and p.ndim > 1:
                p.normal_(0, 0.02)
    model.save(path)
    return path


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory):
    """A small randomly initialised tiny model on the Shapes vocabulary, saved like `vgpo pretrain` does.
    The zero-initialised output layers are perturbed so that the policy is not the zero velocity."""
    return _random_tiny("shapes", (16, 16), tmp_path_factory.mktemp("ckpt") / "tiny")


@pytest.fixture(scope="session")
def tiny_text_checkpoint(tmp_path_factory):
    """The same on the text world's vocabulary and aspect (16x48, a third of its 32x96 canvas)."""
    return _random_tiny("text", (16, 48), tmp_path_factory.mktemp("ckpt") / "tiny-text")
