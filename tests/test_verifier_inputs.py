"""verifier: what a job's inputs must be. The model registry (arguments, seeds, deterministic
initialisation), npz blobs (validation, limits, no pickles), the built-in generators, shards,
the holdout split, the batch order, and whether a data set fits a model.

The tiny models and generator arguments are in tests/tinyjobs.py.
"""
from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.tinyjobs import CNN, GEN_ARGS, JOB, MLP, TRANSFORMER
from verifier import data, models
from verifier.data import DataError, Dataset
from verifier.models import SpecError

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # see tests/conftest.py


# -- models ----------------------------------------------------------------------------------

@pytest.mark.parametrize("name, args, words", [
    ("resnet", {}, "unknown model"),
    (None, {}, "unknown model"),
    ("mlp", {"in_dim": 8, "hidden": [16]}, "missing argument out_dim"),
    ("mlp", {**MLP, "dropout": 1}, "unknown argument 'dropout'"),
    ("mlp", {**MLP, "in_dim": 0}, "out of range"),
    ("mlp", {**MLP, "in_dim": 65_537}, "out of range"),
    ("mlp", {**MLP, "hidden": [16, 0]}, "out of range"),
    ("mlp", {**MLP, "hidden": [16] * 9}, "at most 8"),
    ("mlp", {**MLP, "hidden": []}, "non-empty list"),
    ("mlp", {**MLP, "in_dim": "8"}, "must be an integer"),
    ("mlp", {**MLP, "in_dim": 8.0}, "must be an integer"),
    ("mlp", {**MLP, "in_dim": True}, "must be an integer"),
    ("mlp", {**MLP, "activation": "gelu"}, "must be one of relu, tanh"),
    ("mlp", [("in_dim", 8)], "must be a map"),
    ("cnn", {**CNN, "side": 3}, "out of range"),
    ("cnn", {**CNN, "channels": 65}, "out of range"),
    ("char_transformer", {**TRANSFORMER, "d_model": 18, "heads": 4}, "d_model must be divisible by heads"),
    ("char_transformer", {**TRANSFORMER, "heads": 17}, "out of range"),
])
def test_registry_rejects(name, args, words):
    with pytest.raises(SpecError, match=words):
        models.validate_model(name, args)
    with pytest.raises(SpecError):
        models.build_model(name, args, seed=1)


@pytest.mark.parametrize("side", [5, 6, 7, 10, 30])
def test_registry_rejects_cnn_side_not_multiple_of_4(side):
    """Two floor-ing 2x2 pools and a head sized (side//4)**2: any other side would build and run
    but silently ignore the image's last rows and columns."""
    with pytest.raises(SpecError, match="side must be a multiple of 4"):
        models.validate_model("cnn", {**CNN, "side": side})


def test_registry_normalises_arguments():
    assert models.normalise_args("mlp", {"in_dim": 2, "hidden": 5, "out_dim": 2}) == \
        {"in_dim": 2, "hidden": [5], "out_dim": 2, "activation": "relu"}
    spec = models.model_input_spec("cnn", CNN)
    assert spec.x_shapes == ((1, 8, 8), (8, 8)) and spec.x_vocab is None and spec.classes == 10


@pytest.mark.parametrize("seed", [-1, 2**63, True, 1.0, "1"])
def test_build_model_rejects_bad_seeds(seed):
    with pytest.raises(SpecError, match="seed"):
        models.build_model("mlp", MLP, seed)


@pytest.mark.parametrize("name, args", [("mlp", MLP), ("cnn", CNN), ("char_transformer", TRANSFORMER)])
def test_build_model_is_deterministic_and_leaves_global_rng_alone(name, args):
    torch.manual_seed(1234)
    rng_before = torch.get_rng_state()
    a = models.build_model(name, args, seed=5)
    b = models.build_model(name, args, seed=5)
    c = models.build_model(name, args, seed=6)
    assert torch.equal(torch.get_rng_state(), rng_before), "build_model drew from torch's global RNG"
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert list(sa) == list(sb)
    assert all(torch.equal(sa[n], sb[n]) for n in sa)
    weights = [n for n in sa if n.endswith("weight") and sa[n].abs().sum() > 0 and not torch.all(sa[n] == 1)]
    assert weights and all(not torch.equal(sa[n], sc[n]) for n in weights)
    assert all(p.dtype == torch.float32 for p in a.parameters())
    assert all(p.dtype == torch.float64 for p in models.build_model(name, args, 5, torch.float64).parameters())


def test_initial_values_do_not_shift_when_a_layer_is_added():
    one = models.initial_params("mlp", {"in_dim": 4, "hidden": [8], "out_dim": 3}, 9, torch.float32)
    two = models.initial_params("mlp", {"in_dim": 4, "hidden": [8, 8], "out_dim": 3}, 9, torch.float32)
    assert torch.equal(one["layers.0.weight"], two["layers.0.weight"])


# -- data: npz blobs -------------------------------------------------------------------------


def npz(**arrays) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


X = np.arange(40, dtype=np.float32).reshape(10, 4)
Y = np.arange(10, dtype=np.int64) % 3


def test_npz_round_trip_and_canonical_bytes():
    ds = data.load_npz(npz(x=X, y=Y))
    assert np.array_equal(ds.x, X) and np.array_equal(ds.y, Y) and len(ds) == 10
    raw = data.save_npz(ds)
    assert raw == data.save_npz(data.load_npz(raw))
    back = data.load_npz(raw)
    assert np.array_equal(back.x, X) and back.x.dtype == X.dtype


def test_npz_accepts_big_endian_and_fortran_arrays():
    ds = data.load_npz(npz(x=np.asfortranarray(X.astype(">f4")), y=Y.astype(">i8")))
    assert np.array_equal(ds.x, X) and np.array_equal(ds.y, Y)


@pytest.mark.parametrize("raw, words", [
    (npz(x=np.array([{"a": 1}] * 10, dtype=object), y=Y), "no objects, no pickles"),
    (npz(x=X, y=np.array([None] * 10, dtype=object)), "no objects, no pickles"),
    (npz(x=X), r"exactly arrays x and y \(found x\)"),
    (npz(y=Y), r"exactly arrays x and y \(found y\)"),
    (npz(x=X, y=Y, z=Y), "exactly arrays x and y"),
    (npz(), "exactly arrays x and y"),
    (npz(x=X, y=Y[:9]), "same first dimension"),
    (npz(x=np.float32(1.0), y=Y), "same first dimension"),
    (npz(x=np.where(X > 20, np.nan, X), y=Y), "NaN or infinite"),
    (npz(x=np.where(X > 20, np.inf, X), y=Y), "NaN or infinite"),
    (npz(x=np.array(["a"] * 10), y=Y), "only numeric arrays"),
    (npz(x=X.astype(np.complex64), y=Y), "only numeric arrays"),
    (npz(x=np.zeros(10, dtype="datetime64[s]"), y=Y), "only numeric arrays"),
    (npz(x=np.zeros((0, 4), np.float32), y=np.zeros(0, np.int64)), "between 1 and"),
    (b"PK\x03\x04 not really a zip", "not a readable npz"),
    (b"", "not a readable npz"),
])
def test_npz_rejects(raw, words):
    with pytest.raises(DataError, match=words):
        data.load_npz(raw)


def test_npz_pickle_payload_is_never_unpickled(tmp_path):
    class Boom:
        def __reduce__(self):
            return (Path(tmp_path / "pwned").touch, ())
    raw = npz(x=np.array([Boom()] * 10, dtype=object), y=Y)
    with pytest.raises(DataError, match="no pickles"):
        data.load_npz(raw)
    assert not (tmp_path / "pwned").exists()


def test_npz_size_limits():
    raw = npz(x=X, y=Y)
    with pytest.raises(DataError, match="exceeds the limit"):
        data.load_npz(raw, max_bytes=len(raw) - 1)
    # a small compressed archive that unpacks past the limit
    buf = io.BytesIO()
    np.savez_compressed(buf, x=np.zeros((100_000, 4), np.float32), y=np.zeros(100_000, np.int64))
    bomb = buf.getvalue()
    assert len(bomb) < 100_000
    with pytest.raises(DataError, match="unpacks to more than"):
        data.load_npz(bomb, max_bytes=200_000)
    with pytest.raises(DataError, match="between 1 and 9"):
        data.load_npz(raw, max_items=9)


def test_npz_rejects_header_that_promises_more_than_it_holds():
    member = io.BytesIO()
    np.lib.format.write_array(member, X)
    blob = member.getvalue()
    big = blob.replace(b"(10, 4)", b"(99, 4)")  # same header length, far more data promised
    assert big != blob
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("x.npy", big)
        member = io.BytesIO()
        np.lib.format.write_array(member, Y)
        zf.writestr("y.npy", member.getvalue())
    with pytest.raises(DataError, match="truncated"):
        data.load_npz(buf.getvalue())


# -- data: generators ------------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(GEN_ARGS))
def test_generators_are_deterministic_per_seed(name):
    a, b, c = (data.generate(name, GEN_ARGS[name], s) for s in (11, 11, 12))
    assert data.save_npz(a) == data.save_npz(b)
    assert not np.array_equal(a.x, c.x)
    assert len(a) == GEN_ARGS[name]["n"]
    assert a.y.dtype.kind in "iu" and a.x.dtype.kind in "fiu"
    assert np.isfinite(a.x.astype(np.float64)).all()


def test_generators_fit_their_models():
    data.check_compatible(data.generate("spirals", {"n": 30, "classes": 3}, 1), "mlp",
                          {"in_dim": 2, "hidden": [4], "out_dim": 3})
    data.check_compatible(data.generate("digits", GEN_ARGS["digits"], 1), "cnn", CNN)
    data.check_compatible(data.generate("text", GEN_ARGS["text"], 1), "char_transformer", TRANSFORMER)


@pytest.mark.parametrize("name, args, seed, words", [
    ("mnist", {}, 1, "unknown data generator"),
    (3, {}, 1, "unknown data generator"),
    ("blobs", {"n": 10, "dim": 2}, 1, "missing argument classes"),
    ("blobs", {"n": 10, "dim": 2, "classes": 2, "noise": 1}, 1, "unknown argument 'noise'"),
    ("blobs", {"n": 0, "dim": 2, "classes": 2}, 1, "out of range"),
    ("blobs", {"n": 10, "dim": 2, "classes": 101}, 1, "out of range"),
    ("spirals", {"n": 10, "classes": 7}, 1, "out of range"),
    ("digits", {"n": 10, "side": 7, "classes": 10}, 1, "out of range"),
    ("blobs", {"n": "10", "dim": 2, "classes": 2}, 1, "must be an integer"),
    ("blobs", {"n": 1_000_000, "dim": 4096, "classes": 2}, 1, "more than the cap"),
    ("blobs", {"n": 10, "dim": 2, "classes": 2}, -1, "seed"),
    ("blobs", {"n": 10, "dim": 2, "classes": 2}, 2**63, "seed"),
    ("blobs", {"n": 10, "dim": 2, "classes": 2}, True, "seed"),
])
def test_generator_errors(name, args, seed, words):
    with pytest.raises(DataError, match=words):
        data.generate(name, args, seed)


def test_validate_generator_fills_nothing_and_returns_args():
    assert data.validate_generator("text", {"n": 5, "context": 4}) == {"n": 5, "context": 4}


# -- data: shards, holdout, batch order ------------------------------------------------------


@pytest.mark.parametrize("n, shards", [(1, 1), (10, 1), (10, 3), (10, 10), (101, 7)])
def test_shard_indices_partition(n, shards):
    parts = [data.shard_indices(n, shards, s) for s in range(shards)]
    flat = np.concatenate(parts)
    assert sorted(flat.tolist()) == list(range(n))
    assert max(len(p) for p in parts) - min(len(p) for p in parts) <= 1


@pytest.mark.parametrize("n, shards, shard", [(5, 6, 0), (5, 0, 0), (5, 2, 2), (5, 2, -1)])
def test_shard_indices_errors(n, shards, shard):
    with pytest.raises(DataError):
        data.shard_indices(n, shards, shard)


def test_batch_order_is_fixed_per_job_round_shard():
    order = data.batch_order(JOB, 1, 2, 50, 30, 16)
    assert order.shape == (30, 16) and order.min() >= 0 and order.max() < 50
    assert np.array_equal(order, data.batch_order(JOB, 1, 2, 50, 30, 16))
    for other in (data.batch_order(JOB, 1, 3, 50, 30, 16), data.batch_order(JOB, 2, 2, 50, 30, 16),
                  data.batch_order(b"\x08" * 32, 1, 2, 50, 30, 16)):
        assert not np.array_equal(order, other)
    # an endless sequence of epochs, each a permutation of the shard
    flat = order.reshape(-1)
    for e in range(len(flat) // 50):
        assert sorted(flat[50 * e:50 * (e + 1)].tolist()) == list(range(50))
    assert not np.array_equal(flat[:50], flat[50:100])


@pytest.mark.parametrize("first, count", [(0, 30), (3, 5), (7, 11), (29, 1), (10, 0)])
def test_batch_rows_slice_matches_the_whole_order(first, count):
    whole = data.batch_order(JOB, 0, 0, 37, 30, 8)
    part = data.batch_rows(data.order_seed(JOB, 0, 0), 37, 8, first, count)
    assert np.array_equal(part, whole[first:first + count])


def test_split_holdout_is_deterministic_and_disjoint():
    ds = Dataset(np.arange(1000, dtype=np.float32).reshape(1000, 1), np.arange(1000) % 2)
    train, hold = data.split_holdout(ds, 200_000)
    train2, hold2 = data.split_holdout(ds, 200_000)
    assert np.array_equal(train.x, train2.x) and np.array_equal(hold.x, hold2.x)
    assert len(hold) == 200 and len(train) == 800
    t, h = set(train.x[:, 0].tolist()), set(hold.x[:, 0].tolist())
    assert not t & h and t | h == set(range(1000))
    assert np.all(np.diff(train.x[:, 0]) > 0) and np.all(np.diff(hold.x[:, 0]) > 0)  # original order kept
    assert np.array_equal(train.y, train.x[:, 0].astype(np.int64) % 2)  # rows stay paired
    assert hold.x[:, 0].max() - hold.x[:, 0].min() > 500  # not just the tail
    empty_train, empty_hold = data.split_holdout(ds, 0)
    assert len(empty_train) == 1000 and len(empty_hold) == 0
    for bad in (-1, 1_000_000, 0.2, True):
        with pytest.raises(DataError):
            data.split_holdout(ds, bad)


@pytest.mark.parametrize("model, args, x, y, words", [
    ("mlp", MLP, np.zeros((4, 7), np.float32), np.zeros(4, np.int64), "x of shape"),
    ("mlp", MLP, np.zeros((4, 8, 1), np.float32), np.zeros(4, np.int64), "x of shape"),
    ("mlp", MLP, np.zeros((4, 8), np.float32), np.zeros((4, 1), np.int64), "y of shape"),
    ("mlp", MLP, np.zeros((4, 8), np.float32), np.zeros(4, np.float32), "integer labels"),
    ("mlp", MLP, np.zeros((4, 8), np.float32), np.array([0, 1, 2, 3]), "integer labels in \\[0, 3\\)"),
    ("mlp", MLP, np.zeros((4, 8), np.float32), np.array([0, -1, 2, 0]), "integer labels"),
    ("cnn", CNN, np.zeros((4, 1, 9, 9), np.float32), np.zeros(4, np.int64), "x of shape"),
    ("cnn", CNN, np.zeros((4, 2, 8, 8), np.float32), np.zeros(4, np.int64), "x of shape"),
    ("cnn", CNN, np.zeros((4, 64), np.float32), np.zeros(4, np.int64), "x of shape"),
    ("cnn", CNN, np.zeros((4, 8, 8), np.float32), np.full(4, 10), "integer labels"),
    ("char_transformer", TRANSFORMER, np.zeros((4, 8), np.float32), np.zeros((4, 8), np.int64), "token ids"),
    ("char_transformer", TRANSFORMER, np.full((4, 8), 28), np.zeros((4, 8), np.int64), "token ids"),
    ("char_transformer", TRANSFORMER, np.full((4, 8), -1), np.zeros((4, 8), np.int64), "token ids"),
    ("char_transformer", TRANSFORMER, np.zeros((4, 9), np.int64), np.zeros((4, 9), np.int64), "x of shape"),
    ("char_transformer", TRANSFORMER, np.zeros((4, 8), np.int64), np.zeros(4, np.int64), "y of shape"),
    ("char_transformer", TRANSFORMER, np.zeros((4, 8), np.int64), np.full((4, 8), 28), "integer labels"),
])
def test_check_compatible_errors(model, args, x, y, words):
    with pytest.raises(DataError, match=words):
        data.check_compatible(Dataset(x, y), model, args)


def test_check_compatible_accepts_both_cnn_layouts():
    data.check_compatible(Dataset(np.zeros((4, 8, 8), np.float32), np.arange(4)), "cnn", CNN)
    data.check_compatible(Dataset(np.zeros((4, 1, 8, 8), np.float32), np.arange(4)), "cnn", CNN)
