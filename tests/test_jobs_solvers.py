"""consensus.jobs, the solvers' side: who gets a job's shards (staked, stake-weighted, within
capacity, never the same solver twice for a shard it failed), what a commit must prove, and
the commit deadline with its slash and reassignment.

The world and its moves are in tests/jobworld.py.
"""
from __future__ import annotations

from consensus import merkle
from tests.chainfactory import ALICE, commit_body, fake_leaves, job_spec, manifest_of, stake
from tests.jobworld import (NEWCOMER, S1, S2, S3, SOLVERS, STAKE, attest, block, blocks, burned, commit, draw,
                            events, fork, job, leaves_for, load, locked, refused, shard, solver_of, submit, tx,
                            until, world)


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
    """A solver that stakes the collateral of both shards (3 x 100 each) takes both."""
    c = world(solvers=())
    jid = submit(c, shards=2)
    blocks(c, 3)
    assert [s["status"] for s in job(c, jid)["shards"]] == ["unassigned", "unassigned"]
    block(c, stake(NEWCOMER, "solver", 600, c.nonce(NEWCOMER)))
    assert [s["solver"] for s in job(c, jid)["shards"]] == [NEWCOMER.address] * 2
    assert shard(c, jid, 0)["assigned_at"] == c.height
    assert locked(c, NEWCOMER, "solver") == 600


def test_solver_capacity_limits_open_shards_across_the_job():
    c = world(solvers=(S1,), solver_capacity=1)
    jid = submit(c, shards=2)
    assert [s["status"] for s in job(c, jid)["shards"]] == ["assigned", "unassigned"]
    assert load(c, S1) == 1
    commit(c, jid, 0)
    draw(c)
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
    assert s["commit"] == {"root": merkle.root(leaves), "leaves": 51, "height": c.height,
                           "manifest": manifest_of(leaves), "start": leaves[0], "final": leaves[-1],
                           "diverged_leaf": 0, "losses": [0] * 50}
    assert shard(c, jid, 1)["status"] == "assigned"
    assert events(c, jid, "commit")[0][2] == solver_of(c, jid, 0).address


def _bad_commits(jid, leaves):
    fifty = leaves[:50]
    return [
        ("wrong round", dict(round=1), "round is not open"),
        ("no such shard", dict(shard=2), "no such shard"),
        ("negative shard", dict(shard=-1), "commit_shard.shard must be an integer"),
        ("unknown job", dict(job=b"\x00" * 32), "no job"),
        ("job id as hex", dict(job=jid.hex()), "commit_shard.job must be 32 bytes"),
        ("round as string", dict(round="0"), "commit_shard.round must be an integer"),
        ("one leaf short", dict(root=merkle.root(fifty), leaves=50), "exactly 51 leaves"),
        ("one leaf too many", dict(leaves=52), "exactly 51 leaves"),
        ("root too short", dict(root=merkle.root(leaves)[:31]), "commit_shard.root must be 32 bytes"),
        ("root missing", dict(root=None), "missing: root"),
        ("manifest missing", dict(manifest=None), "manifest"),
        ("manifest too short", dict(manifest=b"m" * 31), "manifest"),
        ("start is not leaf 0", dict(start=leaves[1], start_proof=merkle.proof(leaves, 1)), "start is not leaf 0"),
        ("start proof tampered", dict(start_proof=[b"\x00" * 32] + merkle.proof(leaves, 0)[1:]),
         "start is not leaf 0"),
        ("start proof missing", dict(start_proof=None), "missing: start_proof"),
        ("final is not the last leaf", dict(final=leaves[49], final_proof=merkle.proof(leaves, 49)),
         "final is not leaf 50"),
        ("final proof too long", dict(final_proof=merkle.proof(leaves, 50) + [b"\x00" * 32]),
         "final is not leaf 50"),
        ("final missing", dict(final=None), "missing: final"),
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
    block(c, stake(NEWCOMER, "solver", 300, c.nonce(NEWCOMER)))  # exactly the collateral
    assert shard(c, jid)["solver"] == NEWCOMER.address
