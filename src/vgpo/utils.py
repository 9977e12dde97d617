"""Small shared helpers: atomic writes, checked loads, seeding.

Writes go through ``os.write`` on a file descriptor, so a full disk surfaces as ``OSError(ENOSPC)``
(libraries that write files themselves report it as an unrelated message); it becomes a one-line
``VgpoError`` naming the file. Loads of files a run wrote, or that a user passed, turn a corrupt file
into a one-line error naming it; ``torch.load`` only ever unpickles tensors and plain containers.
"""

from __future__ import annotations

import errno
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save

from vgpo.errors import VgpoError

_os_write = os.write  # the one place bytes reach the disk (tests simulate a full disk here)


def disk_error(err: OSError, path: str | Path) -> VgpoError:
    """A one-line error for a failed write of ``path``."""
    if err.errno == errno.ENOSPC:
        return VgpoError(f"{path}: no space left on device")
    return VgpoError(f"{path}: cannot write ({err.strerror or err})")


class _FdWriter:
    """A minimal binary file object over a descriptor (what ``torch.save`` writes into)."""

    def __init__(self, fd: int):
        self.fd = fd

    def write(self, data: bytes) -> int:
        view = memoryview(data).cast("B")
        done = 0
        while done < len(view):
            done += _os_write(self.fd, view[done:])
        return len(view)

    def flush(self) -> None:
        pass


def _atomic(path: Path, write: Callable[[_FdWriter], None]) -> None:
    # Write next to the target, then rename: a crash never leaves a half-written file behind.
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as err:
        raise disk_error(err, path) from None
    try:
        try:
            write(_FdWriter(fd))
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except OSError as err:
        raise disk_error(err, path) from None
    except RuntimeError as err:  # torch.save wraps the writer's OSError
        cause = err.__cause__ or err.__context__
        if isinstance(cause, OSError):
            raise disk_error(cause, path) from None
        raise
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def atomic_write_bytes(data: bytes, path: str | Path) -> None:
    _atomic(Path(path), lambda f: f.write(data))


def atomic_write_text(text: str, path: str | Path) -> None:
    atomic_write_bytes(text.encode("utf-8"), path)


def atomic_save_safetensors(tensors: dict[str, torch.Tensor], path: str | Path, metadata: dict | None = None) -> None:
    tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    atomic_write_bytes(save(tensors, metadata=metadata), path)


def atomic_torch_save(obj: object, path: str | Path) -> None:
    _atomic(Path(path), lambda f: torch.save(obj, f))


def append_line(path: str | Path, line: str) -> None:
    """Append one line (a log row) to ``path``; a full disk is a one-line error naming the file."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            _FdWriter(fd).write((line + "\n").encode("utf-8"))
        finally:
            os.close(fd)
    except OSError as err:
        raise disk_error(err, path) from None


def load_safetensors(path: str | Path, device: str = "cpu") -> dict[str, torch.Tensor]:
    """``safetensors.torch.load_file`` with a one-line error naming a missing, truncated or corrupt file."""
    try:
        return load_file(str(path), device=device)
    except FileNotFoundError:
        raise VgpoError(f"{path}: file not found") from None
    except (SafetensorError, OSError, ValueError) as err:
        raise VgpoError(f"{path}: not a readable safetensors file ({_first_line(err)})") from None


def load_torch(path: str | Path) -> Any:
    """``torch.load(weights_only=True)``: tensors and plain containers only. A pickle that would build any
    other object (run code) or a corrupt file is a one-line error naming the file."""
    import pickle

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise VgpoError(f"{path}: file not found") from None
    except pickle.UnpicklingError:
        raise VgpoError(
            f"{path}: refused to load: it holds objects other than tensors and plain containers "
            "(a pickle that could run code)"
        ) from None
    except (RuntimeError, OSError, EOFError, ValueError) as err:
        raise VgpoError(f"{path}: not a readable torch file ({_first_line(err)})") from None


def load_json(path: str | Path) -> Any:
    """A JSON file a run wrote; a corrupt one is a one-line error naming it."""
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise VgpoError(f"{path}: file not found") from None
    except (ValueError, UnicodeDecodeError) as err:
        raise VgpoError(f"{path}: not valid JSON ({_first_line(err)})") from None


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return (text[0] if text else type(err).__name__)[:200]


def derive_seed(*parts: object) -> int:
    """A 63-bit seed from (seed, epoch, index, name, ...), stable across processes and runs (Python's
    ``hash`` of strings is salted per process, so it cannot be used)."""
    import hashlib

    digest = hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & (2**63 - 1)
