"""Verified loss curves: each leaf holds its interval's loss, so the curve is checked exactly as
the weights are (bitwise in exact profiles, within the tolerance otherwise), and a commit's
declared losses must be the ones its leaves hold.

A rational cheater lies about losses in two ways, both caught on any interval a verifier
checks: it declares a nicer number than its leaf holds (`loss-declared`: one interval), or it
writes a nicer number into its leaves and declares that (`loss-forged`: every interval).
"""
from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from tests.tinyjobs import tiny, work
from verifier import adversary, checkpoint, models, replay, training
from verifier.checkpoint import bits_float, float_bits, interval_mean

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # see tests/conftest.py


def failing(w, leaves, losses) -> list[int]:
    return [i for i in range(w.intervals)
            if not replay.verify_interval(w, i, leaves[i], leaves[i + 1], None, losses)[0]]


def honest(profile: str, steps: int = 12, k: int = 3):
    spec, ds = tiny("mlp", profile, steps=steps, k=k)
    w = work(spec, ds)
    leaves = training.train_shard(w, training.init_state(spec))
    return w, leaves, adversary.Published(tuple(leaves), None).declared_losses(spec.k)


def test_a_leaf_holds_the_mean_loss_of_its_interval_as_a_plain_torch_loop_computes_it():
    """The number on the curve is the training loss itself: recomputed here with a plain torch
    loop (model, cross-entropy, the optimizer's update from the trainer), step by step."""
    w, leaves, declared = honest("cpu-f32-1thread")
    spec = w.spec
    shard_data = training.ShardData(w)
    state = checkpoint.decode(leaves[0])
    model = models.load_params(models.empty_model(spec.model, spec.model_args),
                               {n: t.clone() for n, t in state.params.items()})
    trainer = training.Trainer(spec, state)
    sums, total = [], 0.0
    for step, (x, y) in enumerate(shard_data.batches(0, spec.steps)):
        with torch.no_grad():
            model.load_state_dict({n: p.detach() for n, p in zip(trainer.names, trainer.params)})
            total += float(F.cross_entropy(model(x), y))  # the loss before this step's update
        trainer.train_step(x, y)
        if (step + 1) % spec.k == 0:
            sums.append(total)
            total = 0.0
    for i, expected in enumerate(sums):
        leaf = checkpoint.decode(leaves[i + 1])
        assert leaf.loss_sum == pytest.approx(expected, rel=1e-12)
        assert declared[i] == interval_mean(leaf.loss, spec.k)
        assert bits_float(declared[i]) == pytest.approx(expected / spec.k, rel=1e-12)
    assert checkpoint.decode(leaves[0]).loss == 0  # a round starts with no loss of its own
    assert bits_float(declared[-1]) < bits_float(declared[0])  # it trains: the curve goes down


@pytest.mark.parametrize("profile", training.PROFILES)
def test_honest_declared_losses_pass_every_interval(profile):
    w, leaves, declared = honest(profile)
    assert failing(w, leaves, declared) == []


@pytest.mark.parametrize("profile", training.PROFILES)
def test_a_declared_loss_that_is_not_the_leafs_fails_that_interval(profile):
    w, leaves, declared = honest(profile)
    for i in (0, 2, w.intervals - 1):
        lie = list(declared)
        lie[i] = float_bits(bits_float(lie[i]) * 0.9)
        assert failing(w, leaves, lie) == [i]
        ok, why = replay.verify_interval(w, i, leaves[i], leaves[i + 1], None, lie)
        assert not ok and "declares mean loss" in why
    assert failing(w, leaves, declared[:-1]) == list(range(w.intervals))  # too few: nothing passes


@pytest.mark.parametrize("profile", training.PROFILES)
@pytest.mark.parametrize("strategy", ["loss-declared", "loss-forged"])
def test_loss_cheats_are_caught_where_a_verifier_looks(strategy, profile):
    spec, ds = tiny("mlp", profile, steps=12, k=3)
    w = work(spec, ds)
    for seed in (b"a", b"b"):
        published = adversary.publish(strategy, w, training.init_state(spec), seed)
        bad = failing(w, published.leaves, published.declared_losses(spec.k))
        if strategy == "loss-forged":  # every leaf's loss is off by 10%: every interval fails
            assert bad == list(range(w.intervals))
        else:
            assert len(bad) == 1, bad
            assert bad[0] == adversary._choose(w, strategy, seed).randrange(w.intervals)


def test_tolerance_holds_a_loss_to_the_bound_and_no_further():
    """Another summation order passes; a loss moved by twice the bound fails, one moved by half
    of it passes (the bound: tolerance_ppm relative to the recomputed loss)."""
    w, leaves, _ = honest("tolerance")
    tol = w.spec.tolerance_ppm / 1e6
    i = 1
    end = checkpoint.decode(leaves[i + 1])
    for factor, ok in ((0.5, True), (2.0, False)):
        moved = dataclasses.replace(end, loss=float_bits(end.loss_sum * (1 + factor * tol)))
        raw = checkpoint.encode(moved)
        declared = [0] * w.intervals
        declared[i] = interval_mean(moved.loss, w.spec.k)
        got, why = replay.verify_interval(w, i, leaves[i], raw, None, declared)
        assert got == ok, (factor, why)


def test_a_nan_loss_is_never_close_in_tolerance():
    w, leaves, _ = honest("tolerance")
    end = checkpoint.decode(leaves[1])
    raw = checkpoint.encode(dataclasses.replace(end, loss=float_bits(float("nan"))))
    ok, why = replay.verify_interval(w, 0, leaves[0], raw)
    assert not ok and "interval loss" in why


def test_the_referees_one_step_holds_the_loss_too():
    """A bisection game's last step compares state hashes, which include the interval's running
    loss: a leaf whose loss alone is forged fails the step into it, and a wrong declaration fails
    the rule check the referee runs first."""
    w, leaves, declared = honest("cpu-f32-1thread")
    k, i = w.spec.k, 1
    end = checkpoint.decode(leaves[i + 1])
    forged = checkpoint.encode(dataclasses.replace(end, loss=float_bits(end.loss_sum * 0.9)))
    agreed = training.run_interval(w, leaves[i], i * k, k - 1)  # the state one step before the end
    forged_declared = list(declared)
    forged_declared[i] = interval_mean(checkpoint.decode(forged).loss, k)
    ok, why = replay.verify_step(w, i, leaves[i], forged, None, agreed, (i + 1) * k - 1,
                                 checkpoint.checkpoint_hash(forged), forged_declared)
    assert not ok and "differs from the recomputed step" in why
    ok, _ = replay.verify_step(w, i, leaves[i], leaves[i + 1], None, agreed, (i + 1) * k - 1,
                               checkpoint.checkpoint_hash(leaves[i + 1]), declared)
    assert ok
    lie = list(declared)
    lie[i] ^= 1  # one bit of the declared mean
    ok, why = replay.verify_step(w, i, leaves[i], leaves[i + 1], None, agreed, (i + 1) * k - 1,
                                 checkpoint.checkpoint_hash(leaves[i + 1]), lie)
    assert not ok and "declares mean loss" in why


def test_a_forced_error_keeps_its_honest_loss_and_a_lie_there_is_not_a_forced_error():
    from verifier import forced
    w, leaves, _ = honest("cpu-f32-1thread")
    planted = forced.train_with_forced_error(w, training.init_state(w.spec), 1)
    declared = adversary.Published(tuple(planted), None).declared_losses(w.spec.k)
    assert replay.verify_forced(w, 1, planted[1], planted[2], declared)[0]
    assert checkpoint.decode(planted[2]).loss == checkpoint.decode(leaves[2]).loss  # only a weight's bit moved
    lie = list(declared)
    lie[1] ^= 1
    assert not replay.verify_forced(w, 1, planted[1], planted[2], lie)[0]


# -- on chain: each round keeps its curves, and a point is verified only when it was checked ----


def test_each_round_keeps_its_declared_curves_and_their_verified_points():
    from consensus.jobs import Job, k_job
    from consensus import codec
    from node.jobview import curves_json, rounds_json
    from tests.jobworld import commit, draw, attest, job, pass_round, submit, until, verifiers_of, world
    c = world()
    jid = submit(c, rounds=2, shards=1)  # one shard: its (fake) start names round 0's model alone
    spec = job(c, jid)["spec"]
    n = spec["steps"] // spec["k"]
    pass_round(c, jid)
    record = lambda: Job.from_map(codec.decode(c.view().get(k_job(jid))))  # noqa: E731
    # round 1: shard 0 declares a falling curve; its verifiers attest, the others have not yet
    until(c, lambda: all(s["status"] == "assigned" for s in job(c, jid)["shards"]))
    losses = [float_bits(2.0 / (j + 1)) for j in range(n)]
    commit(c, jid, losses=losses)
    draw(c)
    live = curves_json(c.view(), record())
    assert [(x["round"], x["shard"]) for x in live] == [(0, i) for i in range(len(job(c, jid)["shards"]))] \
        + [(1, i) for i in range(len(job(c, jid)["shards"]))]
    now = [x for x in live if x["round"] == 1]
    assert [p["loss"] for p in now[0]["points"]] == [2.0 / (j + 1) for j in range(n)]
    assert not any(p["verified"] for x in now for p in x["points"])  # nothing checked before it passes
    for i in range(len(job(c, jid)["shards"])):
        attest(c, jid, i)
    until(c, lambda: job(c, jid)["status"] == "done")
    final = record()
    curves = curves_json(c.view(), final)
    assert {(x["round"], x["shard"]) for x in curves} == {(r, i) for r in (0, 1) for i in range(len(final.shards))}
    for x in curves:
        verified = [p["interval"] for p in x["points"] if p["verified"]]
        assert n - 1 in verified  # the last interval: every verifier checks it
        assert all(p["step"] == (p["interval"] + 1) * spec["k"] for p in x["points"])
    # round 0's model is the start round 1's checked shards began from; round 1's is not on chain
    rounds = rounds_json(c.view(), final)
    assert rounds[0]["model"] == final.shards[0].commit.start.hex() and rounds[1]["model"] is None
    assert verifiers_of(c, jid, 0)


def test_a_lazy_attester_and_the_forced_interval_verify_no_point():
    from consensus.jobs.curves import verified_intervals
    from consensus.jobs.records import Commit, Selection, Shard, ShardStatus
    commit = Commit(root=b"", leaves=5, height=1, manifest=b"", start=b"", final=b"", diverged_leaf=0, losses=[0] * 4)
    honest = Selection(verifier=b"a" * 20, secret_index=1, locked=1, attested=True, intervals=[1, 3], attested_at=9)
    lazy = Selection(verifier=b"b" * 20, secret_index=1, locked=1, attested=True, intervals=[0, 2, 3], attested_at=5)
    shard = Shard(status=ShardStatus.PASSED, commit=commit, verifiers=[honest, lazy], forced=2, revealed_at=7)
    assert verified_intervals(shard) == [1, 3]  # the lazy one attested the forced interval 2 before the reveal
    shard.status = ShardStatus.VERIFYING
    assert verified_intervals(shard) == []


def test_job_status_plots_every_point_and_marks_the_verified_ones():
    from node.jobview import PLOT_WIDTH, plot
    points = [{"interval": j, "step": (j + 1) * 10, "loss": 2.0 * 0.97 ** j, "verified": j in (40, 99)}
              for j in range(100)]
    rows = plot({"points": points})
    body = [r.split("|", 1)[1] for r in rows[:-1]]
    assert max(len(b) for b in body) <= PLOT_WIDTH and "step 1000" in rows[-1]
    assert sum(b.count("*") for b in body) == 2 and body[-1].rstrip().endswith("*")  # the last point, lowest
    assert float(rows[0].split("|")[0]) > float(rows[-2].split("|")[0])  # the loss went down
    nan = [{"interval": 0, "step": 10, "loss": None, "verified": False}]
    assert plot({"points": nan}) == ["  (no finite loss)"]


def test_no_point_at_or_past_a_divergence_is_verified():
    """Past a declared divergence a verifier checks only that leaves stay non-finite (and, in
    `tolerance`, the diverging interval only that the recomputation diverges too): the loss a
    non-finite leaf holds is never compared, so a diverged run could show any curve there,
    e.g. a falling one. Such points are declared, never verified."""
    from consensus.jobs.curves import verified_intervals
    from consensus.jobs.records import Commit, Selection, Shard, ShardStatus
    from verifier.training import TrainSpec
    from verifier import data
    from tests.tinyjobs import work as shard_work
    spec = TrainSpec("mlp", {"in_dim": 8, "hidden": [64] * 6, "out_dim": 3}, "momentum", 10_000_000, 16, 20, 5,
                     "tolerance", seed=1)
    w = shard_work(spec, data.generate("blobs", {"n": 100, "dim": 8, "classes": 3}, 7), 0, 1)
    leaves = training.train_shard(w, training.init_state(spec))
    d = training.first_nonfinite_leaf(leaves)
    assert d is not None and d < w.intervals, d  # it diverged before the last interval
    nice = float_bits(0.01 * spec.k)  # a small, finite loss written into non-finite leaves
    forged = leaves[:d] + [checkpoint.encode(dataclasses.replace(checkpoint.decode(x), loss=nice))
                           for x in leaves[d:]]
    declared = adversary.Published(tuple(forged), d).declared_losses(spec.k)
    for j in range(d - 1, w.intervals):  # the diverging interval and every one after it pass
        ok, why = replay.verify_interval(w, j, forged[j], forged[j + 1], d, declared)
        assert ok, (j, why)
    commit = Commit(root=b"", leaves=w.intervals + 1, height=1, manifest=b"", start=b"", final=b"",
                    diverged_leaf=d, losses=declared)
    sel = Selection(verifier=b"a" * 20, secret_index=1, locked=1, attested=True,
                    intervals=list(range(w.intervals)), attested_at=9)
    shard = Shard(status=ShardStatus.PASSED, commit=commit, verifiers=[sel], forced=-1, revealed_at=0)
    assert verified_intervals(shard) == list(range(d - 1))


def test_a_nan_mean_is_declared_as_the_one_canonical_nan_whatever_its_payload():
    from verifier.checkpoint import CANONICAL_NAN
    for payload in (0x7FF8000000000001, 0xFFF8000000000000, 0x7FF0000000000001, 0xFFFFFFFFFFFFFFFF):
        assert interval_mean(payload, 10) == CANONICAL_NAN
    assert interval_mean(float_bits(5.0), 10) == float_bits(0.5)
    assert interval_mean(float_bits(float("inf")), 10) == float_bits(float("inf"))
