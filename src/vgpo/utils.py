"""Small shared helpers: atomic writes, seeding."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch
from safetensors.torch import save_file


def _atomic(path: Path, write) -> None:
    # Write next to the target, then rename: a crash never leaves a half-written file behind.
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def atomic_write_text(text: str, path: str | Path) -> None:
    _atomic(Path(path), lambda tmp: Path(tmp).write_text(text))


def atomic_save_safetensors(tensors: dict[str, torch.Tensor], path: str | Path, metadata: dict | None = None) -> None:
    tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    _atomic(Path(path), lambda tmp: save_file(tensors, tmp, metadata=metadata))


def atomic_torch_save(obj: object, path: str | Path) -> None:
    _atomic(Path(path), lambda tmp: torch.save(obj, tmp))


def derive_seed(*parts: object) -> int:
    """A 63-bit seed from (seed, epoch, index, name, ...), stable across processes and runs (Python's
    ``hash`` of strings is salted per process, so it cannot be used)."""
    import hashlib

    digest = hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & (2**63 - 1)
