"""consensus.jobs: the on-chain life of a training job, driven block by block with real signed txs.

Each test reads as a rule a submitter, solver, verifier or validator relies on: what a job
costs, who gets its shards, what a commit must prove, who verifies and when, who is paid,
who is slashed and how much, and that every node computes the same result. The chain never
sees a checkpoint here: leaves are fake 32-byte hashes in a real Merkle tree.

After every block the token supply is checked: balances + stakes + unbonding + escrow +
burned always equals the genesis supply.
"""
from __future__ import annotations

import dataclasses

import pytest

from consensus import codec, jobs, merkle
from consensus.codec import CodecError
from consensus.ledger import K_BURNED
from consensus.state import BlockError
from tests.chainfactory import (ALICE, VAL, Chain, challenge_body, commit_body, fake_leaves, job_spec, key,
                                make_tx, stake)

V2, V3, V4 = key(5), key(6), key(7)           # more validators, so that disputes need several votes
S1, S2, S3 = key(20), key(21), key(22)        # solvers
R1, R2, R3 = key(30), key(31), key(32)        # verifiers
NEWCOMER = key(50)                            # funded, stakes nothing until a test says so

VALIDATORS = ((VAL, 4_000), (V2, 3_000), (V3, 1_500), (V4, 1_500))  # total 10_000: 2/3+ is > 6_666
SOLVERS = (S1, S2, S3)
VERIFIERS = (R1, R2, R3)
STAKE = 10_000
EVERYONE = (VAL, V2, V3, V4, ALICE, S1, S2, S3, R1, R2, R3, NEWCOMER)
KEYS = {k.address: k for k in EVERYONE}
NAMES = {VAL.address: "VAL", V2.address: "V2", V3.address: "V3", V4.address: "V4", ALICE.address: "ALICE",
         S1.address: "S1", S2.address: "S2", S3.address: "S3", R1.address: "R1", R2.address: "R2",
         R3.address: "R3", NEWCOMER.address: "NEWCOMER"}


# -- a small world and the moves its people make ----------------------------------------------

def _with_amounts(items) -> list:
    return [(x, STAKE) if not isinstance(x, tuple) else x for x in items]


def world(solvers=SOLVERS, verifiers=VERIFIERS, validators=VALIDATORS, **params) -> Chain:
    """Four validators (VAL proposes), ALICE with 1_000_000 to pay for jobs, everyone else 1_000
    for fees; `solvers` and `verifiers` (keys, or (key, amount)) bonded in genesis."""
    accounts = [(ALICE, 1_000_000)] + [(k, 1_000) for k in EVERYONE if k is not ALICE]
    extra = [(k, "solver", a) for k, a in _with_amounts(solvers)] \
        + [(k, "verifier", a) for k, a in _with_amounts(verifiers)]
    return Chain.create(accounts=accounts, validators=validators, params=params or None, extra_stakes=extra)


def tx(c: Chain, k, kind: str, body: dict, nonce: int | None = None):
    return make_tx(k, kind, body, c.nonce(k) if nonce is None else nonce)


def block(c: Chain, *txs):
    """Apply a block in which every tx must be valid; the supply must be conserved after it."""
    res = c.block(list(txs))
    assert c.supply_ok(), f"token supply not conserved after block {c.height}"
    return res


def blocks(c: Chain, n: int) -> None:
    for _ in range(n):
        block(c)


def refused(c: Chain, k, kind: str, body: dict) -> str:
    """The reason the tx is refused; a refused tx leaves no trace (not even its fee) and makes a
    block that carries it invalid."""
    t = tx(c, k, kind, body)
    res = c.execute([t], skip_invalid=True)
    assert res.included == [] and len(res.rejected) == 1, "expected the tx to be refused"
    assert res.writes == c.execute([]).writes, "a refused tx must write nothing"
    with pytest.raises(BlockError):
        c.execute([t])
    return res.rejected[0][1]


def fork(c: Chain) -> Chain:
    """An independent copy of the chain (blocks applied to one do not reach the other)."""
    return dataclasses.replace(c, results=list(c.results))


def until(c: Chain, done, limit: int = 60) -> None:
    for _ in range(limit):
        if done():
            return
        block(c)
    assert done(), f"condition not reached within {limit} blocks"


def job(c: Chain, jid: bytes) -> dict:
    return c.view().read(jobs.k_job(jid))


def shard(c: Chain, jid: bytes, i: int = 0) -> dict:
    return job(c, jid)["shards"][i]


def escrow(c: Chain, jid: bytes):
    return c.view().read(jobs.k_escrow(jid))


def load(c: Chain, k) -> int:
    return c.view().read(jobs.k_load(k.address), 0)


def burned(c: Chain) -> int:
    return c.view().read(K_BURNED)


def solver_of(c: Chain, jid: bytes, i: int = 0):
    return KEYS[shard(c, jid, i)["solver"]]


def verifiers_of(c: Chain, jid: bytes, i: int = 0) -> list:
    return [KEYS[a] for a in shard(c, jid, i)["verifiers"]]


def submit(c: Chain, **spec) -> bytes:
    t = tx(c, ALICE, "submit_job", {"spec": job_spec(**spec)})
    block(c, t)
    return t.hash


def leaves_for(c: Chain, jid: bytes, i: int = 0) -> list[bytes]:
    j = job(c, jid)
    tag = jid + bytes([j["round"], i]) + (j["shards"][i]["solver"] or b"")
    return fake_leaves(jobs.n_intervals(j["spec"]) + 1, tag)


def commit(c: Chain, jid: bytes, *indexes: int) -> dict[int, list[bytes]]:
    """The assigned solvers of `indexes` (default: every shard) commit in one block."""
    j = job(c, jid)
    indexes = indexes or tuple(range(len(j["shards"])))
    nonces, txs, leaves = {}, [], {}
    for i in indexes:
        solver = solver_of(c, jid, i)
        nonce = nonces.get(solver.address, c.nonce(solver))
        nonces[solver.address] = nonce + 1
        leaves[i] = leaves_for(c, jid, i)
        txs.append(tx(c, solver, "commit_shard", commit_body(jid, j["round"], i, leaves[i]), nonce))
    block(c, *txs)
    return leaves


def attest(c: Chain, jid: bytes, i: int, *who) -> None:
    """`who` (default: every selected verifier) attest shard i in one block."""
    rnd = job(c, jid)["round"]
    who = who or tuple(verifiers_of(c, jid, i))
    block(c, *(tx(c, k, "attest", {"job": jid, "round": rnd, "shard": i}) for k in who))


def pass_round(c: Chain, jid: bytes) -> dict[int, list[bytes]]:
    """An honest round: every shard committed, attested by all its verifiers, and settled."""
    rnd = job(c, jid)["round"]
    until(c, lambda: all(s["status"] == "assigned" for s in job(c, jid)["shards"]))
    leaves = commit(c, jid)
    block(c)  # the beacon of this block draws the verifiers
    for i in leaves:
        attest(c, jid, i)
    until(c, lambda: job(c, jid)["round"] != rnd or job(c, jid)["status"] == "done")
    return leaves


def events(c: Chain, jid: bytes, kind: str) -> list:
    return [e for e in job(c, jid)["events"] if e[1] == kind]


# -- submitting a job: the spec and the escrow ------------------------------------------------

def test_budget_is_reward_plus_every_possible_verification_fee_for_every_shard_and_round():
    params = {"verifiers_per_shard": 3, "samples_per_shard": 4}
    spec = job_spec(shards=5, rounds=2, reward_per_shard=1_000, verification_fee=7)
    assert jobs.budget(spec, params) == (1_000 + 7 * (4 + 1) * 3) * 5 * 2


def test_submit_job_escrows_exactly_the_budget():
    c = world()
    spec = job_spec(shards=2, rounds=2)
    cost = jobs.budget(spec, c.genesis.params)
    assert cost == (100 + 10 * (2 + 1) * 1) * 2 * 2
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
    ("model_args not a map", dict(model_args=[2, 8, 3]), "maps"),
    ("data not a map", dict(data="spirals"), "maps"),
    ("metric not a string", dict(metric=1), "maps"),
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
    assert "job spec must have exactly the fields" in refused(world(), ALICE, "submit_job", body)


def test_a_float_cannot_even_be_signed_into_a_spec():
    """Floats have no canonical encoding, so a spec with one never reaches the chain."""
    with pytest.raises(CodecError):
        make_tx(ALICE, "submit_job", {"spec": job_spec(lr_ppm=0.01)}, 0)


def test_limits_themselves_are_accepted():
    c = world(solver_capacity=100)
    for spec in (dict(shards=16), dict(steps=256, k=1), dict(rounds=10), dict(commit_blocks=10_000),
                 dict(lr_ppm=10_000_000, holdout_ppm=999_999), dict(reward_per_shard=0, verification_fee=0)):
        submit(c, **spec)
    assert len(c.view().read(jobs.K_ACTIVE_JOBS)) == 6


def test_budget_must_be_covered_by_the_balance_after_the_fee():
    spec = job_spec()
    c0 = world()
    cost = jobs.budget(spec, c0.genesis.params)
    poor, rich = key(60), key(61)
    c = Chain.create(accounts=((VAL, 1_000), (poor, cost), (rich, cost + 1)), validators=((VAL, 1_000),),
                     extra_stakes=((S1, "solver", STAKE),))
    assert "insufficient funds for the job budget" in refused(c, poor, "submit_job", {"spec": spec})
    t = tx(c, rich, "submit_job", {"spec": spec})
    block(c, t)
    assert c.balance(rich) == 0 and escrow(c, t.hash) == cost


def test_too_many_active_jobs_are_refused():
    c = world(max_active_jobs=2)
    submit(c)
    submit(c)
    assert "too many active jobs" in refused(c, ALICE, "submit_job", {"spec": job_spec()})


# -- assignment ---------------------------------------------------------------------------------

def test_shards_go_to_distinct_staked_solvers_in_the_submit_block():
    c = world()
    jid = submit(c, shards=3, commit_blocks=5)
    solvers = [shard(c, jid, i)["solver"] for i in range(3)]
    assert sorted(solvers) == sorted(k.address for k in SOLVERS)
    for i in range(3):
        s = shard(c, jid, i)
        assert s["status"] == "assigned" and s["assigned_at"] == c.height and s["deadline"] == c.height + 5
    assert [load(c, k) for k in SOLVERS] == [1, 1, 1]
    assert len(events(c, jid, "assigned")) == 3


def test_each_shard_of_a_job_prefers_a_solver_with_no_shard_of_it_yet():
    """Even with room for many shards each, three solvers split every three-shard job three ways."""
    c = world(solver_capacity=100)
    txs = [tx(c, ALICE, "submit_job", {"spec": job_spec(shards=3, seed=i)}, nonce=i) for i in range(20)]
    block(c, *txs)
    for t in txs:
        assert len({s["solver"] for s in job(c, t.hash)["shards"]}) == 3


def test_only_solver_stake_at_or_above_the_minimum_counts():
    """Validators, verifiers and unstaked accounts never solve; nor does a stake below the minimum.
    With one eligible solver, it takes a second shard rather than leave it idle (capacity 2)."""
    c = world(solvers=((S1, 10_000), (S2, 999)), min_solver_stake=1_000)
    jid = submit(c, shards=2)
    assert [shard(c, jid, i)["solver"] for i in range(2)] == [S1.address, S1.address]
    assert load(c, S1) == 2 and load(c, S2) == 0


def test_shards_wait_unassigned_until_a_solver_stakes():
    c = world(solvers=())
    jid = submit(c, shards=2)
    blocks(c, 3)
    assert [s["status"] for s in job(c, jid)["shards"]] == ["unassigned", "unassigned"]
    block(c, stake(NEWCOMER, "solver", 500, c.nonce(NEWCOMER)))
    assert [s["solver"] for s in job(c, jid)["shards"]] == [NEWCOMER.address] * 2
    assert shard(c, jid, 0)["assigned_at"] == c.height


def test_solver_capacity_limits_open_shards_across_the_job():
    c = world(solvers=(S1,), solver_capacity=1)
    jid = submit(c, shards=2)
    assert [s["status"] for s in job(c, jid)["shards"]] == ["assigned", "unassigned"]
    assert load(c, S1) == 1
    commit(c, jid, 0)
    block(c)
    attest(c, jid, 0)
    until(c, lambda: shard(c, jid, 0)["status"] == "passed")
    # the solver's slot is freed when shard 0 settles and shard 1 takes it in the same block
    assert shard(c, jid, 1)["status"] == "assigned" and shard(c, jid, 1)["solver"] == S1.address
    assert load(c, S1) == 1


def test_capacity_counts_shards_of_every_job():
    c = world(solvers=(S1,), solver_capacity=1)
    a = submit(c, shards=1)
    b = submit(c, shards=1)
    assert shard(c, a)["status"] == "assigned" and shard(c, b)["status"] == "unassigned"


def test_assignment_is_stake_weighted():
    """Over 80 one-shard jobs a solver with 3/4 of the solver stake gets about 3/4 of them."""
    heavy, light = (S1, 30_000), (S2, 10_000)
    c = world(solvers=(heavy, light), solver_capacity=1_000, max_active_jobs=100)
    txs = [tx(c, ALICE, "submit_job", {"spec": job_spec(shards=1, seed=i)}, nonce=i) for i in range(80)]
    block(c, *txs)
    won = [shard(c, t.hash)["solver"] for t in txs]
    assert set(won) == {S1.address, S2.address}
    assert 48 <= won.count(S1.address) <= 72, won.count(S1.address)


# -- commits --------------------------------------------------------------------------------------

def test_assigned_solver_commits_root_leaves_manifest_start_and_final():
    c = world()
    jid = submit(c)
    leaves = commit(c, jid, 0)[0]
    s = shard(c, jid, 0)
    assert s["status"] == "committed"
    assert s["commit"] == {"root": merkle.root(leaves), "leaves": 5, "height": c.height,
                           "manifest": commit_body(jid, 0, 0, leaves)["manifest"],
                           "start": leaves[0], "final": leaves[-1]}
    assert shard(c, jid, 1)["status"] == "assigned"
    assert events(c, jid, "commit")[0][2] == solver_of(c, jid, 0).address


def _bad_commits(jid, leaves):
    four = leaves[:4]
    return [
        ("wrong round", dict(round=1), "round is not open"),
        ("no such shard", dict(shard=2), "no such shard"),
        ("negative shard", dict(shard=-1), "no such shard"),
        ("unknown job", dict(job=b"\x00" * 32), "no job"),
        ("job id as hex", dict(job=jid.hex()), "job must be bytes"),
        ("round as string", dict(round="0"), "round must be int"),
        ("one leaf short", dict(root=merkle.root(four), leaves=4), "exactly 5 leaves"),
        ("one leaf too many", dict(leaves=6), "exactly 5 leaves"),
        ("root too short", dict(root=merkle.root(leaves)[:31]), "32-byte root"),
        ("root missing", dict(root=None), "32-byte root"),
        ("manifest missing", dict(manifest=None), "manifest"),
        ("manifest too short", dict(manifest=b"m" * 31), "manifest"),
        ("start is not leaf 0", dict(start=leaves[1], start_proof=merkle.proof(leaves, 1)), "start is not leaf 0"),
        ("start proof tampered", dict(start_proof=[b"\x00" * 32] + merkle.proof(leaves, 0)[1:]),
         "start is not leaf 0"),
        ("start proof missing", dict(start_proof=None), "start_proof a list"),
        ("final is not the last leaf", dict(final=leaves[3], final_proof=merkle.proof(leaves, 3)),
         "final is not leaf 4"),
        ("final proof too long", dict(final_proof=merkle.proof(leaves, 4) + [b"\x00" * 32]), "final is not leaf 4"),
        ("final missing", dict(final=None), "final must be bytes"),
    ]


def test_commit_must_prove_its_first_and_last_leaves_under_its_root():
    c = world()
    jid = submit(c)
    solver, leaves = solver_of(c, jid, 0), leaves_for(c, jid, 0)
    for what, change, reason in _bad_commits(jid, leaves):
        body = {**commit_body(jid, 0, 0, leaves), **change}
        body = {k: v for k, v in body.items() if v is not None}
        got = refused(c, solver, "commit_shard", body)
        assert reason in got, f"{what}: {got}"


def test_only_the_assigned_solver_can_commit_and_only_once():
    c = world()
    jid = submit(c, shards=2)
    mine, other = solver_of(c, jid, 0), solver_of(c, jid, 1)
    leaves = leaves_for(c, jid, 0)
    assert "not assigned to you" in refused(c, other, "commit_shard", commit_body(jid, 0, 0, leaves))
    assert "not assigned to you" in refused(c, S3 if S3 not in (mine, other) else S1, "commit_shard",
                                            commit_body(jid, 0, 0, leaves))
    commit(c, jid, 0)
    assert "shard is committed, not assigned" in refused(c, mine, "commit_shard", commit_body(jid, 0, 0, leaves))


def test_an_unassigned_shard_cannot_be_committed():
    c = world(solvers=())
    jid = submit(c)
    assert "shard is unassigned" in refused(c, S1, "commit_shard", commit_body(jid, 0, 0, fake_leaves(5)))


def test_commit_is_accepted_up_to_and_including_the_deadline_block():
    c = world()
    jid = submit(c, shards=1, commit_blocks=3)
    deadline = shard(c, jid)["deadline"]
    assert deadline == c.height + 3
    until(c, lambda: c.height == deadline - 1)
    on_time = fork(c)
    commit(on_time, jid)
    assert on_time.height == deadline and shard(on_time, jid)["status"] == "committed"
    block(c)
    assert c.height == deadline and shard(c, jid)["status"] == "assigned"
    solver = solver_of(c, jid)
    assert "deadline has passed" in refused(c, solver, "commit_shard", commit_body(jid, 0, 0, leaves_for(c, jid)))


def test_a_missed_deadline_burns_part_of_the_solver_stake_and_reassigns_the_shard():
    c = world(solvers=(S1, S2), missed_deadline_slash_ppm=10_000)
    jid = submit(c, shards=1, commit_blocks=3)
    late = solver_of(c, jid)
    other = S2 if late is S1 else S1
    deadline = shard(c, jid)["deadline"]
    until(c, lambda: c.height == deadline)
    assert shard(c, jid)["solver"] == late.address
    balance, burned_before = c.balance(late), burned(c)
    block(c)  # deadline + 1: the deadline is checked at the end of the block
    assert c.stake_of(late, "solver") == STAKE - STAKE * 10_000 // 1_000_000
    assert burned(c) == burned_before + 100 and c.balance(late) == balance  # burned, paid to nobody
    s = shard(c, jid)
    assert s["solver"] == other.address and s["status"] == "assigned" and s["tried"] == [late.address]
    assert s["assigned_at"] == c.height and s["deadline"] == c.height + 3
    assert load(c, late) == 0 and load(c, other) == 1
    assert events(c, jid, "slashed")[-1][2:4] == [late.address, 100]


def test_a_solver_that_failed_a_shard_never_gets_it_again():
    c = world(solvers=(S1, S2))
    jid = submit(c, shards=1, commit_blocks=2)
    until(c, lambda: len(shard(c, jid)["tried"]) == 2)
    blocks(c, 5)
    s = shard(c, jid)
    assert sorted(s["tried"]) == sorted([S1.address, S2.address])
    assert s["status"] == "unassigned" and s["solver"] is None
    assert load(c, S1) == 0 and load(c, S2) == 0
    block(c, stake(NEWCOMER, "solver", 100, c.nonce(NEWCOMER)))
    assert shard(c, jid)["solver"] == NEWCOMER.address


# -- verification -------------------------------------------------------------------------------

def test_verifiers_and_intervals_are_drawn_in_the_block_after_the_commit():
    c = world(verifiers_per_shard=2, samples_per_shard=2)
    jid = submit(c, shards=1, verify_blocks=4)
    commit(c, jid)
    committed_at = c.height
    s = shard(c, jid)
    assert s["status"] == "committed" and s["verifiers"] == [] and s["intervals"] == []
    block(c)
    s = shard(c, jid)
    assert s["status"] == "verifying"
    assert len(s["verifiers"]) == 2 and len(set(s["verifiers"])) == 2
    assert set(s["verifiers"]) <= {k.address for k in VERIFIERS}
    assert len(s["intervals"]) == 2 and s["intervals"] == sorted(set(s["intervals"]))
    assert all(0 <= i < 4 for i in s["intervals"])
    assert s["intervals"][-1] == 3  # the last interval, which feeds the next round, is always checked
    assert s["window_end"] == committed_at + 1 + 4


def test_a_solver_never_verifies_its_own_shard():
    """S1 holds nearly all verifier stake, yet the two verifiers of its shard are the others."""
    c = world(solvers=(S1,), verifiers=((S1, 1_000_000), (R1, 10), (R2, 10)), verifiers_per_shard=2)
    jid = submit(c, shards=1)
    commit(c, jid)
    block(c)
    assert sorted(shard(c, jid)["verifiers"]) == sorted([R1.address, R2.address])


def test_the_draw_waits_for_a_verifier_to_stake():
    c = world(verifiers=())
    jid = submit(c, shards=1)
    commit(c, jid)
    blocks(c, 3)
    assert shard(c, jid)["status"] == "committed"
    block(c, stake(NEWCOMER, "verifier", 50, c.nonce(NEWCOMER)))
    s = shard(c, jid)
    assert s["status"] == "verifying" and s["verifiers"] == [NEWCOMER.address]
    assert s["window_end"] == c.height + job(c, jid)["spec"]["verify_blocks"]


def test_attest_only_by_a_selected_verifier_once_within_the_window():
    c = world(verifiers_per_shard=2)
    jid = submit(c, shards=1, verify_blocks=3)
    commit(c, jid)
    body = {"job": jid, "round": 0, "shard": 0}
    # before the draw (the block after the commit runs its txs first) nobody can attest
    assert "shard is committed, not verifying" in refused(c, R1, "attest", body)
    block(c)
    first, second = verifiers_of(c, jid)
    outsider = next(k for k in VERIFIERS if k not in (first, second))
    assert "not selected" in refused(c, outsider, "attest", body)
    assert "not selected" in refused(c, solver_of(c, jid), "attest", body)
    assert "round is not open" in refused(c, first, "attest", dict(body, round=1))
    attest(c, jid, 0, first)
    assert shard(c, jid)["attested"] == [first.address]
    assert "already attested" in refused(c, first, "attest", body)
    window_end = shard(c, jid)["window_end"]
    until(c, lambda: c.height == window_end - 1)
    in_time = fork(c)
    attest(in_time, jid, 0, second)  # the last block of the window
    assert shard(in_time, jid)["attested"] == [first.address, second.address]
    block(c)
    assert "window has closed" in refused(c, second, "attest", body)


# -- settlement, rounds, completion -------------------------------------------------------------

def test_a_passed_shard_pays_its_solver_and_each_attesting_verifier_per_checked_interval():
    c = world(verifiers_per_shard=2, samples_per_shard=2)
    jid = submit(c, shards=1, reward_per_shard=100, verification_fee=10, verify_blocks=2)
    commit(c, jid)
    block(c)
    solver = solver_of(c, jid)
    worker, idle = verifiers_of(c, jid)
    attest(c, jid, 0, worker)
    window_end = shard(c, jid)["window_end"]
    until(c, lambda: c.height == window_end)
    assert shard(c, jid)["status"] == "verifying"
    before = {k: c.balance(k) for k in (solver, worker, idle)}
    held = escrow(c, jid)
    block(c)
    intervals = len(shard(c, jid)["intervals"])
    assert intervals == 2
    assert shard(c, jid)["status"] == "passed"
    assert c.balance(solver) == before[solver] + 100
    assert c.balance(worker) == before[worker] + 10 * (intervals + 1)
    assert c.balance(idle) == before[idle]
    assert load(c, solver) == 0
    paid = 100 + 30
    # the job had one shard and one round: it is done and the rest of the escrow went back
    assert escrow(c, jid) is None and held == jobs.budget(job(c, jid)["spec"], c.genesis.params)
    assert [e[2:4] for e in events(c, jid, "paid")] == [[solver.address, 100], [worker.address, 30]]
    assert events(c, jid, "done")[0][3] == held - paid


def test_a_job_runs_round_after_round_then_refunds_the_rest_and_leaves_the_active_list():
    c = world(verifiers_per_shard=2)
    spec = dict(shards=2, rounds=2, reward_per_shard=100, verification_fee=10)
    start_balance = c.balance(ALICE)
    jid = submit(c, **spec)
    cost = jobs.budget(job_spec(**spec), c.genesis.params)
    assert cost == (100 + 10 * 3 * 2) * 2 * 2

    leaves0 = pass_round(c, jid)
    j = job(c, jid)
    assert j["round"] == 1 and j["status"] == "active"
    assert j["finals"] == [[leaves0[0][-1], leaves0[1][-1]]]
    assert escrow(c, jid) == cost - 2 * (100 + 2 * 30)
    assert all(load(c, k) == 0 for k in SOLVERS)
    # the new round's shards are fresh and get solvers (at the latest in the next block)
    assert all(s["commit"] is None and s["tried"] == [] for s in j["shards"])
    until(c, lambda: all(s["status"] == "assigned" for s in job(c, jid)["shards"]), limit=1)
    assert "round is not open" in refused(c, solver_of(c, jid, 0), "commit_shard",
                                          commit_body(jid, 0, 0, leaves_for(c, jid, 0)))

    before_last = c.balance(ALICE)
    leaves1 = pass_round(c, jid)
    j = job(c, jid)
    assert j["status"] == "done" and j["round"] == 1
    assert j["finals"] == [[leaves0[0][-1], leaves0[1][-1]], [leaves1[0][-1], leaves1[1][-1]]]
    assert escrow(c, jid) is None
    assert c.view().read(jobs.K_ACTIVE_JOBS) is None
    assert all(load(c, k) == 0 for k in SOLVERS)
    # everything attested by two verifiers: the whole budget was paid out, nothing to refund
    assert c.balance(ALICE) == before_last == start_balance - cost - 1
    assert events(c, jid, "done")[0][3] == 0
    # a finished job takes no more txs
    assert "round is not open" in refused(c, R1, "attest", {"job": jid, "round": 1, "shard": 0})
    blocks(c, 3)  # and the chain keeps running without it


def test_unearned_verification_fees_are_refunded_to_the_submitter():
    c = world(verifiers_per_shard=2)
    jid = submit(c, shards=2, rounds=1, reward_per_shard=100, verification_fee=10)
    cost = escrow(c, jid)
    after_submit = c.balance(ALICE)
    commit(c, jid)
    block(c)
    attest(c, jid, 0, verifiers_of(c, jid, 0)[0])  # one of four selected verifiers does the work
    until(c, lambda: job(c, jid)["status"] == "done")
    assert c.balance(ALICE) == after_submit + cost - (2 * 100 + 30)


def test_a_shard_nobody_attests_still_passes_when_its_window_closes():
    c = world()
    jid = submit(c, shards=1)
    commit(c, jid)
    solver = solver_of(c, jid)
    before = c.balance(solver)
    until(c, lambda: job(c, jid)["status"] == "done")
    assert c.balance(solver) == before + 100


# -- challenges ---------------------------------------------------------------------------------

def verifying_world(**params):
    """One shard committed by its solver and drawn for verification; returns (chain, job id,
    leaves, solver, selected verifier, an unselected verifier who will challenge)."""
    c = world(**params)
    jid = submit(c, shards=1, verify_blocks=3)
    leaves = commit(c, jid)[0]
    block(c)
    selected = verifiers_of(c, jid)[0]
    challenger = next(k for k in VERIFIERS if k is not selected)
    return c, jid, leaves, solver_of(c, jid), selected, challenger


def test_challenge_needs_a_verifier_stake_and_not_the_solvers_own_key():
    c = world(verifiers=(R1, R2, (S1, STAKE), (S2, STAKE), (S3, STAKE)))
    jid = submit(c, shards=1)
    commit(c, jid)
    body = challenge_body(jid, 0, 0, -1)
    assert "needs a verifier stake" in refused(c, NEWCOMER, "challenge", body)
    assert "needs a verifier stake" in refused(c, VAL, "challenge", body)
    assert "cannot challenge itself" in refused(c, solver_of(c, jid), "challenge", body)


def test_challenge_interval_ranges_from_the_start_checkpoint_to_the_last_interval():
    c, jid, leaves, solver, selected, challenger = verifying_world()
    for interval in (-2, 4, 5):
        assert "interval must be between -1" in refused(c, challenger, "challenge",
                                                        challenge_body(jid, 0, 0, interval, leaves[:5] + leaves[:2]))
    assert "interval must be between" in refused(c, challenger, "challenge",
                                                 {"job": jid, "round": 0, "shard": 0, "interval": True})
    for interval in (-1, 0, 3):
        f = fork(c)
        block(f, tx(f, challenger, "challenge", challenge_body(jid, 0, 0, interval, leaves)))
        assert shard(f, jid)["challenge"]["interval"] == interval


def test_challenge_of_an_interval_must_prove_both_of_its_ends():
    c, jid, leaves, solver, selected, challenger = verifying_world()
    cases = [
        (dict(start_leaf=leaves[2]), "start_leaf is not leaf 1"),
        (dict(end_leaf=leaves[1]), "end_leaf is not leaf 2"),
        (dict(end_proof=merkle.proof(leaves, 3)), "end_leaf is not leaf 2"),
        (dict(start_leaf=b"\x07" * 32), "start_leaf is not leaf 1"),
        (dict(start_proof=None), "start_proof a list"),
        (dict(end_leaf="aa" * 32), "end_leaf must be bytes"),
    ]
    for change, reason in cases:
        body = challenge_body(jid, 0, 0, 1, leaves, **change)
        body = {k: v for k, v in body.items() if v is not None}
        assert reason in refused(c, challenger, "challenge", body)
    # a different tree's leaves do not prove anything about this commit
    other = fake_leaves(5, b"another solver")
    assert "is not leaf" in refused(c, challenger, "challenge", challenge_body(jid, 0, 0, 1, other))


def test_a_challenge_opens_a_dispute_that_freezes_the_shard():
    c, jid, leaves, solver, selected, challenger = verifying_world(dispute_blocks=7)
    block(c, tx(c, challenger, "challenge", challenge_body(jid, 0, 0, 2, leaves)))
    s = shard(c, jid)
    assert s["status"] == "disputed"
    assert s["challenge"] == {"challenger": challenger.address, "interval": 2, "start_leaf": leaves[2],
                              "end_leaf": leaves[3], "opened": c.height, "deadline": c.height + 7, "votes": []}
    body = {"job": jid, "round": 0, "shard": 0}
    assert "shard is disputed" in refused(c, selected, "attest", body)
    assert "shard is disputed" in refused(c, selected, "challenge", dict(body, interval=-1))
    assert events(c, jid, "challenge")[0][2] == challenger.address


def test_a_start_challenge_names_the_committed_first_checkpoint():
    c, jid, leaves, solver, selected, challenger = verifying_world()
    block(c, tx(c, challenger, "challenge", challenge_body(jid, 0, 0, -1)))
    ch = shard(c, jid)["challenge"]
    assert ch["interval"] == -1 and ch["start_leaf"] == ch["end_leaf"] == leaves[0]


def test_a_selected_verifier_may_challenge_instead_of_attesting():
    c, jid, leaves, solver, selected, challenger = verifying_world()
    block(c, tx(c, selected, "challenge", challenge_body(jid, 0, 0, 0, leaves)))
    assert shard(c, jid)["status"] == "disputed"


def test_challenges_close_with_the_verification_window():
    c, jid, leaves, solver, selected, challenger = verifying_world()
    window_end = shard(c, jid)["window_end"]
    until(c, lambda: c.height == window_end - 1)
    last_chance = fork(c)
    block(last_chance, tx(last_chance, challenger, "challenge", challenge_body(jid, 0, 0, -1)))
    assert shard(last_chance, jid)["status"] == "disputed"
    block(c)
    assert "window has closed" in refused(c, challenger, "challenge", challenge_body(jid, 0, 0, -1))
    block(c)
    assert shard(c, jid)["status"] == "passed" or job(c, jid)["status"] == "done"
    assert "round is not open" in refused(c, challenger, "challenge", challenge_body(jid, 0, 0, -1))


def test_a_shard_can_be_challenged_as_soon_as_it_is_committed():
    c = world()
    jid = submit(c, shards=1)
    commit(c, jid)
    block(c, tx(c, R1, "challenge", challenge_body(jid, 0, 0, -1)))
    assert shard(c, jid)["status"] == "disputed"


# -- disputes: the referees' votes --------------------------------------------------------------

def disputed_world(interval=1, attesting=True, **params):
    """verifying_world, the selected verifier attests (unless told not to), then the challenger
    challenges `interval`."""
    c, jid, leaves, solver, selected, challenger = verifying_world(**params)
    if attesting:
        attest(c, jid, 0, selected)
    block(c, tx(c, challenger, "challenge", challenge_body(jid, 0, 0, interval, leaves)))
    return c, jid, leaves, solver, selected, challenger


def vote(c: Chain, jid: bytes, fault: bool, *who) -> None:
    block(c, *(tx(c, k, "dispute_vote", {"job": jid, "round": 0, "shard": 0, "fault": fault}) for k in who))


def test_only_validators_vote_once_each_with_a_boolean():
    c, jid, leaves, solver, selected, challenger = disputed_world()
    body = {"job": jid, "round": 0, "shard": 0, "fault": True}
    for outsider in (challenger, solver, NEWCOMER, ALICE):
        assert "only validators" in refused(c, outsider, "dispute_vote", body)
    assert "fault must be true or false" in refused(c, VAL, "dispute_vote", dict(body, fault=1))
    assert "fault must be true or false" in refused(c, VAL, "dispute_vote", {"job": jid, "round": 0, "shard": 0})
    vote(c, jid, True, VAL)
    assert shard(c, jid)["challenge"]["votes"] == [[VAL.address, True]]
    assert "already voted" in refused(c, VAL, "dispute_vote", body)
    assert "already voted" in refused(c, VAL, "dispute_vote", dict(body, fault=False))


def test_votes_only_count_on_a_disputed_shard():
    c, jid, leaves, solver, selected, challenger = verifying_world()
    assert "shard is verifying, not disputed" in refused(
        c, VAL, "dispute_vote", {"job": jid, "round": 0, "shard": 0, "fault": True})


def test_less_than_two_thirds_of_the_power_decides_nothing():
    c, jid, leaves, solver, selected, challenger = disputed_world()
    vote(c, jid, True, VAL, V3)          # 5_500 of 10_000
    vote(c, jid, False, V2, V4)          # 4_500
    assert shard(c, jid)["status"] == "disputed"


def test_exactly_two_thirds_of_the_power_is_not_enough():
    c = world(validators=((VAL, 4_000), (V2, 2_000), (V3, 3_000)))  # total 9_000: 2/3 is 6_000
    jid = submit(c, shards=1)
    commit(c, jid)
    block(c, tx(c, R1, "challenge", challenge_body(jid, 0, 0, -1)))
    vote(c, jid, True, VAL, V2)          # exactly 6_000
    assert shard(c, jid)["status"] == "disputed"
    vote(c, jid, True, V3)               # 9_000
    assert shard(c, jid)["tried"] != []


def test_two_thirds_for_fault_slashes_solver_and_attesters_pays_challenger_and_reopens_the_shard():
    c, jid, leaves, solver, selected, challenger = disputed_world(
        solver_slash_ppm=200_000, verifier_slash_ppm=100_000, winner_share_ppm=500_000)
    vote(c, jid, True, VAL)              # 4_000: not yet
    assert shard(c, jid)["status"] == "disputed"
    solver_balance, ch_balance, burned_before = c.balance(solver), c.balance(challenger), burned(c)
    t = tx(c, V2, "dispute_vote", {"job": jid, "round": 0, "shard": 0, "fault": True})
    block(c, t)                          # 7_000 of 10_000: more than 2/3, decided in this tx
    cut = STAKE * 200_000 // 1_000_000
    assert c.stake_of(solver, "solver") == STAKE - cut
    assert c.balance(solver) == solver_balance
    assert c.balance(challenger) == ch_balance + cut // 2
    lazy_cut = STAKE * 100_000 // 1_000_000
    assert c.stake_of(selected, "verifier") == STAKE - lazy_cut   # it attested a faulty shard
    assert c.stake_of(challenger, "verifier") == STAKE
    assert burned(c) == burned_before + t.fee + (cut - cut // 2) + lazy_cut
    s = shard(c, jid)
    assert s["tried"] == [solver.address] and s["challenge"] is None and s["attested"] == []
    assert s["status"] == "assigned" and s["solver"] not in (solver.address, None)
    assert s["commit"] is None and s["verifiers"] == []
    assert load(c, solver) == 0
    slashed = [e[2:4] for e in events(c, jid, "slashed")]
    assert slashed == [[solver.address, cut], [selected.address, lazy_cut]]
    # the new solver does the work and is the one paid; the cheat never is
    fresh = solver_of(c, jid)
    before = c.balance(fresh)
    commit(c, jid)
    block(c)
    attest(c, jid, 0)
    until(c, lambda: job(c, jid)["status"] == "done")
    assert c.balance(fresh) == before - 1 + 100
    assert c.balance(solver) == solver_balance


def test_two_thirds_for_no_fault_slashes_the_challenger_in_favour_of_the_solver():
    c, jid, leaves, solver, selected, challenger = disputed_world(
        attesting=False, verifier_slash_ppm=100_000, winner_share_ppm=500_000)
    window_end = shard(c, jid)["window_end"]
    solver_balance, burned_before = c.balance(solver), burned(c)
    vote(c, jid, False, V2, VAL)
    cut = STAKE * 100_000 // 1_000_000
    assert c.stake_of(challenger, "verifier") == STAKE - cut
    assert c.balance(solver) == solver_balance + cut // 2
    assert c.stake_of(solver, "solver") == STAKE
    assert burned(c) == burned_before + 2 + (cut - cut // 2)
    s = shard(c, jid)
    assert s["status"] == "verifying" and s["challenge"] is None and s["solver"] == solver.address
    assert s["window_end"] == max(window_end, c.height + 1)
    assert events(c, jid, "slashed")[0][2:4] == [challenger.address, cut]
    # the selected verifier still has time to attest, and the shard passes
    attest(c, jid, 0, selected)
    until(c, lambda: job(c, jid)["status"] == "done")
    assert c.balance(solver) == solver_balance + cut // 2 + 100


def test_an_expired_dispute_goes_to_the_side_with_more_voted_power():
    c, jid, leaves, solver, selected, challenger = disputed_world(dispute_blocks=4)
    deadline = shard(c, jid)["challenge"]["deadline"]
    vote(c, jid, True, VAL)              # 4_000 for fault
    vote(c, jid, False, V2)              # 3_000 against: neither side has 2/3
    until(c, lambda: c.height == deadline)
    assert shard(c, jid)["status"] == "disputed"
    block(c)
    assert c.stake_of(solver, "solver") == STAKE - STAKE // 5
    s = shard(c, jid)
    assert s["tried"] == [solver.address] and s["status"] in ("unassigned", "assigned")
    until(c, lambda: shard(c, jid)["status"] == "assigned", limit=1)
    assert shard(c, jid)["solver"] != solver.address


def test_voted_power_not_the_number_of_voters_decides_an_expired_dispute():
    c, jid, leaves, solver, selected, challenger = disputed_world(dispute_blocks=3)
    vote(c, jid, True, V3, V4)           # two validators, 3_000
    vote(c, jid, False, VAL)             # one validator, 4_000
    until(c, lambda: shard(c, jid)["status"] != "disputed")
    assert shard(c, jid)["status"] == "verifying" and c.stake_of(solver, "solver") == STAKE
    assert c.stake_of(challenger, "verifier") == STAKE - STAKE // 10


@pytest.mark.parametrize("voters", [((V3, True), (V4, False)), ()], ids=["tie", "nobody voted"])
def test_an_expired_dispute_without_a_majority_clears_the_solver(voters):
    c, jid, leaves, solver, selected, challenger = disputed_world(dispute_blocks=3)
    for k, fault in voters:
        vote(c, jid, fault, k)
    until(c, lambda: shard(c, jid)["status"] != "disputed")
    assert shard(c, jid)["status"] == "verifying" and c.stake_of(solver, "solver") == STAKE
    assert c.stake_of(challenger, "verifier") == STAKE - STAKE // 10
    assert c.stake_of(selected, "verifier") == STAKE


def test_a_shard_cleared_of_an_early_challenge_is_still_verified_by_drawn_verifiers():
    c = world()
    jid = submit(c, shards=1, verify_blocks=3)
    commit(c, jid)
    # an accomplice challenges before the draw, in the block after the commit, and loses
    block(c, tx(c, R1, "challenge", challenge_body(jid, 0, 0, -1)))
    vote(c, jid, False, VAL, V2)
    block(c)
    s = shard(c, jid)
    assert s["status"] == "verifying" and s["verifiers"], "no verifier was ever drawn for this shard"
    assert s["window_end"] >= c.height + 3 - 1


def test_a_failed_challenge_always_costs_the_challenger_something():
    c = world(verifiers=(R1, R2))
    jid = submit(c, shards=1)
    commit(c, jid)
    block(c, stake(NEWCOMER, "verifier", 9, c.nonce(NEWCOMER)))  # 9 >= min_verifier_stake (1)
    block(c, tx(c, NEWCOMER, "challenge", challenge_body(jid, 0, 0, -1)))
    vote(c, jid, False, VAL, V2)
    assert shard(c, jid)["status"] == "verifying"
    assert c.stake_of(NEWCOMER, "verifier") < 9


def test_a_solver_holding_a_shard_keeps_its_stake_at_risk_until_it_commits():
    from consensus.staking import unbonding_entries
    c = world(solvers=(S1,))
    jid = submit(c, shards=1, commit_blocks=60)
    leave = tx(c, S1, "unstake", {"role": "solver", "amount": STAKE})
    if c.execute([leave], skip_invalid=True).included:
        block(c, leave)
        blocks(c, c.genesis.params["unbonding_blocks"])
    assert c.height < shard(c, jid)["deadline"]
    accepted = c.execute([tx(c, S1, "commit_shard", commit_body(jid, 0, 0, leaves_for(c, jid)))],
                         skip_invalid=True).included
    at_risk = c.stake_of(S1, "solver") + sum(e[2] for e in unbonding_entries(c.view(), S1.address)
                                             if e[1] == "solver")
    assert not accepted or at_risk >= c.genesis.params["min_solver_stake"], \
        f"commit accepted with {at_risk} solver stake at risk"


# -- supply and determinism ----------------------------------------------------------------------

def scenario() -> tuple[list[bytes], dict]:
    """A busy job history: two shards over two rounds, a failed challenge, a proven fault, a missed
    deadline, payouts and the refund. Returns the app hash of every block and the final state."""
    c = world(verifiers_per_shard=2, dispute_blocks=5)
    jid = submit(c, shards=2, rounds=2, commit_blocks=3)
    leaves = commit(c, jid)
    block(c)
    attest(c, jid, 0)
    rnd_body = {"job": jid, "round": 0}
    outsider0 = next(k for k in VERIFIERS if k not in verifiers_of(c, jid, 1))
    block(c, tx(c, outsider0, "challenge", dict(challenge_body(jid, 0, 1, 2, leaves[1]))))
    block(c, *(tx(c, k, "dispute_vote", dict(rnd_body, shard=1, fault=False)) for k in (VAL, V2)))
    attest(c, jid, 1)
    until(c, lambda: job(c, jid)["round"] == 1)
    until(c, lambda: all(s["status"] == "assigned" for s in job(c, jid)["shards"]))
    commit(c, jid, 0)  # shard 1's solver misses its deadline
    block(c)
    outsider = next(k for k in VERIFIERS if k not in verifiers_of(c, jid, 0))
    block(c, tx(c, outsider, "challenge", challenge_body(jid, 1, 0, -1)))
    block(c, *(tx(c, k, "dispute_vote", {"job": jid, "round": 1, "shard": 0, "fault": True}) for k in (VAL, V2)))
    until(c, lambda: all(s["status"] in ("assigned", "passed") for s in job(c, jid)["shards"]))
    for i, s in enumerate(job(c, jid)["shards"]):
        if s["status"] == "assigned":
            commit(c, jid, i)
    until(c, lambda: job(c, jid)["status"] == "done")
    blocks(c, 2)
    assert len(events(c, jid, "slashed")) >= 3
    return [r.app_hash for r in c.results], c.state


def test_every_block_of_a_busy_job_conserves_supply_and_replays_to_the_same_app_hashes():
    hashes, state = scenario()
    again, state_again = scenario()
    assert hashes == again and state == state_again
    assert len(set(hashes)) == len(hashes)
    [done] = [codec.decode(v) for k, v in state.items() if k.startswith(b"job/")]
    assert done["status"] == "done" and len(done["finals"]) == 2
