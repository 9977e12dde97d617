"""Typed dataclass configs: YAML files, ``--field value`` flags and ``--set key=value`` overrides.

Each config field carries its help line in ``field(metadata={"help": ...})``. Loading checks every key
and type and names the offending field in a one-line ``VgpoError``; range checks live in each
config's ``__post_init__``.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from vgpo.errors import VgpoError

T = TypeVar("T")


def doc(default: Any, help: str, **kw: Any) -> Any:
    """A dataclass field with a default and a help line."""
    if isinstance(default, (list, dict, tuple)):
        return dataclasses.field(
            default_factory=lambda: typing.cast(Any, type(default))(default), metadata={"help": help}, **kw
        )
    return dataclasses.field(default=default, metadata={"help": help}, **kw)


def _coerce(name: str, annotation: Any, value: Any, where: str) -> Any:
    """Check/convert ``value`` to ``annotation``; raise a one-line error naming the field."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if annotation is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return _coerce(name, arg, value, where)
            except VgpoError as err:
                errors.append(str(err))
        raise VgpoError(errors[0] if errors else f"{where}{name}: unexpected value {value!r}")
    if origin is typing.Literal:
        if value not in args:
            raise VgpoError(f"{where}{name}: expected one of {', '.join(map(str, args))}, got {value!r}")
        return value
    if origin in (list, tuple):
        if isinstance(value, str):
            value = yaml.safe_load(value) if value.strip().startswith("[") else [v for v in value.split(",") if v]
        if not isinstance(value, (list, tuple)):
            raise VgpoError(f"{where}{name}: expected a list, got {value!r}")
        item = args[0] if args else Any
        items = [_coerce(name, item, v, where) for v in value]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if isinstance(value, str):
            value = yaml.safe_load(value)
        if not isinstance(value, dict):
            raise VgpoError(f"{where}{name}: expected a mapping, got {value!r}")
        return value
    if annotation is bool:
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
        if not isinstance(value, bool):
            raise VgpoError(f"{where}{name}: expected true or false, got {value!r}")
        return value
    if annotation in (int, float):
        if isinstance(value, str):
            try:
                value = annotation(value)
            except ValueError:
                pass
        allowed = int if annotation is int else (int, float)
        if isinstance(value, bool) or not isinstance(value, allowed):
            kind = "an integer" if annotation is int else "a number"
            raise VgpoError(f"{where}{name}: expected {kind}, got {value!r}")
        return annotation(value)
    if annotation is str:
        if not isinstance(value, str):
            raise VgpoError(f"{where}{name}: expected a string, got {value!r}")
        return value
    return value


def check_fields(cfg: Any) -> None:
    """Checks every config dataclass runs first in ``__post_init__`` (new fields are covered without a line
    of their own): every float, also inside lists and mappings, is finite (NaN compares false with every
    bound, so range checks alone let it through); a ``device`` field names a torch device."""
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        bad = _non_finite(value)
        if bad is not None:
            raise VgpoError(f"{f.name}: expected a finite number, got {bad}")
        if f.name == "device" and isinstance(value, str):
            check_device(value)


def _non_finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return value
    items = value.values() if isinstance(value, dict) else value if isinstance(value, (list, tuple)) else ()
    for item in items:
        bad = _non_finite(item)
        if bad is not None:
            return bad
    return None


def check_device(name: str) -> None:
    """A one-line error for a device torch does not know (``tpu``, ``gpu``, ``cuda:x``)."""
    import torch

    try:
        torch.device(name)
    except (RuntimeError, ValueError):
        raise VgpoError(f"device: expected a torch device such as cpu, cuda, cuda:1 or mps, got {name!r}") from None


def check_device_available(name: str) -> None:
    """A one-line error for a device this machine lacks (checked when a run starts, not when a config is
    built: a config may be written on one machine for another)."""
    import torch

    kind = torch.device(name).type
    if kind == "cuda" and not torch.cuda.is_available():
        raise VgpoError(f"device: {name!r} requested but CUDA is not available on this machine")
    if kind == "mps" and not torch.backends.mps.is_available():
        raise VgpoError(f"device: {name!r} requested but MPS is not available on this machine")


def from_dict(cls: type[T], data: dict[str, Any], where: str = "") -> T:
    """Build ``cls`` from a mapping, rejecting unknown keys and wrong types (``where`` prefixes errors,
    e.g. the YAML file's name)."""
    hints = typing.get_type_hints(cls)
    fields = {f.name for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - fields)
    if unknown:
        raise VgpoError(f"{where}{unknown[0]}: unknown config key; known keys: {', '.join(sorted(fields))}")
    kwargs = {k: _coerce(k, hints[k], v, where) for k, v in data.items()}
    return cls(**kwargs)


def load_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise VgpoError(f"{path}: config file not found")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except UnicodeDecodeError as err:
        raise VgpoError(f"{path}: not a text file (byte {err.start} is not UTF-8); expected a YAML config") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        line = f":{mark.line + 1}" if mark is not None else ""
        raise VgpoError(f"{path}{line}: invalid YAML ({getattr(err, 'problem', err)})") from None
    if not isinstance(data, dict):
        raise VgpoError(f"{path}: expected a mapping of config keys at the top level")
    base = data.pop("base", None)
    if base is not None:  # a preset extends another one (path relative to this file)
        if not isinstance(base, str):
            raise VgpoError(f"{path}: base: expected a file name, got {base!r}")
        data = {**load_yaml(path.parent / base), **data}
    return data


def parse_overrides(pairs: list[str]) -> dict[str, Any]:
    """``["lr=1e-4", "reward={a: 1}"]`` -> values parsed as YAML scalars."""
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise VgpoError(f"--set {pair!r}: expected key=value")
        out[key.strip()] = yaml.safe_load(value) if value.strip() else ""
    return out


def add_config_args(parser: argparse.ArgumentParser, cls: type) -> None:
    """``--config FILE``, ``--set key=value`` and one ``--field`` flag per config field."""
    parser.add_argument("--config", help="YAML file of config values")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config value")
    for f in dataclasses.fields(cls):
        if f.init:
            parser.add_argument(
                f"--{f.name.replace('_', '-')}",
                dest=f"cfg_{f.name}",
                default=None,
                metavar=f.name.upper(),
                help=f.metadata.get("help", ""),
            )


def config_from_args(cls: type[T], args: argparse.Namespace) -> T:
    """Defaults < YAML file < ``--field`` flags < ``--set`` overrides."""
    data: dict[str, Any] = load_yaml(args.config) if args.config else {}
    where = f"{args.config}: " if args.config else ""
    from_flags = {
        f.name: getattr(args, f"cfg_{f.name}")
        for f in dataclasses.fields(cls)
        if f.init and getattr(args, f"cfg_{f.name}", None) is not None
    }
    if from_flags or args.set:
        where = ""
    data.update(from_flags)
    data.update(parse_overrides(args.set))
    return from_dict(cls, data, where)


def to_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def same_as_written(written: Any, cfg: Any) -> bool:
    """Whether a config saved as a dict (a resume file's) describes ``cfg``.

    Files written before a field existed lack it; they were built with its default, so a missing
    field reads as the default rather than as a mismatch.
    """
    if not isinstance(written, dict):
        return False
    return {**to_dict(type(cfg)()), **written} == to_dict(cfg)
