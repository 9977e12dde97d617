"""A small convolutional autoencoder for a world's renders: the tiny model's latent space, as SD3's VAE.

Deterministic (no KL term): the world's images are flat-coloured renders that it only has to
reconstruct, and the flow model needs latents of a known scale, which the scaling and shift factors
give. The encoder downsamples by 4 (two stride-2 convolutions; ``downsample``): 32x32x3 Shapes renders
to 8x8x4 latents, the text world's 32x96x3 to 8x24x4; ``downsample=2`` drops the second stage (16x16
latents for Shapes), for objects too small for a 4x latent cell. As SD3 does, the flow model sees
``(z - shift_factor) * scaling_factor``, with both factors measured on renders after training so that
the latents it is trained on have mean 0 and standard deviation 1 (``vgpo pretrain-ae`` computes them).
A checkpoint is a folder with ``autoencoder.safetensors`` and ``config.json``.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn

from vgpo.errors import VgpoError
from vgpo.utils import atomic_save_safetensors, atomic_write_text

#: Spatial downsampling factors the encoder offers (one or two stride-2 stages).
DOWNSAMPLES = (2, 4)


@dataclass
class AutoencoderConfig:
    """Architecture and latent statistics of an autoencoder (stored in its config.json)."""

    image_size: tuple[int, int] = (32, 32)  # (H, W) of the images, multiples of downsample
    channels: tuple[int, int] = (32, 64)  # widths at full resolution and at 1/2 (and 1/4)
    latent_channels: int = 4
    downsample: int = 4  # latents are (H / downsample, W / downsample); 2 or 4
    scaling_factor: float = 1.0  # latents seen by the flow model: (z - shift_factor) * scaling_factor
    shift_factor: float = 0.0
    world: str = "shapes"

    def __post_init__(self) -> None:
        self.image_size, self.channels = tuple(self.image_size), tuple(self.channels)
        if self.downsample not in DOWNSAMPLES:
            raise VgpoError(f"downsample: expected one of {DOWNSAMPLES}, got {self.downsample}")
        ds = self.downsample
        if len(self.image_size) != 2 or any(s % ds or s < ds for s in self.image_size):
            raise VgpoError(f"image_size: expected (H, W), multiples of downsample={ds}, got {self.image_size}")
        if len(self.channels) != 2 or any(c < 8 or c % 8 for c in self.channels):
            raise VgpoError(f"channels: expected 2 widths, multiples of 8 (GroupNorm), got {self.channels}")
        if self.latent_channels < 1:
            raise VgpoError(f"latent_channels: expected >= 1, got {self.latent_channels}")
        if not self.scaling_factor > 0:
            raise VgpoError(f"scaling_factor: expected > 0, got {self.scaling_factor}")


class _Block(nn.Module):
    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.norm1, self.conv1 = nn.GroupNorm(8, cin), nn.Conv2d(cin, cout, 3, padding=1)
        self.norm2, self.conv2 = nn.GroupNorm(8, cout), nn.Conv2d(cout, cout, 3, padding=1)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        return self.skip(x) + self.conv2(F.silu(self.norm2(h)))


class _Up(nn.Module):
    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class Autoencoder(nn.Module):
    """``encode``/``decode`` work on raw latents and images in [-1, 1]; ``encode_latents`` and
    ``decode_latents`` are the flow model's view (images in [0, 1], scaled latents)."""

    def __init__(self, cfg: AutoencoderConfig):
        super().__init__()
        self.cfg = cfg
        c0, c1 = cfg.channels
        # The second stage (at 1/4) sits in the middle of each list, so a downsample-4 autoencoder keeps the
        # parameter names it had before downsample 2 existed and its checkpoints still load.
        quarter = cfg.downsample == 4
        self.encoder = nn.Sequential(
            nn.Conv2d(3, c0, 3, padding=1),
            _Block(c0, c0),
            nn.Conv2d(c0, c1, 3, stride=2, padding=1),
            _Block(c1, c1),
            *([nn.Conv2d(c1, c1, 3, stride=2, padding=1), _Block(c1, c1)] if quarter else []),
            nn.GroupNorm(8, c1),
            nn.SiLU(),
            nn.Conv2d(c1, cfg.latent_channels, 1),
        )
        self.decoder = nn.Sequential(
            nn.Conv2d(cfg.latent_channels, c1, 3, padding=1),
            _Block(c1, c1),
            *([_Up(c1, c1), _Block(c1, c1)] if quarter else []),
            _Up(c1, c0),
            _Block(c0, c0),
            nn.GroupNorm(8, c0),
            nn.SiLU(),
            nn.Conv2d(c0, 3, 3, padding=1),
        )

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        h, w = self.cfg.image_size
        return (self.cfg.latent_channels, h // self.cfg.downsample, w // self.cfg.downsample)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(z)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(x))

    def encode_latents(self, images: torch.Tensor) -> torch.Tensor:
        """Images (B, 3, H, W) in [0, 1] to the flow model's latents."""
        z = self.encode(images.float() * 2.0 - 1.0)
        return (z - self.cfg.shift_factor) * self.cfg.scaling_factor

    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """The flow model's latents to images (B, 3, H, W) float32 in [0, 1]."""
        x = self.decode(latents.float() / self.cfg.scaling_factor + self.cfg.shift_factor)
        return ((x + 1.0) / 2.0).clamp(0.0, 1.0)

    def save(self, directory: str | Path, extra: dict | None = None) -> None:
        """Write ``autoencoder.safetensors`` and ``config.json`` atomically."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        atomic_save_safetensors(self.state_dict(), directory / "autoencoder.safetensors")
        meta = {"model": "autoencoder", "arch": asdict(self.cfg), **(extra or {})}
        atomic_write_text(json.dumps(meta, indent=2) + "\n", directory / "config.json")


@torch.no_grad()
def latent_statistics(ae: Autoencoder, images: torch.Tensor) -> tuple[float, float]:
    """(scaling_factor, shift_factor) that give the raw latents of ``images`` (in [0, 1]) mean 0 and
    standard deviation 1 over all their elements, as SD3's factors are measured."""
    z = ae.encode(images.float() * 2.0 - 1.0).double()
    shift = z.mean()
    std = (z - shift).pow(2).mean().sqrt()
    if not std > 0:
        raise VgpoError("latent_statistics: the latents have zero spread; the autoencoder is degenerate")
    return float(1.0 / std), float(shift)


def load_autoencoder(
    directory: str | Path, image_size: tuple[int, int] | None = None, device: str | torch.device = "cpu"
) -> Autoencoder:
    """A frozen autoencoder from a folder written by ``vgpo pretrain-ae``; ``image_size``, when given, must
    be the one it was trained on."""
    directory = Path(directory)
    cfg_path, weights = directory / "config.json", directory / "autoencoder.safetensors"
    for path in (cfg_path, weights):
        if not path.is_file():
            raise VgpoError(
                f"latent {directory}: missing {path.name} (expected a folder written by `vgpo pretrain-ae`)"
            )
    try:
        meta = json.loads(cfg_path.read_text())
        if meta.get("model") != "autoencoder":
            raise KeyError("model")
        cfg = AutoencoderConfig(**meta["arch"])
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise VgpoError(f"{cfg_path}: not an autoencoder config ({err})") from None
    if image_size is not None and tuple(image_size) != cfg.image_size:
        raise VgpoError(
            f"latent {directory}: trained on {cfg.image_size[0]}x{cfg.image_size[1]} images, "
            f"the model draws {image_size[0]}x{image_size[1]}"
        )
    ae = Autoencoder(cfg)
    ae.load_state_dict(load_file(str(weights)))
    return ae.to(device).eval().requires_grad_(False)
