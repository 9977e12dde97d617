"""Writes tests/data/shapes_base_reference.safetensors: the shipped Shapes base's prompt encodings and one
velocity, as the code before the text-encoder option computed them. Run from a checkout of that code:

    PYTHONPATH=<old checkout>/src python tests/data/make_shapes_base_reference.py
"""

from pathlib import Path

import torch
from safetensors.torch import save_file

from vgpo.models.tiny import TinyFlowModel

HERE = Path(__file__).resolve().parent
PROMPTS = ["a photo of a red circle and a blue square", "a photo of a square left of a circle", ""]

if __name__ == "__main__":
    torch.set_num_threads(1)
    model = TinyFlowModel.load(HERE.parents[1] / "checkpoints" / "shapes-base")
    cond = model.encode_prompts(PROMPTS)
    x = torch.randn((len(PROMPTS), *model.latent_shape), generator=torch.Generator().manual_seed(0))
    sigma = torch.tensor([0.9, 0.5, 0.1])
    with torch.no_grad():
        v = model.velocity(x, sigma, cond)
    save_file(
        {
            "tokens": cond["tokens"],
            "pooled": cond["pooled"],
            "mask": cond["mask"],
            "x": x,
            "sigma": sigma,
            "velocity": v,
        },
        str(HERE / "shapes_base_reference.safetensors"),
    )
