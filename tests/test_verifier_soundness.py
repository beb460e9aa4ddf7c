"""verifier: soundness against rational cheaters.

Non-finite states are absorbing, so a commit declares its first non-finite leaf and every
interval is judged against that declaration (exact profiles and tolerance alike): honest
divergence passes once declared, an undeclared NaN, a declared but finite leaf, or a forged
path into NaN does not, and a round never starts from a non-finite average. The tolerance
profile bounds each tensor's error by the work of the interval: another thread count
passes; half precision, a skipped step, half batches, a bias under the old |weights| bound
and a biased optimizer state fail, at lr 1e-4 as at lr 1e-2.

The tiny jobs are in tests/tinyjobs.py; the measured bands are benchmarks/tolerance_bands.py.
"""
from __future__ import annotations

import dataclasses
import functools
import math

import pytest
import torch

from consensus.sampling import verifier_intervals
from tests.tinyjobs import tiny, work
from verifier import adversary, checkpoint, data, replay, training
from verifier.checkpoint import TrainState
from verifier.training import TrainSpec
from verifier.work import ShardWork

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # see tests/conftest.py


def failing(w: ShardWork, leaves, diverged_leaf=None) -> list[int]:
    return [i for i in range(w.intervals)
            if not replay.verify_interval(w, i, leaves[i], leaves[i + 1], diverged_leaf)[0]]


@functools.lru_cache(maxsize=None)
def diverging(profile: str) -> tuple[ShardWork, tuple[bytes, ...], int]:
    """Honest training that blows up (momentum at lr_ppm = 10_000_000, which TrainSpec accepts):
    three intervals, the first non-finite leaf d is 1 or 2, so interval d - 1 runs into the
    divergence and interval d starts from it."""
    spec = TrainSpec("mlp", {"in_dim": 8, "hidden": [64] * 6, "out_dim": 3}, "momentum", 10_000_000, 16, 15, 5,
                     profile, seed=1)
    w = work(spec, data.generate("blobs", {"n": 100, "dim": 8, "classes": 3}, 7), 0, 1)
    leaves = tuple(training.train_shard(w, training.init_state(spec)))
    d = training.first_nonfinite_leaf(list(leaves))
    assert d in (1, 2), d
    return w, leaves, d


def _nan_everywhere(state: TrainState) -> TrainState:
    nan = lambda t: torch.full_like(t, math.nan)  # noqa: E731
    return dataclasses.replace(state, params={n: nan(t) for n, t in state.params.items()},
                               opt={n: t if n.endswith("_power") else nan(t) for n, t in state.opt.items()})


# -- declaring divergence --------------------------------------------------------------------


def test_is_finite_looks_at_every_tensor_and_first_nonfinite_leaf_finds_it():
    spec, ds = tiny("mlp", "tolerance", steps=6, k=2)
    leaves = training.train_shard(work(spec, ds), training.init_state(spec))
    assert training.first_nonfinite_leaf(leaves) is None
    state = checkpoint.decode(leaves[2])
    assert checkpoint.is_finite(state)
    for where, bad in (("params", float("inf")), ("opt", float("nan"))):
        tensors = dict(getattr(state, where))
        name = next(n for n in sorted(tensors) if not n.endswith("_power"))
        tensors[name] = tensors[name].clone().reshape(-1).index_fill(0, torch.tensor([0]), bad).reshape(
            tensors[name].shape)
        poisoned = dataclasses.replace(state, **{where: tensors})
        assert not checkpoint.is_finite(poisoned), where
        assert training.first_nonfinite_leaf([*leaves[:2], checkpoint.encode(poisoned), *leaves[3:]]) == 2


@pytest.mark.parametrize("profile", training.PROFILES)
def test_honest_divergence_passes_declared_and_fails_undeclared(profile):
    w, leaves, d = diverging(profile)
    assert failing(w, leaves, d) == []
    assert failing(w, leaves) == list(range(d - 1, w.intervals))
    # every interval up to the divergence is checked by every verifier, so this never pays
    assert set(range(d)) <= set(verifier_intervals(b"s", b"r", b"b", w.intervals, 0, d))


@pytest.mark.parametrize("profile", training.PROFILES)
def test_a_nonfinite_start_needs_the_divergence_declared_at_or_before_it(profile):
    w, leaves, d = diverging(profile)
    start, end = leaves[d], leaves[d + 1]
    assert replay.verify_interval(w, d, start, end, d)[0]
    assert replay.verify_interval(w, d, start, end, 0)[0]  # (leaf 0 itself is the round-start check's)
    for declared in (None, d + 1):
        ok, why = replay.verify_interval(w, d, start, end, declared)
        assert not ok and "not finite" in why, why
    # after the divergence every leaf stays non-finite, at the right step
    finite = checkpoint.encode(adversary._bumped(checkpoint.decode(leaves[0]), (d + 1) * w.spec.k))
    ok, why = replay.verify_interval(w, d, start, finite, d)
    assert not ok and "finite" in why, why
    wrong_step = checkpoint.encode(adversary._bumped(checkpoint.decode(start), (d + 2) * w.spec.k))
    assert not replay.verify_interval(w, d, start, wrong_step, d)[0]


@pytest.mark.parametrize("profile", training.PROFILES)
def test_a_finite_start_with_a_nonfinite_end_needs_exactly_that_leaf_declared(profile):
    w, leaves, d = diverging(profile)
    i = d - 1
    assert replay.verify_interval(w, i, leaves[i], leaves[d], d)[0]
    for declared in (None, d + 1, i):
        ok, why = replay.verify_interval(w, i, leaves[i], leaves[d], declared)
        assert not ok, (declared, why)
    # another non-finite end: the same bytes in the exact profiles, any non-finite state in tolerance
    other = checkpoint.encode(_nan_everywhere(checkpoint.decode(leaves[d])))
    assert other != leaves[d]
    assert replay.verify_interval(w, i, leaves[i], other, d)[0] == (profile == "tolerance")


@pytest.mark.parametrize("profile", training.PROFILES)
def test_a_forged_path_into_nan_is_caught(profile):
    """A finite run whose solver publishes NaN from some leaf on, to stop training for free."""
    spec, ds = tiny("mlp", profile, steps=8, k=2)
    w = work(spec, ds)
    honest = training.train_shard(w, training.init_state(spec))
    forged = honest[:2] + [checkpoint.encode(_nan_everywhere(adversary._bumped(checkpoint.decode(honest[1]), s)))
                           for s in (4, 6, 8)]
    assert failing(w, forged, 2) == [1]  # declared: the interval into NaN recomputes finite
    assert failing(w, forged) == [1, 2, 3]  # undeclared: that one and every later one


@pytest.mark.parametrize("profile", training.PROFILES)
def test_a_declared_leaf_that_is_finite_is_caught(profile):
    spec, ds = tiny("mlp", profile, steps=8, k=2)
    w = work(spec, ds)
    honest = training.train_shard(w, training.init_state(spec))
    assert failing(w, honest, 2) == [1, 2, 3]
    assert failing(w, honest, 4) == [3]
    assert failing(w, honest, None) == []


@pytest.mark.parametrize("profile", ["cpu-f32-1thread", "tolerance"])
@pytest.mark.parametrize("strategy", ["nonfinite-absorbing", "nonfinite-declared"])
def test_nonfinite_cheats_fail_an_interval_every_verifier_checks(strategy, profile):
    spec, ds = tiny("mlp", profile, steps=12, k=2)
    w = work(spec, ds)
    for seed in (b"a", b"b", b"c"):
        published = adversary.publish(strategy, w, training.init_state(spec), seed)
        i = training.first_nonfinite_leaf(list(published.leaves)) - 1  # the last honest interval
        bad = failing(w, published.leaves, published.diverged_leaf)
        if strategy == "nonfinite-absorbing":
            assert published.diverged_leaf is None and bad == list(range(i, w.intervals))
        else:
            assert published.diverged_leaf == i + 1 and bad == [i]
        always = verifier_intervals(b"secret", b"root", b"beacon", w.intervals, 0, published.diverged_leaf)
        assert set(bad) & set(always), (seed, bad, always)


@pytest.mark.parametrize("declared", [True, -1, 7, "1", 1.0])
def test_a_malformed_declaration_is_an_answer(declared):
    spec, ds = tiny("mlp", steps=4, k=2)
    w = work(spec, ds)
    leaves = training.train_shard(w, training.init_state(spec))
    ok, why = replay.verify_interval(w, 0, leaves[0], leaves[1], declared)
    assert not ok and "not a leaf" in why


@pytest.mark.parametrize("profile", training.PROFILES)
def test_a_round_never_starts_from_a_nonfinite_average(profile):
    w, leaves, _ = diverging(profile)
    spec = w.spec
    finite_final = adversary._bumped(checkpoint.decode(leaves[0]), spec.steps)  # a finite shard's final
    finals = [checkpoint.encode(finite_final), leaves[-1]]
    with pytest.raises(ValueError, match="not finite"):
        training.average_states([checkpoint.decode(f) for f in finals])
    nan_average = dataclasses.replace(_nan_everywhere(finite_final), step=0)
    for claimed in (leaves[0], leaves[-1], checkpoint.encode(nan_average)):
        assert not replay.verify_round_start(spec, finals, claimed)
    assert replay.verify_round_start(spec, finals[:1], replay.expected_round_start(spec, finals[:1]))
    # round 0 starts from the job's initial state, never from a non-finite one
    assert replay.verify_round_start(spec, [], leaves[0])
    assert not replay.verify_round_start(spec, [], checkpoint.encode(_nan_everywhere(checkpoint.decode(leaves[0]))))


# -- the tolerance profile: error against the work ------------------------------------------


@pytest.mark.parametrize("lr_ppm", [100, 10_000])
def test_tolerance_accepts_another_thread_count(lr_ppm):
    """Matrices big enough that two threads change the summation order, checked both ways."""
    spec = TrainSpec("mlp", {"in_dim": 32, "hidden": [256, 256], "out_dim": 10}, "adam", lr_ppm, 256, 20, 10,
                     "tolerance", seed=1)
    w = work(spec, data.generate("blobs", {"n": 2000, "dim": 32, "classes": 10}, 7), 0, 1)
    runs = {}
    for n in (1, 2):
        torch.set_num_threads(n)
        runs[n] = training.train_shard(w, training.init_state(spec))
    assert runs[1][1:] != runs[2][1:], "threads did not change a bit: the test shows nothing"
    for verifier_threads, solver in ((2, runs[1]), (1, runs[2])):
        torch.set_num_threads(verifier_threads)
        assert failing(w, solver) == []


def warm_start(spec: TrainSpec, ds: data.Dataset) -> TrainState:
    """A later round's start: weights and biases well away from their initial values, warm
    optimizer state. (From round 0's zero biases, every bias tensor's norm is its movement, so
    a bound relative to |weights| would look as strict as one relative to the work.)"""
    warm = dataclasses.replace(spec, lr_ppm=10_000, steps=24, k=24)
    final = training.train_shard(work(warm, ds, 0, 2), training.init_state(warm))[-1]
    return training.average_states([checkpoint.decode(final)])


CHEATS_ALWAYS_CAUGHT = ["bf16-autocast", "fp16-autocast", "skip-one-step", "half-batch", "old-bound-bias",
                        "optimizer-bias"]


@pytest.mark.parametrize("lr_ppm", [100, 10_000])
@pytest.mark.parametrize("strategy", CHEATS_ALWAYS_CAUGHT)
def test_tolerance_catches_rational_cheats_at_small_and_large_lr(strategy, lr_ppm):
    spec, ds = tiny("mlp", "tolerance", steps=12, k=4, lr_ppm=lr_ppm)  # adam
    w = work(spec, ds)
    for start in (training.init_state(spec), warm_start(spec, ds)):
        published = adversary.publish(strategy, w, start)
        assert published.diverged_leaf is None and len(published.leaves) == w.intervals + 1
        assert failing(w, published.leaves) == [0, 1, 2]


@pytest.mark.parametrize("optimizer", ["momentum", "adam"])
def test_tolerance_catches_a_biased_optimizer_state(optimizer):
    spec, ds = tiny("mlp", "tolerance", optimizer=optimizer, steps=12, k=4, lr_ppm=100)
    w = work(spec, ds)
    published = adversary.publish("optimizer-bias", w, warm_start(spec, ds))
    assert failing(w, published.leaves) == [0, 1, 2]


@pytest.mark.parametrize("lr_ppm", [100, 10_000])
def test_the_bound_is_the_tolerance_times_the_work(lr_ppm):
    """Stretching each interval's displacement to 0.9 x the bound passes (the freedom the rule
    leaves, which saves nothing); to 2 x the bound fails in every interval."""
    spec, ds = tiny("mlp", "tolerance", steps=12, k=4, lr_ppm=lr_ppm)
    w = work(spec, ds)
    for start in (training.init_state(spec), warm_start(spec, ds)):
        assert failing(w, adversary.publish("bias-under-bound", w, start).leaves) == []
        assert failing(w, adversary.train_with(w, start, end=adversary.stretched(w, 2.0))) == [0, 1, 2]


def test_one_interval_done_cheaply_fails_just_that_interval():
    spec, ds = tiny("mlp", "tolerance", steps=12, k=2)
    w = work(spec, ds)
    for seed in (b"x", b"y"):
        leaves = adversary.publish("one-interval", w, training.init_state(spec), seed).leaves
        bad = failing(w, leaves)
        assert len(bad) == 1, bad
        lazy_start, lazy_end = (checkpoint.decode(leaves[j]) for j in (bad[0], bad[0] + 1))
        assert all(torch.equal(lazy_start.params[n], lazy_end.params[n]) for n in lazy_start.params)
