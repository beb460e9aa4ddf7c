"""verifier: the model registry, datasets and batch order, canonical checkpoints, bit-exact
determinism, the tolerance profile, replay of intervals against every cheat, and learning.

Everything here is tiny (a few dozen steps of models with a few thousand parameters), so the
whole file runs in well under a minute on two cores.
"""
from __future__ import annotations

import dataclasses
import io
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from consensus import codec, merkle
from consensus.crypto import sha256
from verifier import adversary, checkpoint, data, generators, models, replay, training
from verifier.checkpoint import CheckpointError, TrainState
from verifier.data import DataError, Dataset
from verifier.models import SpecError
from verifier.training import TrainSpec

REPO = Path(__file__).resolve().parent.parent
JOB = b"\x07" * 32


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """Every test starts on one torch thread (the tolerance profile does not pin threads, and on a
    busy machine two OpenMP threads make tiny steps erratic, up to 30x slower); tests that want
    another count set it themselves. The caller's count comes back afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# -- models ----------------------------------------------------------------------------------

MLP = {"in_dim": 8, "hidden": [16], "out_dim": 3}
CNN = {"side": 8, "channels": 2, "out_dim": 10}
TRANSFORMER = {"vocab": len(generators.ALPHABET), "context": 8, "d_model": 16, "heads": 2, "layers": 1}


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
    ("mlp", {"in_dim": 65_536, "hidden": [8192], "out_dim": 10}, "more than the cap"),
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

GEN_ARGS = {
    "blobs": {"n": 200, "dim": 4, "classes": 3},
    "spirals": {"n": 200, "classes": 3},
    "digits": {"n": 50, "side": 8, "classes": 10},
    "text": {"n": 50, "context": 8},
}


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


# -- shared tiny jobs ------------------------------------------------------------------------

# (model, args, generator, generator args): small enough that a shard trains in milliseconds
JOBS = {
    "mlp": ("mlp", {"in_dim": 4, "hidden": [16, 16], "out_dim": 3}, "blobs", {"n": 300, "dim": 4, "classes": 3}),
    "cnn": ("cnn", CNN, "digits", GEN_ARGS["digits"] | {"n": 200}),
    "char_transformer": ("char_transformer", TRANSFORMER, "text", {"n": 200, "context": 8}),
}


def tiny(kind: str, profile: str = "cpu-f32-1thread", optimizer: str = "adam", steps: int = 12,
         k: int = 3, lr_ppm: int = 10_000, batch: int = 8) -> tuple[TrainSpec, Dataset]:
    model, args, gen, gargs = JOBS[kind]
    spec = TrainSpec(model, args, optimizer, lr_ppm, batch, steps, k, profile, seed=3)
    return spec, data.generate(gen, gargs, 5)


def shard_root(kind: str, profile: str) -> tuple[list[bytes], bytes]:
    """Leaf hashes and Merkle root of shard 1 of 2, round 0, of a tiny job (also run in a subprocess)."""
    spec, ds = tiny(kind, profile)
    leaves = training.train_shard(spec, ds, JOB, 0, 1, 2, training.init_state(spec))
    hashes = [checkpoint.checkpoint_hash(leaf) for leaf in leaves]
    return hashes, merkle.root(hashes)


# -- checkpoints -----------------------------------------------------------------------------


@pytest.mark.parametrize("optimizer", ["sgd", "momentum", "adam"])
@pytest.mark.parametrize("profile", ["cpu-f32-1thread", "cpu-f64"])
def test_checkpoint_round_trip_is_byte_identical(optimizer, profile):
    spec, ds = tiny("mlp", profile, optimizer, steps=4, k=2)
    leaves = training.train_shard(spec, ds, JOB, 0, 0, 1, training.init_state(spec))
    assert len(leaves) == 3 and len(set(leaves)) == 3
    for raw in leaves:
        state = checkpoint.decode(raw)
        training.check_state(spec, state)
        assert checkpoint.encode(state) == raw
        assert all(t.dtype == spec.dtype for t in state.params.values())
    assert [checkpoint.decode(r).step for r in leaves] == [0, 2, 4]
    assert checkpoint.checkpoint_hash(leaves[0]) == sha256(leaves[0])


def _honest_ckpt() -> bytes:
    spec, _ = tiny("mlp", steps=3, k=3)
    return checkpoint.encode(training.init_state(spec))


def _edit(**changes) -> bytes:
    obj = codec.decode(_honest_ckpt())
    for key, value in changes.items():
        if value is _DROP:
            del obj[key]
        else:
            obj[key] = value(obj[key]) if callable(value) else value
    return codec.encode(obj)


_DROP = object()


def _first_param(fn):
    def edit(params):
        name = sorted(params)[0]
        params[name] = fn(params[name])
        return params
    return edit


@pytest.mark.parametrize("raw, words", [
    (b"", "not a checkpoint"),
    (b"\xff\x00garbage", "not a checkpoint"),
    (codec.encode([1, 2, 3]), "expected exactly the fields"),
    (_edit(step=_DROP), "expected exactly the fields"),
    (_edit(extra=1), "expected exactly the fields"),
    (_edit(format=2), "format 2 is not supported"),
    (_edit(step=-1), "step must be a non-negative"),
    (_edit(step="3"), "step must be a non-negative"),
    (_edit(step=True), "step must be a non-negative"),
    (_edit(rng=b"\x00" * 31), "rng must be 32 bytes"),
    (_edit(rng="x" * 32), "rng must be 32 bytes"),
    (_edit(params={}), "non-empty map"),
    (_edit(params=[1]), "non-empty map"),
    (_edit(opt=[]), "map of names to tensors"),
    (_edit(params=_first_param(lambda e: [e[0], e[1], e[2][:-1]])), "data length does not match"),
    (_edit(params=_first_param(lambda e: [e[0], e[1], e[2] + b"\x00" * 4])), "data length does not match"),
    (_edit(params=_first_param(lambda e: [e[0], [e[1][0] + 1, *e[1][1:]], e[2]])), "data length does not match"),
    (_edit(params=_first_param(lambda e: ["float16", e[1], e[2]])), "dtype must be one of"),
    (_edit(params=_first_param(lambda e: [e[0], [-1], e[2]])), "shape must be"),
    (_edit(params=_first_param(lambda e: [e[0], [1] * 9, e[2]])), "shape must be"),
    (_edit(params=_first_param(lambda e: [e[0], e[1]])), "expected \\[dtype, shape, bytes\\]"),
    (_edit(params=_first_param(lambda e: [e[0], e[1], list(e[2][:4])])), "data length does not match"),
])
def test_checkpoint_decode_rejects(raw, words):
    with pytest.raises(CheckpointError, match=words):
        checkpoint.decode(raw)


def test_checkpoint_decode_rejects_non_canonical_bytes_and_size():
    raw = _honest_ckpt()
    with pytest.raises(CheckpointError, match="not a checkpoint"):
        checkpoint.decode(raw + b"\x00")
    with pytest.raises(CheckpointError, match="not a checkpoint"):
        checkpoint.decode(raw, max_bytes=len(raw) - 1)


def test_checkpoint_decode_rejects_boolean_format():
    """True == 1 in Python: a format of msgpack `true` must not pass for format 1, or one state
    would have two accepted encodings (two different Merkle leaves)."""
    with pytest.raises(CheckpointError, match="format True is not supported"):
        checkpoint.decode(_edit(format=True))


def test_checkpoint_that_does_not_fit_the_job_is_refused():
    spec, ds = tiny("mlp", steps=3, k=3)
    other, _ = tiny("mlp", steps=3, k=3, optimizer="momentum")
    wrong_opt = checkpoint.encode(training.init_state(other))
    with pytest.raises(CheckpointError, match="optimizer"):
        training.check_state(spec, checkpoint.decode(wrong_opt))
    ok, why = replay.verify_interval(spec, ds, JOB, 0, 0, 1, wrong_opt, 0, wrong_opt, 3)
    assert not ok and "start checkpoint rejected" in why
    f64 = checkpoint.encode(training.init_state(dataclasses.replace(spec, profile="cpu-f64")))
    with pytest.raises(CheckpointError, match="float64"):
        training.check_state(spec, checkpoint.decode(f64))


# -- determinism -----------------------------------------------------------------------------

EXACT_CASES = [(kind, profile) for kind in JOBS for profile in training.EXACT_PROFILES]


@pytest.mark.parametrize("kind, profile", EXACT_CASES)
def test_same_shard_twice_gives_identical_leaves_and_root(kind, profile):
    threads = torch.get_num_threads()
    hashes, root = shard_root(kind, profile)
    hashes2, root2 = shard_root(kind, profile)
    assert hashes == hashes2 and root == root2
    assert len(hashes) == 5 and len(set(hashes)) == 5
    assert torch.get_num_threads() == threads, "an exact profile did not restore the thread count"
    # another shard of the same job trains on other data
    spec, ds = tiny(kind, profile)
    other = training.train_shard(spec, ds, JOB, 0, 0, 2, training.init_state(spec))
    assert checkpoint.checkpoint_hash(other[0]) == hashes[0]
    assert checkpoint.checkpoint_hash(other[-1]) != hashes[-1]


def test_same_roots_in_a_separate_process():
    code = (
        "import sys; sys.path.insert(0, sys.argv[1])\n"
        "from tests.test_verifier import EXACT_CASES, shard_root\n"
        "for kind, profile in EXACT_CASES:\n"
        "    print(kind, profile, shard_root(kind, profile)[1].hex())\n"
    )
    out = subprocess.run([sys.executable, "-c", code, str(REPO)], capture_output=True, text=True,
                         timeout=120, cwd="/")
    assert out.returncode == 0, out.stderr
    theirs = {tuple(line.split()[:2]): line.split()[2] for line in out.stdout.splitlines()}
    ours = {(kind, profile): shard_root(kind, profile)[1].hex() for kind, profile in EXACT_CASES}
    assert theirs == ours


def test_exact_profile_ignores_the_callers_thread_setting():
    torch.set_num_threads(2)
    a = shard_root("mlp", "cpu-f32-1thread")[1]
    torch.set_num_threads(1)
    assert shard_root("mlp", "cpu-f32-1thread")[1] == a


def test_referee_step_matches_the_training_loop():
    spec, ds = tiny("mlp", steps=3, k=3)
    leaves = training.train_shard(spec, ds, JOB, 0, 0, 1, training.init_state(spec))
    shard = ds.subset(data.shard_indices(len(ds), 1, 0))
    state = checkpoint.decode(leaves[0])
    for row in data.batch_order(JOB, 0, 0, len(shard), 3, spec.batch_size):
        state = training.train_step(state, spec, shard.x[row], shard.y[row])
    assert checkpoint.encode(state) == leaves[-1]


# -- the tolerance profile -------------------------------------------------------------------


@pytest.fixture(scope="module")
def tolerance_runs():
    """A tolerance job trained with 1 and with 2 threads (big enough matrices that threads can
    change the summation order)."""
    spec = TrainSpec("mlp", {"in_dim": 16, "hidden": [64, 64], "out_dim": 10}, "adam", 1000, 32, 30, 10,
                     "tolerance", seed=1)
    ds = data.generate("blobs", {"n": 1000, "dim": 16, "classes": 10}, 2)
    threads = torch.get_num_threads()
    runs = {}
    try:
        for n in (1, 2):
            torch.set_num_threads(n)
            runs[n] = training.train_shard(spec, ds, JOB, 0, 0, 1, training.init_state(spec))
    finally:
        torch.set_num_threads(threads)
    return spec, ds, runs


def test_tolerance_accepts_another_thread_count(tolerance_runs):
    spec, ds, runs = tolerance_runs
    one, two = runs[1], runs[2]
    assert len(one) == len(two) == 4
    for a, b in zip(one, two):
        assert replay.states_close(a, b, spec.tolerance_ppm)
        assert replay.relative_distance(checkpoint.decode(a), checkpoint.decode(b)) * 1e6 <= spec.tolerance_ppm
    # a verifier with 1 thread accepts every interval of the 2-thread solver, and vice versa
    torch.set_num_threads(1)
    for i in range(len(two) - 1):
        ok, why = replay.verify_interval(spec, ds, JOB, 0, 0, 1, two[i], i * spec.k, two[i + 1], spec.k)
        assert ok, why
    torch.set_num_threads(2)
    ok, why = replay.verify_interval(spec, ds, JOB, 0, 0, 1, one[0], 0, one[1], spec.k)
    assert ok, why


def test_tolerance_rejects_a_perturbed_checkpoint(tolerance_runs):
    spec, ds, runs = tolerance_runs
    end = checkpoint.decode(runs[1][1])
    bumped = dataclasses.replace(end, params={n: t + 1e-2 for n, t in end.params.items()})
    raw = checkpoint.encode(bumped)
    assert not replay.states_close(runs[1][1], raw, spec.tolerance_ppm)
    ok, why = replay.verify_interval(spec, ds, JOB, 0, 0, 1, runs[1][0], 0, raw, spec.k)
    assert not ok and "too far" in why
    # and a checkpoint at another step, or one that is not a checkpoint, is never close
    assert not replay.states_close(runs[1][1], runs[1][2], 10**12)
    assert not replay.states_close(runs[1][1], b"junk", 10**12)


def test_tolerance_accepts_honest_diverged_training():
    """Honest training that diverges to inf/NaN (momentum with lr_ppm=10_000_000, which TrainSpec
    accepts) must still pass its own verification in the tolerance profile, as it does (equal
    bytes) in the exact ones; a claim with the non-finite entries elsewhere must not."""
    spec = TrainSpec("mlp", {"in_dim": 8, "hidden": [64] * 6, "out_dim": 3}, "momentum", 10_000_000, 16, 5, 5,
                     "tolerance", seed=1)
    ds = data.generate("blobs", {"n": 100, "dim": 8, "classes": 3}, 7)
    leaves = training.train_shard(spec, ds, JOB, 0, 0, 1, training.init_state(spec))
    end = checkpoint.decode(leaves[-1])
    assert not all(torch.isfinite(t).all() for t in end.params.values())  # it did diverge
    ok, why = replay.verify_interval(spec, ds, JOB, 0, 0, 1, leaves[0], 0, leaves[1], spec.k)
    assert ok, why
    assert replay.relative_distance(end, end) == 0.0
    for poison in (float("nan"), float("inf")):
        first = sorted(end.params)[0]
        moved = end.params[first].clone().reshape(-1)
        finite = torch.isfinite(moved).nonzero()
        if len(finite):
            moved[finite[0]] = poison
        else:
            moved[0] = 0.0
        other = dataclasses.replace(end, params={**end.params, first: moved.reshape(end.params[first].shape)})
        assert not replay.states_close(leaves[1], checkpoint.encode(other), spec.tolerance_ppm)


def _frozen_optimizer(state: TrainState) -> dict[str, torch.Tensor]:
    """Adam state that makes every later update vanish: m = 0 and v = 1e30."""
    return {n: torch.full_like(t, 1e30) if n.startswith("v/") else torch.zeros_like(t) if n.startswith("m/") else t
            for n, t in state.opt.items()}


def test_tolerance_catches_a_forged_optimizer_state():
    spec, ds = tiny("mlp", "tolerance", steps=8, k=2)
    honest = training.train_shard(spec, ds, JOB, 0, 1, 2, training.init_state(spec))
    first = checkpoint.decode(honest[1])
    frozen = _frozen_optimizer(first)
    lazy = [honest[0]] + [checkpoint.encode(dataclasses.replace(adversary._bumped(first, i * spec.k), opt=frozen))
                          for i in range(1, 5)]
    assert failing_intervals(spec, ds, lazy) == [0, 1, 2, 3]


def test_tolerance_rejects_a_poisoned_final_optimizer_state():
    spec, ds = tiny("mlp", "tolerance", steps=8, k=2)
    honest = training.train_shard(spec, ds, JOB, 0, 1, 2, training.init_state(spec))
    final = checkpoint.decode(honest[-1])
    poisoned = {n: torch.full_like(t, float("nan")) if n.startswith("m/") else t for n, t in final.opt.items()}
    bad = checkpoint.encode(dataclasses.replace(final, opt=poisoned))
    ok, why = replay.verify_interval(spec, ds, JOB, 0, 1, 2, honest[-2], spec.steps - spec.k, bad, spec.k)
    assert not ok, why


def test_tolerance_rejects_a_claimed_end_that_does_not_fit_the_job():
    spec, ds = tiny("mlp", "tolerance", steps=8, k=2)
    honest = training.train_shard(spec, ds, JOB, 0, 1, 2, training.init_state(spec))
    final = checkpoint.decode(honest[-1])
    f64 = dataclasses.replace(final, params={n: t.double() for n, t in final.params.items()},
                              opt={n: t.double() for n, t in final.opt.items()})
    ok, why = replay.verify_interval(spec, ds, JOB, 0, 1, 2, honest[-2], spec.steps - spec.k,
                                     checkpoint.encode(f64), spec.k)
    assert not ok, why


# -- replay against cheats -------------------------------------------------------------------

CHEAT_EXPECTED = {  # which intervals of an 4-interval shard fail
    "skip-steps": [0, 1, 2, 3],
    "wrong-lr": [0, 1, 2, 3],
    "wrong-order": [0, 1, 2, 3],
    "forge-final": [3],
    # adversary.py documents stale as "every interval bad": each leaf is the start state
    # relabelled, and k real steps from any of them move the weights.
    "stale": [0, 1, 2, 3],
}
assert set(CHEAT_EXPECTED) == set(adversary.STRATEGIES) - {"withhold"}


def failing_intervals(spec: TrainSpec, ds: Dataset, leaves: list[bytes], shard: int = 1, shards: int = 2) -> list[int]:
    return [i for i in range(len(leaves) - 1)
            if not replay.verify_interval(spec, ds, JOB, 0, shard, shards, leaves[i], i * spec.k, leaves[i + 1],
                                          spec.k)[0]]


@pytest.mark.parametrize("profile", ["cpu-f32-1thread", "tolerance"])
def test_verify_interval_accepts_every_honest_interval(profile):
    for kind in JOBS:
        spec, ds = tiny(kind, profile, steps=8, k=2)
        leaves = training.train_shard(spec, ds, JOB, 0, 1, 2, training.init_state(spec))
        assert failing_intervals(spec, ds, leaves) == [], kind
        withheld = adversary.cheat("withhold", spec, ds, JOB, 0, 1, 2, training.init_state(spec))
        assert withheld == leaves


@pytest.mark.parametrize("profile", ["cpu-f32-1thread", "tolerance"])
@pytest.mark.parametrize("strategy", sorted(CHEAT_EXPECTED))
def test_verify_interval_catches_each_cheat(strategy, profile):
    spec, ds = tiny("mlp", profile, steps=8, k=2)
    start = training.init_state(spec)
    leaves = adversary.cheat(strategy, spec, ds, JOB, 0, 1, 2, start)
    assert len(leaves) == 5 and checkpoint.decode(leaves[-1]).step == spec.steps
    assert failing_intervals(spec, ds, leaves) == CHEAT_EXPECTED[strategy]


def test_verify_interval_answers_rather_than_raises():
    spec, ds = tiny("mlp", steps=4, k=2)
    leaves = training.train_shard(spec, ds, JOB, 0, 0, 1, training.init_state(spec))
    for start, step, end, why in [(b"junk", 0, leaves[1], "start checkpoint rejected"),
                                  (leaves[0], 2, leaves[1], "start checkpoint is at step 0"),
                                  (leaves[0], 0, b"junk", "malformed"),
                                  (leaves[1], 2, leaves[1], "hash differs"),
                                  (leaves[2], 4, leaves[2], "outside the round")]:
        ok, msg = replay.verify_interval(spec, ds, JOB, 0, 0, 1, start, step, end, spec.k)
        assert not ok and why in msg, msg


def test_forced_error_corrupts_exactly_one_interval():
    spec, ds = tiny("mlp", steps=8, k=2)
    honest = training.train_shard(spec, ds, JOB, 0, 1, 2, training.init_state(spec))
    for index in (0, 2, 3):
        bad = adversary.corrupt_interval(honest, index, spec, ds, JOB, 0, 1, 2)
        assert len(bad) == len(honest) and bad[:index + 1] == honest[:index + 1]
        assert failing_intervals(spec, ds, bad) == [index]


def test_round_start_check():
    spec, ds = tiny("mlp", steps=4, k=2)
    start = replay.expected_round_start(spec, [])
    assert replay.verify_round_start(spec, [], start)
    finals = [training.train_shard(spec, ds, JOB, 0, s, 2, checkpoint.decode(start))[-1] for s in range(2)]
    avg = checkpoint.encode(training.average_states([checkpoint.decode(f) for f in finals]))
    assert replay.verify_round_start(spec, finals, avg)
    assert not replay.verify_round_start(spec, finals, start)  # round 1 does not restart from round 0
    assert not replay.verify_round_start(spec, finals, finals[0])
    assert not replay.verify_round_start(spec, [b"junk"], avg)


# -- learning --------------------------------------------------------------------------------


def train_rounds(spec: TrainSpec, train: Dataset, hold: Dataset, rounds: int, shards: int) -> list[int]:
    """Held-out accuracy (ppm) at the start of each round and after the last."""
    state = training.init_state(spec)
    accs = [training.evaluate(spec, state, hold)]
    for r in range(rounds):
        finals = [checkpoint.decode(training.train_shard(spec, train, JOB, r, s, shards, state)[-1])
                  for s in range(shards)]
        state = training.average_states(finals)
        assert state.step == 0
        accs.append(training.evaluate(spec, state, hold))
    return accs


def test_mlp_learns_spirals():
    ds = data.generate("spirals", {"n": 2000, "classes": 3}, 7)
    train, hold = data.split_holdout(ds, 200_000)
    spec = TrainSpec("mlp", {"in_dim": 2, "hidden": [64, 64], "out_dim": 3}, "adam", 20_000, 64, 150, 50,
                     "cpu-f32-1thread", seed=1)
    accs = train_rounds(spec, train, hold, rounds=2, shards=2)
    assert accs[0] < 500_000
    assert accs[-1] > 800_000, accs


def test_cnn_learns_digits():
    ds = data.generate("digits", {"n": 1000, "side": 8, "classes": 10}, 7)
    train, hold = data.split_holdout(ds, 200_000)
    spec = TrainSpec("cnn", {"side": 8, "channels": 4, "out_dim": 10}, "adam", 10_000, 32, 60, 20,
                     "cpu-f32-1thread", seed=1)
    accs = train_rounds(spec, train, hold, rounds=2, shards=2)
    assert accs[-1] > accs[0] + 300_000 and accs[-1] > 500_000, accs


def test_char_transformer_learns_text():
    ds = data.generate("text", {"n": 1000, "context": 16}, 7)
    train, hold = data.split_holdout(ds, 200_000)
    spec = TrainSpec("char_transformer", {"vocab": 28, "context": 16, "d_model": 32, "heads": 2, "layers": 1},
                     "adam", 10_000, 16, 60, 20, "cpu-f32-1thread", seed=1)
    accs = train_rounds(spec, train, hold, rounds=2, shards=2)
    assert accs[-1] > accs[0] + 250_000 and accs[-1] > accs[1], accs


def test_average_states_is_the_mean_in_shard_order():
    spec, ds = tiny("mlp", profile="cpu-f64", steps=2, k=2)
    finals = [checkpoint.decode(training.train_shard(spec, ds, JOB, 0, s, 3, training.init_state(spec))[-1])
              for s in range(3)]
    avg = training.average_states(finals)
    for n in avg.params:
        ref = (finals[0].params[n] + finals[1].params[n] + finals[2].params[n]) / 3
        assert torch.allclose(avg.params[n], ref, rtol=0, atol=1e-15)
    assert checkpoint.encode(training.average_states(finals)) == checkpoint.encode(avg)
    with pytest.raises(ValueError):
        training.average_states([])
    with pytest.raises(ValueError):
        training.average_states([finals[0], dataclasses.replace(finals[1], step=1)])
