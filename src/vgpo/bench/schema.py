"""The results JSON schema (version ``vgpo-bench/1``) as a checkable spec, derived from the result
classes of ``vgpo.bench.results`` (where each field and its meaning are written once).

Spec language: a type; ``Num`` (int or float, not bool); ``Opt(spec)`` (the spec or null);
``OneOf(*literals)``; ``[spec]`` (a list of items); a dict of required keys, where a key ending in
``?`` may be absent and the key ``"*"`` gives the spec of any further key.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any, Literal

from .results import Results, hints_of


class Opt:
    def __init__(self, spec: Any):
        self.spec = spec


class OneOf:
    def __init__(self, *values: Any):
        self.values = values


class Num:
    """int or float, not bool."""


def spec_of(tp: Any) -> Any:
    """The ``vgpo.bench.schema`` spec of a type: a dataclass becomes a dict of its fields (an absent-ok
    field's key ends in ``?``), ``X | None`` Opt, a Literal OneOf, ``dict[str, X]`` ``{"*": X}``."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        (inner,) = [a for a in args if a is not type(None)]
        return Opt(spec_of(inner))
    if origin is Literal:
        return OneOf(*args)
    if origin is list:
        return [spec_of(args[0])]
    if origin is dict:
        return dict if args[1] is Any else {"*": spec_of(args[1])}
    if dataclasses.is_dataclass(tp):
        hints = hints_of(tp)
        return {
            f.name + ("?" if f.metadata.get("absent_ok") else ""): spec_of(hints[f.name])
            for f in dataclasses.fields(tp)
        }
    return Num if tp is float else tp


RESULTS = spec_of(Results)


def validate(value: Any, spec: Any = RESULTS, path: str = "$") -> list[str]:
    """Every place where ``value`` departs from ``spec`` ([] when it conforms)."""
    if isinstance(spec, Opt):
        return [] if value is None else validate(value, spec.spec, path)
    if isinstance(spec, OneOf):
        return [] if value in spec.values else [f"{path}: {value!r} not one of {spec.values}"]
    if spec is Num:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        return [] if ok else [f"{path}: expected a number, got {type(value).__name__}"]
    if isinstance(spec, list):
        if not isinstance(value, list):
            return [f"{path}: expected a list, got {type(value).__name__}"]
        return [e for i, v in enumerate(value) for e in validate(v, spec[0], f"{path}[{i}]")]
    if isinstance(spec, dict):
        if not isinstance(value, dict):
            return [f"{path}: expected an object, got {type(value).__name__}"]
        keys = {k.rstrip("?"): v for k, v in spec.items()}
        errors = [f"{path}: missing key '{k}'" for k in spec if k != "*" and not k.endswith("?") and k not in value]
        for k, v in value.items():
            if k in keys and k != "*":
                errors += validate(v, keys[k], f"{path}.{k}")
            elif "*" in spec:
                errors += validate(v, spec["*"], f"{path}.{k}")
        return errors
    if spec is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
        return [] if ok else [f"{path}: expected an integer, got {type(value).__name__}"]
    return [] if isinstance(value, spec) else [f"{path}: expected {spec.__name__}, got {type(value).__name__}"]


def field_names(spec: Any = RESULTS) -> set[str]:
    """Every named key of the spec (for the documentation check)."""
    if isinstance(spec, Opt):
        return field_names(spec.spec)
    if isinstance(spec, list):
        return field_names(spec[0])
    if isinstance(spec, dict):
        return {k.rstrip("?") for k in spec if k != "*"} | {n for v in spec.values() for n in field_names(v)}
    return set()
