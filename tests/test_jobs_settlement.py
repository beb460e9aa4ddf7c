"""consensus.jobs, from commit to payout: the draw of verifiers and intervals, who may attest and
when, what a passed shard pays, rounds that follow one another to the refund of the unspent
budget, and a whole busy job (challenges, a proven fault, a missed deadline) replayed twice to
the same app hashes with the supply conserved after every block.

The world and its moves are in tests/jobworld.py.
"""
from __future__ import annotations

from consensus import codec, jobs
from tests.chainfactory import ALICE, VAL, challenge_body, commit_body, job_spec, stake
from tests.jobworld import (NEWCOMER, R1, R2, S1, SOLVERS, V2, VERIFIERS, attest, block, blocks, commit, escrow,
                            events, fork, job, leaves_for, load, pass_round, refused, shard, solver_of, submit, tx,
                            until, verifiers_of, world)


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
