"""Datasets: npz validation, built-in generators, holdout, shards and the batch order."""
from __future__ import annotations

import io
import zipfile

import numpy as np
import pytest

from consensus.crypto import sha256
from verifier import data, generators
from verifier.data import DataError, Dataset

# sha256 of save_npz(generate(...)): the same bytes on every machine and in CI. If one of
# these changes, every node running the old code disagrees with the new one about a job's data.
GOLDEN = {
    ("blobs", (("n", 500), ("dim", 8), ("classes", 4))):
        "9791f35a5815bff5aa1ac187f443f27e3562ff555d5a2d36581922173036d09f",
    ("spirals", (("n", 500), ("classes", 3))):
        "8675f8e738fb9a562fee7c77f87238dc65e4d7b3e95e13fde941496faf95167c",
    ("digits", (("n", 200), ("side", 12), ("classes", 10))):
        "91b51710f05459e71637589ded5a0c6793d991ff0148518bce34239285938ca9",
    ("text", (("n", 200), ("context", 16))):
        "21c2a10e3eba1b6ef14198f7d1a646c919ea3fbcc3a5be43ef7e5f6bd0c1680e",
}
GOLDEN_ORDER = "97c1eac44e8b6b43edf8ff0482ed40a37853ed66c00205bfbe94e5519d7db2e1"


def npz(**arrays) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def good() -> Dataset:
    return Dataset(np.arange(20, dtype=np.float32).reshape(10, 2), np.arange(10) % 3)


# -- generators ------------------------------------------------------------------------------


@pytest.mark.parametrize("key", list(GOLDEN))
def test_generators_give_the_same_bytes_everywhere(key):
    name, args = key
    assert sha256(data.save_npz(data.generate(name, dict(args), 7))).hex() == GOLDEN[key]


def test_generators_depend_on_the_seed():
    a, b = data.generate("spirals", {"n": 100, "classes": 2}, 1), data.generate("spirals", {"n": 100, "classes": 2}, 2)
    assert not np.array_equal(a.x, b.x)


@pytest.mark.parametrize("name, args, x_shape", [
    ("blobs", {"n": 90, "dim": 5, "classes": 3}, (90, 5)),
    ("spirals", {"n": 90, "classes": 3}, (90, 2)),
    ("digits", {"n": 90, "side": 8, "classes": 10}, (90, 1, 8, 8)),
    ("text", {"n": 90, "context": 20}, (90, 20)),
])
def test_generator_shapes_and_labels(name, args, x_shape):
    ds = data.generate(name, args, 0)
    assert ds.x.shape == x_shape and ds.y.dtype == np.int64
    if name == "text":
        assert ds.y.shape == ds.x.shape and ds.x.dtype == np.int64
        assert np.array_equal(ds.x[:, 1:], ds.y[:, :-1])  # y is x shifted by one
        assert ds.x.max() < len(generators.ALPHABET)
    else:
        assert ds.x.dtype == np.float32 and np.isfinite(ds.x).all()
        assert np.bincount(ds.y).tolist() == [90 // args["classes"]] * args["classes"]  # balanced


def test_text_reads_like_the_grammar():
    ds = data.generate("text", {"n": 1, "context": 200}, 3)
    sentence = "".join(generators.ALPHABET[i] for i in ds.x[0])
    assert any(verb in sentence for verb in generators.WORDS[1])


def test_exact_sin_cos_is_accurate():
    theta = np.linspace(-40, 40, 10_001)
    sin, cos = generators._sin_cos(theta)
    assert np.abs(sin - np.sin(theta)).max() < 1e-12
    assert np.abs(cos - np.cos(theta)).max() < 1e-12


@pytest.mark.parametrize("name, args, fragment", [
    ("mnist", {}, "unknown data generator 'mnist'"),
    ("blobs", {"n": 10, "dim": 2}, "missing argument classes"),
    ("blobs", {"n": 10, "dim": 2, "classes": 2, "noise": 1}, "unknown argument 'noise'"),
    ("spirals", {"n": "10", "classes": 2}, "n must be an integer"),
    ("spirals", {"n": 10, "classes": 9}, "classes=9 is out of range"),
    ("digits", {"n": 200_000, "side": 32, "classes": 10}, "more than the cap"),
])
def test_bad_generator_arguments(name, args, fragment):
    with pytest.raises(DataError) as err:
        data.validate_generator(name, args)
    assert fragment in str(err.value) and "\n" not in str(err.value)


# -- npz blobs -------------------------------------------------------------------------------


def test_npz_round_trip_and_deterministic_bytes():
    ds = data.generate("digits", {"n": 20, "side": 8, "classes": 4}, 1)
    raw = data.save_npz(ds)
    assert raw == data.save_npz(data.load_npz(raw))
    back = data.load_npz(raw)
    assert np.array_equal(back.x, ds.x) and np.array_equal(back.y, ds.y)


def test_ordinary_numpy_npz_files_load():
    for raw in (npz(x=good().x, y=good().y), _compressed(x=good().x, y=good().y)):
        ds = data.load_npz(raw)
        assert len(ds) == 10 and ds.x.dtype == np.float32


def _compressed(**arrays) -> bytes:
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    return buf.getvalue()


@pytest.mark.parametrize("raw, fragment", [
    (npz(x=np.array([{"a": 1}] * 3, dtype=object), y=np.zeros(3)), "no objects, no pickles"),
    (npz(x=np.zeros((3, 2))), "exactly arrays x and y (found x)"),
    (npz(x=np.zeros((3, 2)), y=np.zeros(3), z=np.zeros(3)), "exactly arrays x and y"),
    (npz(x=np.zeros((3, 2)), y=np.zeros(4)), "same first dimension"),
    (npz(x=np.array([[1.0, np.nan]]), y=np.zeros(1)), "NaN or infinite"),
    (npz(x=np.array([[1.0, np.inf]]), y=np.zeros(1)), "NaN or infinite"),
    (npz(x=np.zeros((3, 2)), y=np.array(["a", "b", "c"])), "only numeric arrays"),
    (npz(x=np.zeros((3, 2), dtype=complex), y=np.zeros(3)), "only numeric arrays"),
    (npz(x=np.zeros((0, 2)), y=np.zeros(0)), "0 items"),
    (npz(x=np.float32(1.0), y=np.zeros(1)), "same first dimension"),
    (b"PK\x03\x04 this is not really a zip", "not a readable npz"),
    (b"\x93NUMPY plain npy", "not a readable npz"),
])
def test_bad_npz_is_refused(raw, fragment):
    with pytest.raises(DataError) as err:
        data.load_npz(raw)
    assert fragment in str(err.value)


def test_npz_size_limits():
    raw = npz(x=np.zeros((100, 4)), y=np.zeros(100))
    with pytest.raises(DataError, match="exceeds the limit"):
        data.load_npz(raw, max_bytes=len(raw) - 1)
    with pytest.raises(DataError, match="between 1 and 99"):
        data.load_npz(raw, max_items=99)
    bomb = _compressed(x=np.zeros((1000, 1000)), y=np.zeros(1000))  # 8 MB of zeros in ~8 kB
    assert len(bomb) < 100_000
    with pytest.raises(DataError, match="unpacks to more than"):
        data.load_npz(bomb, max_bytes=1_000_000)


def test_npz_whose_header_lies_about_its_size():
    member = io.BytesIO()
    np.lib.format.write_array(member, np.zeros(4))
    lying = member.getvalue().replace(b"(4,)", b"(9999999999,)".ljust(4))
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("x.npy", lying)
        zf.writestr("y.npy", member.getvalue())
    with pytest.raises(DataError):
        data.load_npz(buf.getvalue())


# -- fitting a model -------------------------------------------------------------------------


def test_compatible_datasets():
    data.check_compatible(data.generate("spirals", {"n": 30, "classes": 3}, 0), "mlp",
                          {"in_dim": 2, "hidden": 8, "out_dim": 3})
    digits = data.generate("digits", {"n": 30, "side": 8, "classes": 10}, 0)
    data.check_compatible(digits, "cnn", {"side": 8, "channels": 2, "out_dim": 10})
    data.check_compatible(Dataset(digits.x[:, 0], digits.y), "cnn", {"side": 8, "channels": 2, "out_dim": 10})
    data.check_compatible(data.generate("text", {"n": 5, "context": 8}, 0), "char_transformer",
                          {"vocab": 28, "context": 8, "d_model": 8, "heads": 1, "layers": 1})


@pytest.mark.parametrize("ds, model, args, fragment", [
    (good(), "mlp", {"in_dim": 3, "hidden": 4, "out_dim": 3}, "x of shape ('n', 3)"),
    (good(), "mlp", {"in_dim": 2, "hidden": 4, "out_dim": 2}, "labels in [0, 2)"),
    (Dataset(good().x, good().y.astype(np.float32)), "mlp", {"in_dim": 2, "hidden": 4, "out_dim": 3}, "integer labels"),
    (Dataset(good().x, good().y - 1), "mlp", {"in_dim": 2, "hidden": 4, "out_dim": 3}, "labels in [0, 3)"),
    (Dataset(np.full((2, 4), 30), np.zeros((2, 4), dtype=int)), "char_transformer",
     {"vocab": 28, "context": 4, "d_model": 8, "heads": 1, "layers": 1}, "token ids in [0, 28)"),
    (Dataset(np.zeros((2, 4)), np.zeros((2, 4), dtype=int)), "char_transformer",
     {"vocab": 28, "context": 4, "d_model": 8, "heads": 1, "layers": 1}, "integer token ids"),
])
def test_incompatible_datasets(ds, model, args, fragment):
    with pytest.raises(DataError) as err:
        data.check_compatible(ds, model, args)
    assert fragment in str(err.value)


# -- holdout and shards ----------------------------------------------------------------------


def test_holdout_split():
    ds = Dataset(np.arange(1000).reshape(1000, 1), np.arange(1000))
    train, hold = data.split_holdout(ds, 200_000)
    assert (len(train), len(hold)) == (800, 200)
    assert sorted(np.concatenate([train.y, hold.y]).tolist()) == list(range(1000))
    assert np.all(np.diff(train.y) > 0) and np.all(np.diff(hold.y) > 0)  # original order kept
    assert hold.y.max() > 900 and hold.y.min() < 100  # spread out, not the tail
    again, _ = data.split_holdout(ds, 200_000)
    assert np.array_equal(train.y, again.y)
    assert len(data.split_holdout(ds, 0)[1]) == 0
    with pytest.raises(DataError):
        data.split_holdout(ds, 1_000_000)


@pytest.mark.parametrize("n, shards", [(10, 1), (10, 3), (1000, 7), (5, 5)])
def test_shards_partition_the_items(n, shards):
    parts = [data.shard_indices(n, shards, s) for s in range(shards)]
    assert sorted(np.concatenate(parts).tolist()) == list(range(n))
    assert max(map(len, parts)) - min(map(len, parts)) <= 1


def test_bad_shards():
    with pytest.raises(DataError, match="cannot split 3"):
        data.shard_indices(3, 4, 0)
    with pytest.raises(DataError, match="does not exist"):
        data.shard_indices(10, 2, 2)


# -- the batch order -------------------------------------------------------------------------

JOB = bytes(range(32))


def test_batch_order_is_fixed_per_job_round_and_shard():
    order = data.batch_order(JOB, 1, 2, 50, 6, 16)
    assert order.shape == (6, 16) and order.min() >= 0 and order.max() < 50
    assert np.array_equal(order, data.batch_order(JOB, 1, 2, 50, 6, 16))
    assert sha256(order.astype("<i8").tobytes()).hex() == GOLDEN_ORDER
    for other in (data.batch_order(JOB, 1, 3, 50, 6, 16), data.batch_order(JOB, 2, 2, 50, 6, 16),
                  data.batch_order(bytes(32), 1, 2, 50, 6, 16)):
        assert not np.array_equal(order, other)


def test_batch_order_walks_epochs():
    order = data.batch_order(JOB, 0, 0, 30, 10, 9).ravel()  # 3 whole epochs of 30 items
    for epoch in range(3):
        assert sorted(order[epoch * 30:(epoch + 1) * 30].tolist()) == list(range(30))
    assert not np.array_equal(order[:30], order[30:60])


def test_any_slice_of_the_order_can_be_computed_alone():
    seed = data.order_seed(JOB, 0, 1)
    full = data.batch_rows(seed, 37, 8, 0, 50)
    for first, n in ((0, 1), (13, 7), (49, 1), (20, 30)):
        data._epoch.cache_clear()
        assert np.array_equal(data.batch_rows(seed, 37, 8, first, n), full[first:first + n])


def test_batches_larger_than_the_shard():
    order = data.batch_order(JOB, 0, 0, 3, 2, 7)
    assert order.shape == (2, 7) and set(order.ravel().tolist()) == {0, 1, 2}
