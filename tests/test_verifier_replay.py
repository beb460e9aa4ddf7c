"""verifier: replay of intervals. The tolerance profile (another thread count is accepted, a
perturbed or forged state is not), every cheat caught in the intervals it spoils, answers
rather than exceptions for bad input, and the check of a round's start.

The tiny jobs are in tests/tinyjobs.py.
"""
from __future__ import annotations

import dataclasses

import pytest
import torch

from tests.tinyjobs import JOBS, tiny, work
from verifier import adversary, checkpoint, data, replay, training
from verifier.checkpoint import TrainState
from verifier.data import Dataset
from verifier.training import TrainSpec

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # see tests/conftest.py


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
            runs[n] = training.train_shard(work(spec, ds, 0, 1), training.init_state(spec))
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
        ok, why = replay.verify_interval(work(spec, ds, 0, 1), i, two[i], two[i + 1])
        assert ok, why
    torch.set_num_threads(2)
    ok, why = replay.verify_interval(work(spec, ds, 0, 1), 0, one[0], one[1])
    assert ok, why


def test_tolerance_rejects_a_perturbed_checkpoint(tolerance_runs):
    spec, ds, runs = tolerance_runs
    end = checkpoint.decode(runs[1][1])
    bumped = dataclasses.replace(end, params={n: t + 1e-2 for n, t in end.params.items()})
    raw = checkpoint.encode(bumped)
    assert not replay.states_close(runs[1][1], raw, spec.tolerance_ppm)
    ok, why = replay.verify_interval(work(spec, ds, 0, 1), 0, runs[1][0], raw)
    assert not ok and "too far" in why
    # and a checkpoint at another step, or one that is not a checkpoint, is never close
    assert not replay.states_close(runs[1][1], runs[1][2], 10**12)
    assert not replay.states_close(runs[1][1], b"junk", 10**12)


@pytest.mark.parametrize("profile", training.PROFILES)
def test_honest_divergence_passes_only_when_declared(profile):
    """Honest training that diverges to inf/NaN (momentum with lr_ppm=10_000_000, which TrainSpec
    accepts) passes once its first non-finite leaf is declared; undeclared, the interval into the
    divergence fails. Two non-finite states are never "close": a run that diverged no longer
    agrees with anything by distance (the old rule let two NaN states match)."""
    spec = TrainSpec("mlp", {"in_dim": 8, "hidden": [64] * 6, "out_dim": 3}, "momentum", 10_000_000, 16, 10, 5,
                     profile, seed=1)
    ds = data.generate("blobs", {"n": 100, "dim": 8, "classes": 3}, 7)
    leaves = training.train_shard(work(spec, ds, 0, 1), training.init_state(spec))
    d = training.first_nonfinite_leaf(leaves)
    assert d in (1, 2), d  # it did diverge
    for i in (d - 1, *range(d, 2)):
        ok, why = replay.verify_interval(work(spec, ds, 0, 1), i, leaves[i], leaves[i + 1], diverged_leaf=d)
        assert ok, why
        ok, why = replay.verify_interval(work(spec, ds, 0, 1), i, leaves[i], leaves[i + 1])
        assert not ok and "not finite" in why, why
    assert not replay.states_close(leaves[d], leaves[d], 10**12)


def _frozen_optimizer(state: TrainState) -> dict[str, torch.Tensor]:
    """Adam state that makes every later update vanish: m = 0 and v = 1e30."""
    return {n: torch.full_like(t, 1e30) if n.startswith("v/") else torch.zeros_like(t) if n.startswith("m/") else t
            for n, t in state.opt.items()}


def test_tolerance_catches_a_forged_optimizer_state():
    spec, ds = tiny("mlp", "tolerance", steps=8, k=2)
    honest = training.train_shard(work(spec, ds), training.init_state(spec))
    first = checkpoint.decode(honest[1])
    frozen = _frozen_optimizer(first)
    lazy = [honest[0]] + [checkpoint.encode(dataclasses.replace(adversary._bumped(first, i * spec.k), opt=frozen))
                          for i in range(1, 5)]
    assert failing_intervals(spec, ds, lazy) == [0, 1, 2, 3]


def test_tolerance_rejects_a_poisoned_final_optimizer_state():
    spec, ds = tiny("mlp", "tolerance", steps=8, k=2)
    honest = training.train_shard(work(spec, ds), training.init_state(spec))
    final = checkpoint.decode(honest[-1])
    poisoned = {n: torch.full_like(t, float("nan")) if n.startswith("m/") else t for n, t in final.opt.items()}
    bad = checkpoint.encode(dataclasses.replace(final, opt=poisoned))
    ok, why = replay.verify_interval(work(spec, ds), 3, honest[-2], bad)
    assert not ok, why


def test_tolerance_rejects_a_claimed_end_that_does_not_fit_the_job():
    spec, ds = tiny("mlp", "tolerance", steps=8, k=2)
    honest = training.train_shard(work(spec, ds), training.init_state(spec))
    final = checkpoint.decode(honest[-1])
    f64 = dataclasses.replace(final, params={n: t.double() for n, t in final.params.items()},
                              opt={n: t.double() for n, t in final.opt.items()})
    ok, why = replay.verify_interval(work(spec, ds), 3, honest[-2], checkpoint.encode(f64))
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
            if not replay.verify_interval(work(spec, ds, shard, shards), i, leaves[i], leaves[i + 1])[0]]


@pytest.mark.parametrize("profile", ["cpu-f32-1thread", "tolerance"])
def test_verify_interval_accepts_every_honest_interval(profile):
    for kind in JOBS:
        spec, ds = tiny(kind, profile, steps=8, k=2)
        leaves = training.train_shard(work(spec, ds), training.init_state(spec))
        assert failing_intervals(spec, ds, leaves) == [], kind
        withheld = adversary.cheat("withhold", work(spec, ds), training.init_state(spec))
        assert withheld == leaves


@pytest.mark.parametrize("profile", ["cpu-f32-1thread", "tolerance"])
@pytest.mark.parametrize("strategy", sorted(CHEAT_EXPECTED))
def test_verify_interval_catches_each_cheat(strategy, profile):
    spec, ds = tiny("mlp", profile, steps=8, k=2)
    start = training.init_state(spec)
    leaves = adversary.cheat(strategy, work(spec, ds), start)
    assert len(leaves) == 5 and checkpoint.decode(leaves[-1]).step == spec.steps
    assert failing_intervals(spec, ds, leaves) == CHEAT_EXPECTED[strategy]


def test_verify_interval_answers_rather_than_raises():
    spec, ds = tiny("mlp", steps=4, k=2)
    leaves = training.train_shard(work(spec, ds, 0, 1), training.init_state(spec))
    for start, interval, end, why in [(b"junk", 0, leaves[1], "start checkpoint rejected"),
                                      (leaves[0], 1, leaves[1], "start checkpoint is at step 0"),
                                      (leaves[0], 0, b"junk", "malformed"),
                                      (leaves[1], 1, leaves[1], "hash differs"),
                                      (leaves[2], 2, leaves[2], "does not exist"),
                                      (leaves[0], -1, leaves[1], "does not exist"),
                                      (leaves[0], True, leaves[1], "does not exist")]:
        ok, msg = replay.verify_interval(work(spec, ds, 0, 1), interval, start, end)
        assert not ok and why in msg, msg


def test_forced_error_corrupts_exactly_one_interval():
    spec, ds = tiny("mlp", steps=8, k=2)
    honest = training.train_shard(work(spec, ds), training.init_state(spec))
    for index in (0, 2, 3):
        bad = adversary.corrupt_interval(honest, index, work(spec, ds))
        assert len(bad) == len(honest) and bad[:index + 1] == honest[:index + 1]
        assert failing_intervals(spec, ds, bad) == [index]


def test_round_start_check():
    spec, ds = tiny("mlp", steps=4, k=2)
    start = replay.expected_round_start(spec, [])
    assert replay.verify_round_start(spec, [], start)
    finals = [training.train_shard(work(spec, ds, s, 2), checkpoint.decode(start))[-1] for s in range(2)]
    avg = checkpoint.encode(training.average_states([checkpoint.decode(f) for f in finals]))
    assert replay.verify_round_start(spec, finals, avg)
    assert not replay.verify_round_start(spec, finals, start)  # round 1 does not restart from round 0
    assert not replay.verify_round_start(spec, finals, finals[0])
    assert not replay.verify_round_start(spec, [b"junk"], avg)
