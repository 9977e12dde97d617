import pytest
import torch

from vgpo.models.tiny import TinyConfig, TinyFlowModel
from vgpo.worlds import get_world

# A training run small enough for a unit test: 2 prompts x 4 images, 4 steps, the brightness reward, no
# evaluation beyond 2 prompts at 2 steps. Tests add the run's length, checkpoints, EMA and algorithm.
TINY_RUN = dict(
    reward="brightness",
    prompts_per_epoch=2,
    group_size=4,
    sample_batch_size=8,
    train_batch_size=4,
    gradient_accumulation=2,
    num_steps=4,
    guidance_scale=2.0,
    lr=1e-3,
    clip_range=0.2,
    eval_every=0,
    eval_base=False,
    eval_num_steps=2,
    eval_images_per_prompt=1,
    eval_limit=2,
    threads=1,
)


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
