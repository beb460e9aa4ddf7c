"""Canonical msgpack: the only way stepchain turns values into bytes for hashing or signing.

Two nodes must produce the same bytes for the same value, so maps are written with their
keys sorted and only a small set of types is allowed. Floats are refused outright: they
have no place in state and would make hashes depend on rounding. Decoding re-encodes the
result and compares, so a value has exactly one accepted byte string.
"""
from __future__ import annotations

from typing import Any

import msgpack

MAX_DECODE_BYTES = 4 * 1024 * 1024
MAX_CONTAINER_LEN = 100_000


class CodecError(ValueError):
    """Raised for any value or byte string that is not canonical stepchain encoding."""


def _canonical(value: Any) -> Any:
    """Return value with every map's keys sorted; reject types that have no canonical form."""
    # bool is a subclass of int, so test the exact types that are allowed.
    if value is None or type(value) in (bool, int, str, bytes):
        if type(value) is int and not -(2**63) <= value < 2**64:
            raise CodecError(f"integer out of range: {value}")
        return value
    if type(value) in (list, tuple):
        return [_canonical(v) for v in value]
    if type(value) is dict:
        keys = list(value)
        if not all(type(k) is str for k in keys) and not all(type(k) is bytes for k in keys):
            raise CodecError("map keys must be all str or all bytes")
        return {k: _canonical(value[k]) for k in sorted(keys)}
    if type(value) is float:
        raise CodecError("floats are not allowed in canonical encoding")
    raise CodecError(f"type {type(value).__name__} is not allowed in canonical encoding")


def encode(value: Any) -> bytes:
    """Canonical bytes of value."""
    try:
        return msgpack.packb(_canonical(value), use_bin_type=True)
    except RecursionError:
        raise CodecError("value nested too deeply") from None


def decode(data: bytes, max_size: int = MAX_DECODE_BYTES) -> Any:
    """Parse canonical bytes; raise CodecError for anything oversized, malformed or non-canonical."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise CodecError("expected bytes")
    if len(data) > max_size:
        raise CodecError(f"input of {len(data)} bytes exceeds the limit of {max_size}")
    try:
        value = msgpack.unpackb(
            bytes(data),
            raw=False,
            strict_map_key=False,
            use_list=True,
            max_str_len=max_size,
            max_bin_len=max_size,
            max_array_len=MAX_CONTAINER_LEN,
            max_map_len=MAX_CONTAINER_LEN,
            max_ext_len=0,
        )
    except (ValueError, TypeError, msgpack.exceptions.ExtraData, msgpack.exceptions.FormatError,
            msgpack.exceptions.StackError) as exc:
        raise CodecError(f"malformed msgpack: {exc}") from None
    if encode(value) != bytes(data):
        raise CodecError("non-canonical encoding")
    return value
