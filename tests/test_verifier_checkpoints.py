"""verifier: canonical checkpoints (byte-identical round trips, every malformed encoding refused,
a checkpoint that does not fit the job refused) and bit-exact determinism of the exact profiles,
in this process and in another one.

The tiny jobs are in tests/tinyjobs.py.
"""
from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from consensus import codec
from consensus.blobid import blob_id
from tests.tinyjobs import EXACT_CASES, JOB, shard_root, tiny, work
from verifier import checkpoint, data, replay, training
from verifier.checkpoint import CheckpointError

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # see tests/conftest.py

REPO = Path(__file__).resolve().parent.parent


# -- checkpoints -----------------------------------------------------------------------------


@pytest.mark.parametrize("optimizer", ["sgd", "momentum", "adam"])
@pytest.mark.parametrize("profile", ["cpu-f32-1thread", "cpu-f64"])
def test_checkpoint_round_trip_is_byte_identical(optimizer, profile):
    spec, ds = tiny("mlp", profile, optimizer, steps=4, k=2)
    leaves = training.train_shard(work(spec, ds, 0, 1), training.init_state(spec))
    assert len(leaves) == 3 and len(set(leaves)) == 3
    for raw in leaves:
        state = checkpoint.decode(raw)
        training.check_state(spec, state)
        assert checkpoint.encode(state) == raw
        assert all(t.dtype == spec.dtype for t in state.params.values())
    assert [checkpoint.decode(r).step for r in leaves] == [0, 2, 4]
    assert checkpoint.checkpoint_hash(leaves[0]) == blob_id(leaves[0])


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
    (_edit(format=1), "format 1 is not supported"),  # before losses were part of the state
    (_edit(format=3), "format 3 is not supported"),
    (_edit(loss=-1), "loss must be the 64 bits"),
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
    """True == 1 in Python: a format of msgpack `true` must not pass for an integer format, or one state
    would have two accepted encodings (two different Merkle leaves)."""
    with pytest.raises(CheckpointError, match="format .*not supported"):
        checkpoint.decode(_edit(format=True))


def test_checkpoint_that_does_not_fit_the_job_is_refused():
    spec, ds = tiny("mlp", steps=3, k=3)
    other, _ = tiny("mlp", steps=3, k=3, optimizer="momentum")
    wrong_opt = checkpoint.encode(training.init_state(other))
    with pytest.raises(CheckpointError, match="optimizer"):
        training.check_state(spec, checkpoint.decode(wrong_opt))
    ok, why = replay.verify_interval(work(spec, ds, 0, 1), 0, wrong_opt, wrong_opt)
    assert not ok and "start checkpoint rejected" in why
    f64 = checkpoint.encode(training.init_state(dataclasses.replace(spec, profile="cpu-f64")))
    with pytest.raises(CheckpointError, match="float64"):
        training.check_state(spec, checkpoint.decode(f64))


# -- determinism -----------------------------------------------------------------------------

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
    other = training.train_shard(work(spec, ds, 0, 2), training.init_state(spec))
    assert checkpoint.checkpoint_hash(other[0]) == hashes[0]
    assert checkpoint.checkpoint_hash(other[-1]) != hashes[-1]


def test_same_roots_in_a_separate_process():
    code = (
        "import sys; sys.path.insert(0, sys.argv[1])\n"
        "from tests.tinyjobs import EXACT_CASES, shard_root\n"
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
    leaves = training.train_shard(work(spec, ds, 0, 1), training.init_state(spec))
    shard = ds.subset(data.shard_indices(len(ds), 1, 0))
    state = checkpoint.decode(leaves[0])
    for row in data.batch_order(JOB, 0, 0, len(shard), 3, spec.batch_size):
        state = training.train_step(state, spec, shard.x[row], shard.y[row])
    assert checkpoint.encode(state) == leaves[-1]
