"""consensus.jobs, submitting a job: what a job costs, the budget escrowed for it, which specs the
chain refuses (and that a refused submission writes nothing), and the limit on active jobs.

The world and its moves are in tests/jobworld.py.
"""
from __future__ import annotations

import pytest

from consensus import jobs
from consensus.codec import CodecError
from tests.chainfactory import ALICE, VAL, Chain, job_spec, key, make_tx
from tests.jobworld import FORCED_ERRORS, S1, STAKE, block, escrow, events, job, refused, submit, tx, world


# -- submitting a job: the spec and the escrow ------------------------------------------------

def test_budget_is_reward_plus_every_possible_verification_fee_for_every_shard_and_round():
    params = {"verifiers_per_shard": 3, "samples_per_shard": 4}
    spec = job_spec(shards=5, rounds=2, reward_per_shard=1_000, verification_fee=7)
    assert jobs.budget(spec, params) == (1_000 + 7 * (4 + 1) * 3) * 5 * 2


def test_submit_job_escrows_exactly_the_budget():
    c = world()
    spec = job_spec(shards=2, rounds=2)
    cost = jobs.budget(spec, c.genesis.params)
    # reward + fee x (samples_per_shard 1 + the last interval) x verifiers_per_shard 2
    assert cost == (100 + 10 * (1 + 1) * 2) * 2 * 2
    before = c.balance(ALICE)
    t = tx(c, ALICE, "submit_job", {"spec": spec})
    block(c, t)
    assert c.balance(ALICE) == before - cost - t.fee
    assert escrow(c, t.hash) == cost
    j = job(c, t.hash)
    assert j["id"] == t.hash and j["submitter"] == ALICE.address and j["spec"] == spec
    assert j["status"] == "active" and j["round"] == 0 and j["finals"] == [] and len(j["shards"]) == 2
    assert j["submitted_at"] == c.height
    assert events(c, t.hash, "submitted") == [[c.height, "submitted", ALICE.address, cost, "budget escrowed"]]
    assert c.view().read(jobs.K_ACTIVE_JOBS) == [t.hash]


def test_active_job_list_is_sorted_by_job_id():
    c = world()
    txs = [tx(c, ALICE, "submit_job", {"spec": job_spec(seed=i)}, nonce=i) for i in range(4)]
    block(c, *txs)
    assert c.view().read(jobs.K_ACTIVE_JOBS) == sorted(t.hash for t in txs)


def _drop(name):
    def f(spec):
        del spec[name]
    return f


BAD_SPECS = [
    ("unknown model", dict(model="resnet152"), "spec.model"),
    ("unknown profile", dict(profile="gpu-fast"), "spec.profile"),
    ("unknown optimizer", dict(optimizer="lbfgs"), "spec.optimizer"),
    ("k does not divide steps", dict(steps=10, k=3), "spec.k"),
    ("k zero", dict(k=0), "spec.k"),
    ("too many intervals", dict(steps=257, k=1), "spec.k"),
    ("too many shards", dict(shards=17), "spec.shards"),
    ("no shards", dict(shards=0), "spec.shards"),
    ("too many rounds", dict(rounds=11), "spec.rounds"),
    ("too many steps", dict(steps=100_002, k=1), "spec.steps"),
    ("zero batch", dict(batch_size=0), "spec.batch_size"),
    ("lr_ppm zero", dict(lr_ppm=0), "lr_ppm"),
    ("lr_ppm above 10", dict(lr_ppm=10_000_001), "lr_ppm"),
    ("holdout is everything", dict(holdout_ppm=1_000_000), "holdout_ppm"),
    ("zero commit window", dict(commit_blocks=0), "spec.commit_blocks"),
    ("verify window too long", dict(verify_blocks=10_001), "spec.verify_blocks"),
    ("bool as an integer", dict(shards=True), "spec.shards must be a non-negative integer"),
    ("string as an integer", dict(steps="8"), "spec.steps must be a non-negative integer"),
    ("negative reward", dict(reward_per_shard=-1), "spec.reward_per_shard must be a non-negative integer"),
    ("model_args not a map", dict(model_args=[2, 8, 3]), "arguments must be a map"),
    ("data not a map", dict(data="spirals"), "spec.data must be"),
    ("metric not a string", dict(metric=1), "spec.metric must be one of"),
    ("missing field", _drop("metric"), "exactly the fields"),
    ("missing reward", _drop("reward_per_shard"), "exactly the fields"),
    ("unknown field", dict(learning_rate="fast"), "exactly the fields"),
]


@pytest.mark.parametrize("what,change,reason", BAD_SPECS, ids=[b[0] for b in BAD_SPECS])
def test_invalid_spec_is_refused_and_nothing_is_written(what, change, reason):
    c = world()
    spec = job_spec()
    if callable(change):
        change(spec)
    else:
        spec.update(change)
    assert reason in refused(c, ALICE, "submit_job", {"spec": spec})


@pytest.mark.parametrize("body", [{}, {"spec": None}, {"spec": [1, 2]}, {"spec": "mlp"}])
def test_submit_job_without_a_spec_map_is_refused(body):
    got = refused(world(), ALICE, "submit_job", body)
    assert "job spec must have exactly the fields" in got or "missing: spec" in got


def test_a_float_cannot_even_be_signed_into_a_spec():
    """Floats have no canonical encoding, so a spec with one never reaches the chain."""
    with pytest.raises(CodecError):
        make_tx(ALICE, "submit_job", {"spec": job_spec(lr_ppm=0.01)}, 0)


def test_limits_themselves_are_accepted():
    c = world(solver_capacity=100)
    for spec in (dict(shards=16), dict(steps=256, k=1), dict(rounds=10), dict(commit_blocks=10_000),
                 dict(lr_ppm=10_000_000, holdout_ppm=999_999, shards=1,  # one training item left
                      data={"generator": "spirals", "args": {"n": 1_000_000, "classes": 3}, "seed": 7}),
                 dict(reward_per_shard=0, verification_fee=0)):
        submit(c, **spec)
    assert len(c.view().read(jobs.K_ACTIVE_JOBS)) == 6


def test_budget_must_be_covered_by_the_balance_after_the_fee():
    spec = job_spec()
    c0 = world(**FORCED_ERRORS)
    cost = jobs.budget(spec, c0.genesis.params)
    fee = cost * c0.genesis.params["pool_fee_ppm"] // 1_000_000  # the jackpot pool's share, on top
    assert fee > 0
    cost += fee
    poor, rich = key(60), key(61)
    c = Chain.create(accounts=((VAL, 1_000), (poor, cost), (rich, cost + 1)), validators=((VAL, 1_000),),
                     extra_stakes=((S1, "solver", STAKE),), params=dict(c0.genesis.params))
    assert "insufficient funds for the job" in refused(c, poor, "submit_job", {"spec": spec})
    t = tx(c, rich, "submit_job", {"spec": spec})
    block(c, t)
    assert c.balance(rich) == 0 and escrow(c, t.hash) == cost - fee and c.view().read(jobs.K_POOL) == fee


def test_too_many_active_jobs_are_refused():
    c = world(max_active_jobs=2)
    submit(c)
    submit(c)
    assert "too many active jobs" in refused(c, ALICE, "submit_job", {"spec": job_spec()})


def test_a_shard_with_fewer_than_min_intervals_is_refused_at_submit():
    """Sampled verification needs enough intervals to be cheap and sound: 49 of 2 steps are
    one too few at the default of 50, whatever else the spec says."""
    c = world()
    assert c.genesis.params["min_intervals"] == 50
    for short in (dict(steps=98, k=2), dict(steps=100, k=4), dict(steps=8, k=8)):
        assert "at least 50 intervals" in refused(c, ALICE, "submit_job", {"spec": job_spec(**short)})
    jid = submit(c, steps=50, k=1)
    assert job(c, jid)["status"] == "active"
    small = world(min_intervals=4)
    assert job(small, submit(small, steps=8, k=2))["status"] == "active"
    assert "at least 4 intervals" in refused(small, ALICE, "submit_job", {"spec": job_spec(steps=6, k=2)})
