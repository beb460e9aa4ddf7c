"""consensus.codec: canonical msgpack. One value, one byte string; everything else is a CodecError."""
from __future__ import annotations

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from consensus import codec
from consensus.codec import CodecError, decode, encode

# -- strategies ------------------------------------------------------------------------------

ints = st.integers(min_value=-(2**63), max_value=2**64 - 1)
scalars = st.none() | st.booleans() | ints | st.text(max_size=20) | st.binary(max_size=20)


def _containers(children):
    return (st.lists(children, max_size=5)
            | st.dictionaries(st.text(max_size=8), children, max_size=5)
            | st.dictionaries(st.binary(max_size=8), children, max_size=5))


values = st.recursive(scalars, _containers, max_leaves=30)


def normalize(value):
    """What a value decodes back to: tuples become lists."""
    if isinstance(value, (list, tuple)):
        return [normalize(v) for v in value]
    if isinstance(value, dict):
        return {k: normalize(v) for k, v in value.items()}
    return value


def same(a, b) -> bool:
    """Equality that also distinguishes bool from int and str from bytes at every level."""
    if type(a) is not type(b):
        return False
    if isinstance(a, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict):
        return sorted(a) == sorted(b) and all(type(k) is type(kb) for k, kb in zip(sorted(a), sorted(b))) \
            and all(same(a[k], b[k]) for k in a)
    return a == b


def nested_list(depth: int):
    v = None
    for _ in range(depth):
        v = [v]
    return v


# -- round trips ------------------------------------------------------------------------------

@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(values)
def test_round_trip_random_values(value):
    data = encode(value)
    back = decode(data)
    assert same(back, normalize(value))
    assert encode(back) == data  # canonical: re-encoding is byte-identical


@settings(max_examples=100, deadline=None)
@given(st.dictionaries(st.text(max_size=6), ints, max_size=8), st.randoms(use_true_random=False))
def test_map_keys_sorted_regardless_of_insertion_order(d, rnd):
    items = list(d.items())
    rnd.shuffle(items)
    shuffled = dict(items)
    assert encode(shuffled) == encode(d)
    decoded = decode(encode(shuffled))
    assert list(decoded) == sorted(d)


@pytest.mark.parametrize("value, expected", [
    (None, b"\xc0"),
    (True, b"\xc3"),
    (False, b"\xc2"),
    (0, b"\x00"),
    (127, b"\x7f"),
    (128, b"\xcc\x80"),
    (-1, b"\xff"),
    (-33, b"\xd0\xdf"),
    (2**64 - 1, b"\xcf" + b"\xff" * 8),
    (-(2**63), b"\xd3\x80" + b"\x00" * 7),
    ("a", b"\xa1a"),
    (b"a", b"\xc4\x01a"),
    ([], b"\x90"),
    ((1, 2), b"\x92\x01\x02"),
    ({}, b"\x80"),
    ({"b": 1, "a": 2}, b"\x82\xa1a\x02\xa1b\x01"),
    ({b"\x02": 1, b"\x01": 2}, b"\x82\xc4\x01\x01\x02\xc4\x01\x02\x01"),
])
def test_exact_encodings(value, expected):
    assert encode(value) == expected
    assert same(decode(expected), normalize(value))


def test_bool_and_int_stay_distinct():
    assert encode(True) != encode(1)
    assert decode(encode(True)) is True
    assert type(decode(encode(1))) is int


def test_str_and_bytes_stay_distinct():
    assert type(decode(encode("ab"))) is str
    assert type(decode(encode(b"ab"))) is bytes
    assert encode("ab") != encode(b"ab")


def test_decode_accepts_bytearray_and_memoryview():
    data = encode({"x": [1, b"y"]})
    assert decode(bytearray(data)) == {"x": [1, b"y"]}
    assert decode(memoryview(data)) == {"x": [1, b"y"]}


# -- encode rejections ------------------------------------------------------------------------

@pytest.mark.parametrize("value", [1.0, 0.5, float("nan"), float("inf"), [1, 2.5], {"a": {"b": [0.0]}}])
def test_encode_rejects_floats(value):
    with pytest.raises(CodecError, match="floats are not allowed"):
        encode(value)


@pytest.mark.parametrize("value, words", [
    (2**64, "integer out of range"),
    (-(2**63) - 1, "integer out of range"),
    ([2**70], "integer out of range"),
    ({"a": 1, b"b": 2}, "map keys must be all str or all bytes"),
    ({1: "x"}, "map keys must be all str or all bytes"),
    ({None: 1}, "map keys must be all str or all bytes"),
    (bytearray(b"x"), "type bytearray is not allowed"),
    ({1, 2}, "type set is not allowed"),
    (object(), "type object is not allowed"),
    (msgpack.ExtType(1, b"x"), "type ExtType is not allowed"),
])
def test_encode_rejects_non_canonical_types(value, words):
    with pytest.raises(CodecError, match=words):
        encode(value)


def test_encode_rejects_subclasses_of_allowed_types():
    class MyStr(str):
        pass

    class MyInt(int):
        pass

    with pytest.raises(CodecError, match="MyStr"):
        encode(MyStr("x"))
    with pytest.raises(CodecError, match="MyInt"):
        encode([MyInt(3)])


def test_codec_error_is_a_value_error():
    assert issubclass(CodecError, ValueError)


# -- decode rejections -------------------------------------------------------------------------

@pytest.mark.parametrize("data", [
    b"\xca\x00\x00\x00\x00",                      # float32 0.0
    b"\xcb" + b"\x00" * 8,                         # float64 0.0
    b"\x91\xcb" + b"\x3f\xf0" + b"\x00" * 6,       # [1.0]
    b"\x81\xa1a\xca\x3f\x80\x00\x00",              # {"a": 1.0}
])
def test_decode_rejects_floats(data):
    with pytest.raises(CodecError, match="floats are not allowed"):
        decode(data)


@pytest.mark.parametrize("data, what", [
    (b"\xcc\x01", "uint8 for a positive fixint"),
    (b"\xcd\x00\x01", "uint16 for a positive fixint"),
    (b"\xcf" + b"\x00" * 7 + b"\x05", "uint64 for a positive fixint"),
    (b"\xd0\xff", "int8 for a negative fixint"),
    (b"\xd1\x00\x05", "int16 for a small positive int"),
    (b"\xd9\x01a", "str8 for a fixstr"),
    (b"\xda\x00\x01a", "str16 for a fixstr"),
    (b"\xc5\x00\x01a", "bin16 for a short bin"),
    (b"\xdc\x00\x01\x01", "array16 for a fixarray"),
    (b"\xde\x00\x01\xa1a\x01", "map16 for a fixmap"),
    (b"\x82\xa1b\x01\xa1a\x02", "unsorted str map keys"),
    (b"\x82\xc4\x01\x02\x01\xc4\x01\x01\x02", "unsorted bin map keys"),
    (b"\x82\xa1a\x01\xa1a\x02", "duplicate map key"),
    (b"\x92\x82\xa1b\x01\xa1a\x02\x01", "unsorted keys inside a list"),
])
def test_decode_rejects_non_canonical_bytes(data, what):
    with pytest.raises(CodecError, match="non-canonical encoding"):
        decode(data)


def test_str_encoded_as_bin_is_not_a_str():
    """Old-style raw/bin bytes never decode to str: a str field must be written as str."""
    as_bin = msgpack.packb(b"chain", use_bin_type=True)
    assert decode(as_bin) == b"chain" and decode(as_bin) != "chain"
    assert encode("chain") != as_bin


@pytest.mark.parametrize("data", [
    b"\x81\x01\x02",        # int key
    b"\x81\xc0\x01",        # nil key
    b"\x82\xa1a\x01\xc4\x01b\x02",  # mixed str / bin keys
])
def test_decode_rejects_bad_map_keys(data):
    with pytest.raises(CodecError, match="map keys"):
        decode(data)


@pytest.mark.parametrize("data", [
    b"",                    # nothing
    b"\xc1",                # never-used byte
    b"\x92\x01",            # array missing an element
    b"\xa5abc",             # truncated str
    b"\xc4\x05ab",          # truncated bin
    b"\xcd\x01",            # truncated uint16
    b"\x81\xa1a",           # map missing its value
    b"\x01\x02",            # trailing data
    b"\xc0\xc0",            # two values
    b"\xa1\xff",            # invalid utf-8 in str
])
def test_decode_rejects_malformed_bytes(data):
    with pytest.raises(CodecError, match="malformed msgpack"):
        decode(data)


def test_decode_rejects_every_truncation_of_a_valid_encoding():
    data = encode({"a": [1, 2**40, b"xyz", "hello", None, True], "b": {"c": -(2**40)}})
    for n in range(len(data)):
        with pytest.raises(CodecError):
            decode(data[:n])


@pytest.mark.parametrize("data", [
    b"\xd4\x01\x00",                                      # fixext1
    b"\xc7\x03\x05abc",                                   # ext8
    msgpack.packb(msgpack.ExtType(5, b"abcd")),
    msgpack.packb(msgpack.Timestamp(1, 0)),              # the timestamp ext type (-1)
    b"\x91\xd4\x01\x00",                                  # ext nested in a list
])
def test_decode_rejects_ext_types(data):
    with pytest.raises(CodecError, match="malformed msgpack"):
        decode(data)


def test_decode_rejects_oversized_input():
    data = encode(b"x" * 100)
    assert decode(data, max_size=len(data)) == b"x" * 100
    with pytest.raises(CodecError, match=f"input of {len(data)} bytes exceeds the limit of {len(data) - 1}"):
        decode(data, max_size=len(data) - 1)
    big = encode(b"\x00" * (codec.MAX_DECODE_BYTES + 1))
    with pytest.raises(CodecError, match="exceeds the limit"):
        decode(big)


def test_decode_rejects_containers_over_the_length_limit():
    n = codec.MAX_CONTAINER_LEN + 1
    array = b"\xdd" + n.to_bytes(4, "big") + b"\xc0" * n
    with pytest.raises(CodecError, match="max_array_len"):
        decode(array)
    ok = codec.MAX_CONTAINER_LEN
    assert decode(b"\xdd" + ok.to_bytes(4, "big") + b"\xc0" * ok) == [None] * ok
    bogus_map = b"\xdf" + n.to_bytes(4, "big")  # claims n entries, has none
    with pytest.raises(CodecError, match="max_map_len"):
        decode(bogus_map)


@pytest.mark.parametrize("data", ["abc", None, 5, [1]])
def test_decode_rejects_non_bytes(data):
    with pytest.raises(CodecError, match="expected bytes"):
        decode(data)


def test_decode_rejects_very_deep_nesting():
    with pytest.raises(CodecError, match="malformed msgpack"):
        decode(b"\x91" * 5000 + b"\xc0")


@pytest.mark.parametrize("data", [b"\x81\x90\x01", b"\x81\x80\x01"], ids=["list-key", "map-key"])
def test_decode_rejects_unhashable_map_keys(data):
    with pytest.raises(CodecError):
        decode(data)


def expect_codec_error(fn, arg) -> None:
    """fn(arg) must raise CodecError; a RecursionError is reported without its (slow to format,
    thousands of frames deep) traceback."""
    try:
        fn(arg)
    except CodecError:
        return
    except RecursionError:
        outcome = "RecursionError"
    else:
        outcome = "no error"
    pytest.fail(f"expected CodecError, got {outcome}", pytrace=False)


def test_decode_rejects_moderately_deep_nesting_with_codec_error():
    expect_codec_error(decode, b"\x91" * 900 + b"\xc0")


def test_encode_deep_nesting_raises_codec_error():
    expect_codec_error(encode, nested_list(900))


def test_nesting_up_to_the_decode_limit_round_trips():
    v = nested_list(codec.MAX_DECODE_DEPTH)
    assert decode(encode(v)) == v


def test_decode_refuses_one_level_past_its_limit_but_encode_accepts_it():
    v = nested_list(codec.MAX_DECODE_DEPTH + 1)
    data = encode(v)
    with pytest.raises(CodecError, match="too deeply"):
        decode(data)
    assert decode(data, max_depth=codec.MAX_DECODE_DEPTH + 1) == v


def test_encode_limit_is_exact():
    encode(nested_list(codec.MAX_ENCODE_DEPTH))
    with pytest.raises(CodecError, match="too deeply"):
        encode(nested_list(codec.MAX_ENCODE_DEPTH + 1))


def test_deep_maps_count_like_lists():
    v: object = 1
    for _ in range(codec.MAX_DECODE_DEPTH + 1):
        v = {"k": v}
    with pytest.raises(CodecError):
        decode(encode(v))


@settings(max_examples=200, deadline=None)
@given(st.integers(min_value=0, max_value=codec.MAX_DECODE_DEPTH), st.integers(min_value=0, max_value=codec.WRAP_DEPTH))
def test_whatever_decodes_still_encodes_when_wrapped(depth, wrap):
    """The invariant a block builder relies on: a value accepted from the network, wrapped in up
    to WRAP_DEPTH more containers (tx in block in proposal in message), always encodes."""
    value = decode(encode(nested_list(depth)))
    for i in range(wrap):
        value = [value] if i % 2 else {"w": value}
    assert codec.depth_of(value) == depth + wrap
    encode(value)
