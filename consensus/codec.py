"""Canonical msgpack: the only way stepchain turns values into bytes for hashing or signing.

Two nodes must produce the same bytes for the same value, so maps are written with their
keys sorted and only a small set of types is allowed. Floats are refused outright: they
have no place in state and would make hashes depend on rounding. Decoding re-encodes the
result and compares, so a value has exactly one accepted byte string.

The limits are explicit numbers, never the Python stack: a value deeper than its limit is a
``CodecError`` in both directions, checked by counting, so no input can raise RecursionError.
Encoding allows ``WRAP_DEPTH`` more levels than decoding, which is what makes "whatever a node
decoded can be wrapped and sent on" a theorem rather than a hope: a tx decoded from the
network, put in a block, in a proposal, in a gossip message, is at most a few levels deeper
than it arrived, and always encodes.
"""
from __future__ import annotations

from typing import Any

import msgpack

MAX_DECODE_BYTES = 4 * 1024 * 1024  # total input size
MAX_CONTAINER_LEN = 100_000          # items in one list or map
MAX_DECODE_DEPTH = 32                # nested lists/maps accepted from outside
WRAP_DEPTH = 32                      # levels a node may add around what it decoded
MAX_ENCODE_DEPTH = MAX_DECODE_DEPTH + WRAP_DEPTH
INT_MIN, INT_MAX = -(2**63), 2**64 - 1


class CodecError(ValueError):
    """Raised for any value or byte string that is not canonical stepchain encoding."""


def _canonical(value: Any, depth: int) -> Any:
    """Return value with every map's keys sorted; reject types that have no canonical form.

    `depth` is how many more container levels may follow; recursion is bounded by it."""
    # bool is a subclass of int, so test the exact types that are allowed.
    kind = type(value)
    if value is None or kind in (bool, str, bytes):
        return value
    if kind is int:
        if not INT_MIN <= value <= INT_MAX:
            raise CodecError(f"integer out of range: {value}")
        return value
    if kind in (list, tuple, dict) and depth <= 0:
        raise CodecError("value nested too deeply")
    if kind in (list, tuple):
        return [_canonical(v, depth - 1) for v in value]
    if kind is dict:
        keys = list(value)
        if not all(type(k) is str for k in keys) and not all(type(k) is bytes for k in keys):
            raise CodecError("map keys must be all str or all bytes")
        return {k: _canonical(value[k], depth - 1) for k in sorted(keys)}
    if kind is float:
        raise CodecError("floats are not allowed in canonical encoding")
    raise CodecError(f"type {kind.__name__} is not allowed in canonical encoding")


def depth_of(value: Any) -> int:
    """Container nesting of a value (a scalar is 0), counted without recursion."""
    deepest, stack = 0, [(value, 0)]
    while stack:
        v, d = stack.pop()
        if type(v) in (list, tuple):
            stack.extend((x, d + 1) for x in v)
            deepest = max(deepest, d + 1)
        elif type(v) is dict:
            stack.extend((x, d + 1) for x in v.values())
            deepest = max(deepest, d + 1)
    return deepest


def encode(value: Any, max_depth: int = MAX_ENCODE_DEPTH) -> bytes:
    """Canonical bytes of value."""
    return msgpack.packb(_canonical(value, max_depth), use_bin_type=True)


def decode(data: bytes, max_size: int = MAX_DECODE_BYTES, max_depth: int = MAX_DECODE_DEPTH) -> Any:
    """Parse canonical bytes; raise CodecError for anything oversized, too deep, malformed or
    non-canonical."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise CodecError("expected bytes")
    if len(data) > max_size:
        raise CodecError(f"input of {len(data)} bytes exceeds the limit of {max_size}")
    if not isinstance(data, (bytes, bytearray)):
        data = bytes(data)  # (a bytearray, a transport's decrypted frame, is read as it is: no copy)
    try:
        value = msgpack.unpackb(
            data,
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
        # TypeError: msgpack's "unhashable type" for a list or map used as a map key.
        raise CodecError(f"malformed msgpack: {exc}") from None
    if encode(value, max_depth) != data:
        raise CodecError("non-canonical encoding")
    return value
