"""The shared training step, checkpoints, replay and the cheats it must catch."""
from __future__ import annotations

import dataclasses
import logging
import subprocess
import sys
from pathlib import Path

import msgpack
import numpy as np
import pytest
import torch

from consensus import codec, merkle
from consensus.blobid import blob_id
from consensus.crypto import sha256
from verifier import adversary, checkpoint, data, replay, training
from verifier.checkpoint import CheckpointError, TrainState
from verifier.models import SpecError
from verifier.training import TrainSpec
from verifier.work import RoundShard, ShardWork

REPO = Path(__file__).resolve().parent.parent
JOB = sha256(b"test job")
SPIRALS = data.split_holdout(data.generate("spirals", {"n": 600, "classes": 3}, 7), 200_000)[0]
MLP = {"in_dim": 2, "hidden": [16, 16], "out_dim": 3}


def spec_for(profile: str = "cpu-f32-1thread", optimizer: str = "adam", **kw) -> TrainSpec:
    base = dict(model="mlp", model_args=MLP, optimizer=optimizer, lr_ppm=10_000, batch_size=16, steps=40, k=10,
                profile=profile, seed=1)
    return TrainSpec(**{**base, **kw})


def shard_work(spec: TrainSpec, shard: int = 1, device: str = "cpu") -> ShardWork:
    return ShardWork(spec, SPIRALS, RoundShard(JOB, 0, shard, 2), device)


def failing_intervals(spec: TrainSpec, leaves: list[bytes], shard: int = 1, diverged_leaf: int | None = None
                      ) -> list[int]:
    return [j for j in range(len(leaves) - 1)
            if not replay.verify_interval(shard_work(spec, shard), j, leaves[j], leaves[j + 1], diverged_leaf)[0]]


# -- specs and checkpoints -------------------------------------------------------------------


@pytest.mark.parametrize("change, fragment", [
    ({"optimizer": "rmsprop"}, "optimizer must be one of"),
    ({"profile": "gpu-exact"}, "profile must be one of"),
    ({"k": 7}, "k=7 must divide steps=40"),
    ({"lr_ppm": 0}, "lr_ppm must be an integer"),
    ({"lr_ppm": 0.01}, "lr_ppm must be an integer"),
    ({"batch_size": 0}, "batch_size must be an integer"),
    ({"model": "mlp", "model_args": {"in_dim": 2}}, "missing argument"),
])
def test_bad_specs(change, fragment):
    with pytest.raises(SpecError, match=fragment):
        spec_for(**change)


def test_checkpoint_round_trip_is_canonical():
    for profile in ("cpu-f32-1thread", "cpu-f64"):
        state = training.init_state(spec_for(profile))
        raw = checkpoint.encode(state)
        back = checkpoint.decode(raw)
        assert checkpoint.encode(back) == raw and back.step == 0 and len(back.rng) == 32
        assert checkpoint.checkpoint_hash(raw) == blob_id(raw)
        assert sorted(codec.decode(raw, max_size=1 << 26)["params"]) == sorted(state.params)


def _with(raw: bytes, **fields) -> bytes:
    obj = codec.decode(raw)
    obj.update(fields)
    return codec.encode(obj)


def test_malformed_checkpoints_are_refused():
    raw = checkpoint.encode(training.init_state(spec_for()))
    obj = codec.decode(raw)
    name = sorted(obj["params"])[0]
    dtype, shape, data_ = obj["params"][name]
    bad = {
        "garbage": b"\x00garbage",
        "oversize": raw,
        "truncated": raw[:-1],
        "non-canonical": msgpack.packb(dict(reversed(list(obj.items()))), use_bin_type=True),
        "missing field": codec.encode({k: v for k, v in obj.items() if k != "rng"}),
        "format": _with(raw, format=1),
            "loss": _with(raw, loss=-5),
        "step": _with(raw, step=-1),
        "rng": _with(raw, rng=b"short"),
        "dtype": _with(raw, params={**obj["params"], name: ["int64", shape, data_]}),
        "length": _with(raw, params={**obj["params"], name: [dtype, shape, data_[:-4]]}),
        "shape": _with(raw, params={**obj["params"], name: [dtype, [-1], data_]}),
        "no params": _with(raw, params={}),
        "boolean format": _with(raw, format=True),  # True == 1, but it is another encoding
    }
    for what, blob in bad.items():
        with pytest.raises(CheckpointError):
            checkpoint.decode(blob, max_bytes=len(raw) - 1 if what == "oversize" else checkpoint.MAX_CHECKPOINT_BYTES)


def test_check_state_refuses_another_jobs_state():
    state = training.init_state(spec_for())
    with pytest.raises(CheckpointError, match="optimizer state"):
        training.check_state(spec_for(optimizer="sgd"), state)
    with pytest.raises(CheckpointError, match="parameters do not match"):
        training.check_state(spec_for(model_args={**MLP, "hidden": [16]}), state)
    with pytest.raises(CheckpointError, match="expected torch.float64"):
        training.check_state(spec_for("cpu-f64"), state)


# -- determinism -----------------------------------------------------------------------------


@pytest.mark.parametrize("profile", training.EXACT_PROFILES)
@pytest.mark.parametrize("optimizer", ["sgd", "momentum", "adam"])
def test_same_shard_twice_gives_the_same_hashes(profile, optimizer):
    spec = spec_for(profile, optimizer)
    start = training.init_state(spec)
    a = training.train_shard(shard_work(spec), start)
    b = training.train_shard(shard_work(spec), start)
    assert len(a) == spec.steps // spec.k + 1 and a[0] == checkpoint.encode(start)
    assert [sha256(x) for x in a] == [sha256(x) for x in b]
    assert merkle.root([sha256(x) for x in a]) == merkle.root([sha256(x) for x in b])
    assert checkpoint.decode(a[-1]).step == spec.steps
    assert len(set(a)) == len(a), "every leaf is a different state"


SUBPROCESS = """
import sys; sys.path.insert(0, {repo!r})
from consensus import merkle
from consensus.crypto import sha256
from tests.test_verifier_training import shard_work, spec_for
from verifier import training
for profile in {profiles!r}:
    spec = spec_for(profile)
    leaves = training.train_shard(shard_work(spec), training.init_state(spec))
    print(merkle.root([sha256(x) for x in leaves]).hex())
"""


def test_a_separate_process_gets_the_same_merkle_roots():
    code = SUBPROCESS.format(repo=str(REPO), profiles=training.EXACT_PROFILES)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert out.returncode == 0, out.stderr
    ours = []
    for profile in training.EXACT_PROFILES:
        spec = spec_for(profile)
        leaves = training.train_shard(shard_work(spec), training.init_state(spec))
        ours.append(merkle.root([sha256(x) for x in leaves]).hex())
    assert out.stdout.split() == ours


def test_exact_profiles_restore_torch_settings():
    threads = torch.get_num_threads()
    strict = torch.are_deterministic_algorithms_enabled()
    with training.determinism(spec_for()):
        assert torch.get_num_threads() == 1 and torch.are_deterministic_algorithms_enabled()
    assert torch.get_num_threads() == threads and torch.are_deterministic_algorithms_enabled() == strict


def test_training_does_not_change_its_start_state():
    spec = spec_for()
    start = training.init_state(spec)
    raw = checkpoint.encode(start)
    training.train_shard(shard_work(spec), start)
    assert checkpoint.encode(start) == raw


def test_callbacks_see_every_leaf_and_all_steps():
    spec = spec_for()
    seen, done = [], []
    leaves = training.train_shard(shard_work(spec), training.init_state(spec),
                                  on_checkpoint=lambda i, raw: seen.append((i, raw)), progress=done.append)
    assert seen == list(enumerate(leaves)) and sum(done) == spec.steps


# -- one step, one implementation ------------------------------------------------------------


def test_referee_step_equals_the_solvers_step():
    spec = spec_for()
    leaves = training.train_shard(shard_work(spec), training.init_state(spec))
    shard = SPIRALS.subset(data.shard_indices(len(SPIRALS), 2, 1))
    rows = data.batch_order(JOB, 0, 1, len(shard), spec.steps, spec.batch_size)
    state = checkpoint.decode(leaves[1])
    for step in range(spec.k, 2 * spec.k):
        state = training.train_step(state, spec, shard.x[rows[step]], shard.y[rows[step]])
    assert checkpoint.encode(state) == leaves[2]


def test_an_interval_is_the_sum_of_its_single_steps():
    # Dispute bisection narrows to one step: single-step recomputation must compose exactly.
    spec = spec_for("cpu-f64", "momentum")
    leaves = training.train_shard(shard_work(spec), training.init_state(spec))
    raw = leaves[2]
    for step in range(2 * spec.k, 3 * spec.k):
        raw = training.run_interval(shard_work(spec), raw, step, 1)
    assert raw == leaves[3]


def test_run_interval_checks_where_it_starts():
    spec = spec_for()
    leaves = training.train_shard(shard_work(spec), training.init_state(spec))
    with pytest.raises(CheckpointError, match="at step 10, not 20"):
        training.run_interval(shard_work(spec), leaves[1], 20, 10)
    with pytest.raises(ValueError, match="outside the round"):
        training.run_interval(shard_work(spec), leaves[3], 30, 20)


# -- verification ----------------------------------------------------------------------------


@pytest.mark.parametrize("profile", training.PROFILES)
def test_honest_intervals_pass_and_cheats_fail(profile):
    spec = spec_for(profile)
    start = training.init_state(spec)
    honest = training.train_shard(shard_work(spec), start)
    everything = list(range(spec.steps // spec.k))
    assert failing_intervals(spec, honest) == []
    expected = {"skip-steps": everything, "forge-final": [everything[-1]], "wrong-order": everything,
                "wrong-lr": everything, "stale": everything, "withhold": []}
    for strategy in adversary.STRATEGIES:
        leaves = adversary.cheat(strategy, shard_work(spec), start)
        assert len(leaves) == len(honest) and leaves[0] == honest[0]
        assert failing_intervals(spec, leaves) == expected[strategy], strategy


@pytest.mark.parametrize("profile", training.PROFILES)
def test_a_forced_error_fails_exactly_its_interval(profile):
    spec = spec_for(profile, tolerance_ppm=5000)
    honest = training.train_shard(shard_work(spec), training.init_state(spec))
    for j in (0, 2, 3):
        corrupted = adversary.corrupt_interval(honest, j, shard_work(spec))
        assert corrupted[:j + 1] == honest[:j + 1] and len(corrupted) == len(honest)
        assert failing_intervals(spec, corrupted) == [j]
    with pytest.raises(ValueError, match="does not exist"):
        adversary.corrupt_interval(honest, 4, shard_work(spec))


def test_verify_interval_explains_itself():
    spec = spec_for()
    honest = training.train_shard(shard_work(spec), training.init_state(spec))
    work = shard_work(spec)
    assert replay.verify_interval(work, 1, honest[1], honest[2]) == (True, "steps 10..20: bitwise identical")
    ok, why = replay.verify_interval(work, 1, honest[1], honest[3])
    assert not ok and "claimed step 30, recomputed 20" in why
    ok, why = replay.verify_interval(work, 1, b"junk", honest[2])
    assert not ok and why.startswith("start checkpoint rejected")
    ok, why = replay.verify_interval(work, 1, honest[1], b"junk")
    assert not ok and "malformed" in why
    ok, why = replay.verify_interval(shard_work(spec_for(optimizer="sgd")), 1, honest[1], honest[2])
    assert not ok and "optimizer" in why


def _with_threads(n: int, fn):
    with training.torch_threads(n):
        return fn()


def test_tolerance_accepts_other_thread_counts_and_rejects_perturbation():
    spec = spec_for("tolerance", model_args={"in_dim": 2, "hidden": [256, 256], "out_dim": 3}, batch_size=64)
    start = training.init_state(spec)
    one = _with_threads(1, lambda: training.train_shard(shard_work(spec), start))
    two = _with_threads(2, lambda: training.train_shard(shard_work(spec), start))
    assert all(replay.states_close(a, b, spec.tolerance_ppm) for a, b in zip(one, two))
    assert _with_threads(2, lambda: failing_intervals(spec, one)) == []
    nudged = adversary.perturb(checkpoint.decode(one[-1]), 2 * spec.tolerance_ppm / 1e6, b"x")
    assert not replay.states_close(one[-1], checkpoint.encode(nudged), spec.tolerance_ppm)
    assert not replay.states_close(one[-1], one[-2], 10**9), "different steps never match"
    assert not replay.states_close(one[-1], b"junk", 10**9)


@pytest.mark.parametrize("profile", training.PROFILES)
def test_honest_training_that_diverged_passes_once_declared(profile):
    # Diverged weights (inf/NaN) are absorbing: the commit declares the first non-finite leaf,
    # and each interval is judged by that declaration, never by comparing NaNs.
    spec = spec_for(profile, optimizer="momentum", lr_ppm=3_000_000,
                    model_args={"in_dim": 2, "hidden": [64] * 6, "out_dim": 3})
    leaves = training.train_shard(shard_work(spec), training.init_state(spec))
    diverged = training.first_nonfinite_leaf(leaves)
    assert diverged is not None and 2 <= diverged < len(leaves) - 1, "this setting should diverge early"
    assert failing_intervals(spec, leaves, diverged_leaf=diverged) == []
    # undeclared, the interval into the divergence and all after it fail; declared one leaf
    # late, the intervals that start before the declared leaf but do not end finite
    assert failing_intervals(spec, leaves) == list(range(diverged - 1, len(leaves) - 1))
    assert failing_intervals(spec, leaves, diverged_leaf=diverged + 1) == [diverged - 1, diverged]
    # declared one leaf early, the interval ending at the declared (finite) leaf fails
    assert diverged - 2 in failing_intervals(spec, leaves, diverged_leaf=diverged - 1)


def _forged(raw: bytes, **opt_changes) -> TrainState:
    state = checkpoint.decode(raw)
    opt = dict(state.opt)
    for prefix, fn in opt_changes.items():
        opt.update({n: fn(t) for n, t in opt.items() if n.startswith(prefix + "/") or n == prefix})
    return dataclasses.replace(state, opt=opt)


def test_tolerance_catches_a_frozen_optimizer():
    # Adam with m = 0 and a huge v hardly moves: republishing the same weights would then
    # replay as "no change" unless the optimizer state itself is compared.
    spec = spec_for("tolerance")
    honest = training.train_shard(shard_work(spec), training.init_state(spec))
    frozen = _forged(honest[1], m=torch.zeros_like, v=lambda t: torch.full_like(t, 1e30))
    lazy = [honest[0], checkpoint.encode(frozen)]
    for j in range(2, len(honest)):
        lazy.append(checkpoint.encode(dataclasses.replace(frozen, step=j * spec.k)))
    # Every interval fails: replaying from the frozen state still accumulates a gradient in m,
    # so matching it would take the very work the lazy solver skipped.
    assert failing_intervals(spec, lazy) == [0, 1, 2, 3]


def test_tolerance_checks_every_part_of_the_claimed_end():
    spec = spec_for("tolerance")
    honest = training.train_shard(shard_work(spec), training.init_state(spec))
    args = (shard_work(spec), 2, honest[2])
    for why, forged in {
        "m": _forged(honest[3], m=lambda t: t * 1.5),
        "v": _forged(honest[3], v=lambda t: t * 2.0),
        "nan": _forged(honest[3], m=lambda t: torch.full_like(t, float("nan"))),
        "negative": _forged(honest[3], v=lambda t: -t),
        "beta1_power": _forged(honest[3], beta1_power=lambda t: t * (1 + 1e-12)),
        "dtype": dataclasses.replace(checkpoint.decode(honest[3]),
                                     params={n: t.double() for n, t in checkpoint.decode(honest[3]).params.items()}),
    }.items():
        ok, detail = replay.verify_interval(*args, checkpoint.encode(forged))
        assert not ok, why
    # Adam's m off by half the tolerance times its own movement passes, by twice that fails
    start, end, tol = checkpoint.decode(honest[2]), checkpoint.decode(honest[3]), spec.tolerance_ppm / 1e6

    def m_off_by(fraction: float) -> bytes:
        opt = {n: t + fraction * tol * (t - start.opt[n]) if n.startswith("m/") else t for n, t in end.opt.items()}
        return checkpoint.encode(dataclasses.replace(end, opt=opt))
    assert replay.verify_interval(*args, m_off_by(0.5))[0]
    assert not replay.verify_interval(*args, m_off_by(2.0))[0]


# -- rounds ----------------------------------------------------------------------------------


def _round_finals(spec: TrainSpec, start, round_: int = 0) -> list[bytes]:
    return [training.train_shard(ShardWork(spec, SPIRALS, RoundShard(JOB, round_, s, 2)), start)[-1] for s in range(2)]


def test_average_states():
    spec = spec_for()
    finals = [checkpoint.decode(f) for f in _round_finals(spec, training.init_state(spec))]
    avg = training.average_states(finals)
    assert avg.step == 0 and sorted(avg.opt) == sorted(finals[0].opt)
    name = "layers.0.weight"
    expected = ((finals[0].params[name].double() + finals[1].params[name].double()) / 2).float()
    assert torch.equal(avg.params[name], expected)
    assert checkpoint.encode(training.average_states(finals)) == checkpoint.encode(avg)
    assert checkpoint.encode(training.average_states([finals[0]])) != checkpoint.encode(finals[0])  # step reset
    assert torch.equal(training.average_states([finals[0], finals[0]]).params[name], finals[0].params[name])
    with pytest.raises(ValueError):
        training.average_states([finals[0], dataclasses.replace(finals[1], step=3)])
    with pytest.raises(ValueError):
        training.average_states([])


def test_verify_round_start():
    spec = spec_for()
    start = training.init_state(spec)
    assert replay.verify_round_start(spec, [], checkpoint.encode(start))
    assert not replay.verify_round_start(spec, [], checkpoint.encode(training.init_state(spec_for(seed=2))))
    finals = _round_finals(spec, start)
    good = checkpoint.encode(training.average_states([checkpoint.decode(f) for f in finals]))
    assert replay.verify_round_start(spec, finals, good)
    assert not replay.verify_round_start(spec, finals, finals[0])
    assert not replay.verify_round_start(spec, finals, checkpoint.encode(start))
    assert not replay.verify_round_start(spec, [b"junk", finals[1]], good)


# -- devices ---------------------------------------------------------------------------------


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_without_a_gpu_falls_back_to_the_cpu(caplog):
    spec = spec_for("tolerance")
    with caplog.at_level(logging.WARNING, logger="stepchain.verifier"):
        on_cuda = training.train_shard(shard_work(spec, device="cuda"), training.init_state(spec))
    assert "CUDA is not available" in caplog.text
    assert on_cuda == training.train_shard(shard_work(spec), training.init_state(spec))


def test_exact_profiles_stay_on_the_cpu(caplog):
    spec = spec_for()
    with caplog.at_level(logging.WARNING, logger="stepchain.verifier"):
        assert training.resolve_device(spec, "cuda").type == "cpu"
    assert "exact only on the CPU" in caplog.text


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_training_is_within_tolerance_of_the_cpu():
    spec = spec_for("tolerance")
    start = training.init_state(spec)
    gpu = training.train_shard(shard_work(spec, device="cuda"), start)
    assert failing_intervals(spec, gpu) == []
    cpu = training.train_shard(shard_work(spec), start)
    assert replay.states_close(cpu[-1], gpu[-1], spec.tolerance_ppm)


# -- the models learn ------------------------------------------------------------------------


def _learn(spec: TrainSpec, ds: data.Dataset, rounds: int, shards: int = 2) -> list[int]:
    """Held-out accuracy (ppm) at the start and after each round of sharded training."""
    train, holdout = data.split_holdout(ds, 200_000)
    state = training.init_state(spec)
    accuracy = [training.evaluate(spec, state, holdout)]
    for r in range(rounds):
        finals = [training.train_shard(ShardWork(spec, train, RoundShard(JOB, r, s, shards)), state)[-1] for s in range(shards)]
        assert replay.verify_round_start(spec, [], checkpoint.encode(state)) or r > 0
        state = training.average_states([checkpoint.decode(f) for f in finals])
        accuracy.append(training.evaluate(spec, state, holdout))
    return accuracy


def test_mlp_learns_blobs():
    spec = spec_for(model_args={"in_dim": 8, "hidden": 32, "out_dim": 4}, optimizer="sgd", lr_ppm=100_000,
                    batch_size=32, steps=40, k=20)
    acc = _learn(spec, data.generate("blobs", {"n": 1000, "dim": 8, "classes": 4}, 5), rounds=2)
    assert acc[-1] > 900_000  # chance: 250_000


def test_mlp_learns_spirals():
    spec = spec_for(model_args={"in_dim": 2, "hidden": [64, 64], "out_dim": 3}, batch_size=64, steps=200, k=50)
    acc = _learn(spec, data.generate("spirals", {"n": 2000, "classes": 3}, 5), rounds=3)
    assert acc[-1] > 850_000 and acc[-1] > acc[0] + 400_000  # chance: 333_333


def test_cnn_learns_digits():
    spec = spec_for(model="cnn", model_args={"side": 8, "channels": 8, "out_dim": 10}, batch_size=32, steps=100,
                    k=50)
    acc = _learn(spec, data.generate("digits", {"n": 2000, "side": 8, "classes": 10}, 5), rounds=2)
    assert acc[-1] > 600_000  # chance: 100_000


def test_char_transformer_beats_uniform_guessing():
    spec = spec_for(model="char_transformer", batch_size=32, steps=100, k=50,
                    model_args={"vocab": 28, "context": 16, "d_model": 32, "heads": 2, "layers": 1})
    acc = _learn(spec, data.generate("text", {"n": 2000, "context": 16}, 5), rounds=2)
    uniform = 1_000_000 // 28
    assert acc[-1] > 10 * uniform and acc[-1] > acc[0] + 300_000


def test_evaluate_on_an_empty_holdout_is_zero():
    spec = spec_for()
    empty = data.Dataset(np.zeros((0, 2), dtype=np.float32), np.zeros(0, dtype=np.int64))
    assert training.evaluate(spec, training.init_state(spec), empty) == 0
