"""Schemas for the small integer and string arguments of models and data generators.

Job specs come from anyone and are recorded on chain, so every argument is checked against
a schema before it is used: unknown names, missing names, wrong types and out-of-range values
are refused with one line that says which argument and what is allowed. Checked arguments
are returned normalised (defaults filled in, single ints turned into lists where a list is
allowed) so that two spellings of the same job build the same thing.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Union


@dataclass(frozen=True)
class Int:
    """An integer in [lo, hi]."""
    lo: int
    hi: int
    default: int | None = None


@dataclass(frozen=True)
class IntList:
    """A list of 1..max_len integers in [lo, hi]; a single integer means a list of one."""
    lo: int
    hi: int
    max_len: int


@dataclass(frozen=True)
class Choice:
    """One of a few strings."""
    options: tuple[str, ...]
    default: str | None = None


Arg = Union[Int, IntList, Choice]


def _is_int(value: Any) -> bool:
    # bool is an int subclass; True is not a valid layer width.
    return type(value) is int


def _check_one(what: str, name: str, value: Any, arg: Arg, error: type[ValueError]) -> Any:
    if isinstance(arg, Int):
        if not _is_int(value):
            raise error(f"{what}: argument {name} must be an integer, got {type(value).__name__}")
        if not arg.lo <= value <= arg.hi:
            raise error(f"{what}: argument {name}={value} is out of range [{arg.lo}, {arg.hi}]")
        return value
    if isinstance(arg, IntList):
        items = [value] if _is_int(value) else value
        if type(items) is not list or not items or not all(_is_int(v) for v in items):
            raise error(f"{what}: argument {name} must be an integer or a non-empty list of integers")
        if len(items) > arg.max_len:
            raise error(f"{what}: argument {name} has {len(items)} entries, at most {arg.max_len} allowed")
        for v in items:
            if not arg.lo <= v <= arg.hi:
                raise error(f"{what}: argument {name} entry {v} is out of range [{arg.lo}, {arg.hi}]")
        return list(items)
    if type(value) is not str or value not in arg.options:
        raise error(f"{what}: argument {name} must be one of {', '.join(arg.options)}")
    return value


def check_args(what: str, args: Any, schema: Mapping[str, Arg], error: type[ValueError]) -> dict:
    """Validate `args` against `schema`; return them normalised, or raise `error`."""
    if not isinstance(args, Mapping):
        raise error(f"{what}: arguments must be a map of names to values")
    unknown = sorted(set(args) - set(schema), key=str)
    if unknown:
        raise error(f"{what}: unknown argument {unknown[0]!r} (allowed: {', '.join(sorted(schema))})")
    out = {}
    for name, arg in schema.items():
        if name in args:
            out[name] = _check_one(what, name, args[name], arg, error)
        elif getattr(arg, "default", None) is not None:
            out[name] = arg.default
        else:
            raise error(f"{what}: missing argument {name}")
    return out
