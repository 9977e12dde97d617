import pytest
import torch

from vgpo.models.tiny import TinyConfig, TinyFlowModel
from vgpo.worlds import get_world


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory):
    """A small randomly initialised tiny model on the Shapes vocabulary, saved like `vgpo pretrain` does.
    The zero-initialised output layers are perturbed so that the policy is not the zero velocity."""
    torch.manual_seed(0)
    world = get_world("shapes")
    cfg = TinyConfig(vocab=world.vocabulary(), image_size=(16, 16), channels=(8, 16, 16), text_dim=16,
                     text_layers=1, heads=2, emb_dim=32)
    model = TinyFlowModel(cfg)
    with torch.no_grad():
        for p in model.net.parameters():
            if p.abs().sum() == 0 and p.ndim > 1:
                p.normal_(0, 0.02)
    path = tmp_path_factory.mktemp("ckpt") / "tiny"
    model.save(path)
    return path
