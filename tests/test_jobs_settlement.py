"""consensus.jobs, from commit to payout: the delayed draw of verifiers and the collateral they
lock, the intervals recorded when they attest, who may attest and when, what a passed shard
pays, rounds that follow one another to the refund of the unspent budget, and a whole busy job
(challenges, a proven fault, a missed deadline) replayed twice to the same app hashes with the
supply conserved after every block.

The world and its moves are in tests/jobworld.py.
"""
from __future__ import annotations

from consensus import codec, jobs
from tests.chainfactory import ALICE, VAL, commit_body, job_spec, stake
from tests.jobworld import (NEWCOMER, R1, R2, S1, SOLVERS, V2, VERIFIERS, attest, attest_body, block, blocks,
                            challenge, commit, draw, escrow, events, fork, job, leaves_for, load, locked, pass_round,
                            refused, register_secrets, secret, selection, shard, solver_of, submit, until,
                            verifiers_of, vote, world)


# -- verification -------------------------------------------------------------------------------

def test_verifiers_are_drawn_draw_delay_blocks_after_the_commit_and_lock_their_collateral():
    c = world(samples_per_shard=2, draw_delay_blocks=3)
    jid = submit(c, shards=1, verify_blocks=4)
    commit(c, jid)
    committed_at = c.height
    for _ in range(2):
        block(c)
        s = shard(c, jid)
        assert s["status"] == "committed" and s["verifiers"] == [] and s["beacon"] == b""
    block(c)   # committed_at + 3: this block's beacon draws
    s = shard(c, jid)
    assert s["status"] == "verifying" and s["beacon"] == c.chain_tip()[1]
    drawn = verifiers_of(c, jid)
    assert len(drawn) == 2 and len(set(drawn)) == 2 and set(drawn) <= set(VERIFIERS)
    # each reserves the first element of its hash chain and locks 0.3 x the reward of 100
    assert s["verifiers"] == [{"verifier": k.address, "secret_index": 1, "locked": 30, "attested": False,
                               "intervals": [], "attested_at": 0} for k in drawn]
    assert [locked(c, k) for k in VERIFIERS] == [30 if k in drawn else 0 for k in VERIFIERS]
    assert s["window_end"] == committed_at + 3 + 4
    # a verifier's intervals are recorded when it attests: 2 drawn from its secret, and the last
    attest(c, jid, 0, drawn[0])
    intervals = selection(c, jid, 0, drawn[0])["intervals"]
    assert len(intervals) == 3 and intervals == sorted(set(intervals)) and intervals[-1] == 49
    assert all(0 <= i < 50 for i in intervals)
    assert selection(c, jid, 0, drawn[1])["intervals"] == []


def test_a_solver_never_verifies_its_own_shard():
    """S1 holds nearly all verifier stake, yet the two verifiers of its shard are the others."""
    c = world(solvers=(S1,), verifiers=((S1, 1_000_000), (R1, 100), (R2, 100)))
    jid = submit(c, shards=1)
    commit(c, jid)
    draw(c)
    assert sorted(k.address for k in verifiers_of(c, jid)) == sorted([R1.address, R2.address])


def test_the_draw_waits_for_a_verifier_with_stake_and_a_hash_chain():
    c = world(verifiers=())
    jid = submit(c, shards=1)
    commit(c, jid)
    blocks(c, 3)
    assert shard(c, jid)["status"] == "committed"
    block(c, stake(NEWCOMER, "verifier", 60, c.nonce(NEWCOMER)))
    assert shard(c, jid)["status"] == "committed", "a verifier with no hash chain was drawn"
    register_secrets(c, NEWCOMER)
    s = shard(c, jid)
    assert s["status"] == "verifying" and [sel["verifier"] for sel in s["verifiers"]] == [NEWCOMER.address]
    assert s["window_end"] == c.height + job(c, jid)["spec"]["verify_blocks"]
    assert locked(c, NEWCOMER) == 30


def test_the_draw_needs_free_stake_for_the_verifier_collateral():
    """A verifier whose free stake is below its draw's collateral (0.3 x the reward in this
    world) plus a challenge bond (0.3 x the reward: a drawn verifier can always challenge
    what it finds) is never drawn, however long it waits."""
    c = world(verifiers=((R1, 59), (R2, 60)))
    jid = submit(c, shards=1)
    commit(c, jid)
    draw(c)
    assert verifiers_of(c, jid) == [R2]
    assert locked(c, R1) == 0 and locked(c, R2) == 30


def test_attest_only_by_a_selected_verifier_once_within_the_window():
    c = world()
    jid = submit(c, shards=1, verify_blocks=3)
    commit(c, jid)
    body = {"job": jid, "round": 0, "shard": 0, "secret": secret(R1, 1)}
    # before the draw nobody can attest
    assert "shard is committed, not verifying" in refused(c, R1, "attest", body)
    draw(c)
    first, second = verifiers_of(c, jid)
    outsider = next(k for k in VERIFIERS if k not in (first, second))
    assert "not selected" in refused(c, outsider, "attest", dict(body, secret=secret(outsider, 1)))
    assert "not selected" in refused(c, solver_of(c, jid), "attest", body)
    assert "round is not open" in refused(c, first, "attest", dict(attest_body(c, jid, 0, first), round=1))
    attest(c, jid, 0, first)
    assert [sel["attested"] for sel in shard(c, jid)["verifiers"]] == [True, False]
    assert "already attested" in refused(c, first, "attest", attest_body(c, jid, 0, first))
    window_end = shard(c, jid)["window_end"]
    until(c, lambda: c.height == window_end - 1)
    in_time = fork(c)
    attest(in_time, jid, 0, second)  # the last block of the window
    assert [sel["attested"] for sel in shard(in_time, jid)["verifiers"]] == [True, True]
    block(c)
    assert "window has closed" in refused(c, second, "attest", attest_body(c, jid, 0, second))


# -- settlement, rounds, completion -------------------------------------------------------------

def test_a_passed_shard_pays_its_solver_and_each_attesting_verifier_per_checked_interval():
    c = world(samples_per_shard=2)
    jid = submit(c, shards=1, reward_per_shard=100, verification_fee=10, verify_blocks=2)
    commit(c, jid)
    draw(c)
    solver = solver_of(c, jid)
    worker, idle = verifiers_of(c, jid)
    attest(c, jid, 0, worker)
    window_end = shard(c, jid)["window_end"]
    until(c, lambda: c.height == window_end)
    assert shard(c, jid)["status"] == "verifying"
    before = {k: c.balance(k) for k in (solver, worker, idle)}
    stakes = {k: c.stake_of(k, "verifier") for k in (worker, idle)}
    held = escrow(c, jid)
    block(c)
    intervals = len(selection(c, jid, 0, worker)["intervals"])
    assert intervals == 3   # two drawn and the last
    assert shard(c, jid)["status"] == "passed"
    assert c.balance(solver) == before[solver] + 100
    assert c.balance(worker) == before[worker] + 10 * intervals
    assert c.balance(idle) == before[idle]
    # a drawn verifier that did not attest is not paid and not slashed; every lock is released
    assert {k: c.stake_of(k, "verifier") for k in (worker, idle)} == stakes
    assert locked(c, worker) == locked(c, idle) == locked(c, solver, "solver") == 0
    assert load(c, solver) == 0
    paid = 100 + 30
    # the job had one shard and one round: it is done and the rest of the escrow went back
    assert escrow(c, jid) is None and held == jobs.budget(job(c, jid)["spec"], c.genesis.params)
    assert [e[2:4] for e in events(c, jid, "paid")] == [[solver.address, 100], [worker.address, 30]]
    assert events(c, jid, "done")[0][3] == held - paid


def test_a_job_runs_round_after_round_then_refunds_the_rest_and_leaves_the_active_list():
    c = world()
    spec = dict(shards=2, rounds=2, reward_per_shard=100, verification_fee=10)
    start_balance = c.balance(ALICE)
    jid = submit(c, **spec)
    cost = jobs.budget(job_spec(**spec), c.genesis.params)
    assert cost == (100 + 10 * 2 * 2) * 2 * 2

    leaves0 = pass_round(c, jid)
    j = job(c, jid)
    assert j["round"] == 1 and j["status"] == "active"
    assert j["finals"] == [[leaves0[0][-1], leaves0[1][-1]]]
    assert escrow(c, jid) == cost - 2 * (100 + 2 * 20)
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
    assert "round is not open" in refused(c, R1, "attest", {"job": jid, "round": 1, "shard": 0,
                                                            "secret": secret(R1, 1)})
    blocks(c, 3)  # and the chain keeps running without it


def test_unearned_verification_fees_are_refunded_to_the_submitter():
    c = world()
    jid = submit(c, shards=2, rounds=1, reward_per_shard=100, verification_fee=10)
    cost = escrow(c, jid)
    after_submit = c.balance(ALICE)
    commit(c, jid)
    draw(c)
    for i in (0, 1):  # one of each shard's two drawn verifiers does the work
        attest(c, jid, i, verifiers_of(c, jid, i)[0])
    until(c, lambda: job(c, jid)["status"] == "done")
    assert c.balance(ALICE) == after_submit + cost - (2 * 100 + 2 * 20)


def test_a_shard_nobody_attests_is_never_paid_unchecked_its_verifiers_are_redrawn():
    """Fail closed: a window that closes with no attestation draws new verifiers instead of
    paying the solver; the silent ones are released unpaid and not drawn for that commit
    again. With every verifier silent the shard waits (the submitter may cancel)."""
    c = world()
    jid = submit(c, shards=1, verify_blocks=2)
    commit(c, jid)
    solver = solver_of(c, jid)
    before = c.balance(solver)
    draw(c)
    first = verifiers_of(c, jid)
    until(c, lambda: shard(c, jid)["status"] == "committed")
    s = shard(c, jid)
    assert s["silent"] == [k.address for k in first] and s["verifiers"] == []
    assert all(locked(c, k) == 0 for k in first) and events(c, jid, "redraw")
    block(c)
    [third] = verifiers_of(c, jid)                    # the one verifier left
    assert third not in first
    attest(c, jid, 0, third)
    until(c, lambda: job(c, jid)["status"] == "done")
    assert c.balance(solver) == before + 100
    paid = {e[2] for e in events(c, jid, "paid")}
    assert third.address in paid and not any(k.address in paid for k in first)


# -- supply and determinism ----------------------------------------------------------------------

def scenario() -> tuple[list[bytes], dict]:
    """A busy job history: two shards over two rounds, a failed challenge, a proven fault, a missed
    deadline, payouts and the refund. Returns the app hash of every block and the final state."""
    c = world(dispute_blocks=5)
    jid = submit(c, shards=2, rounds=2, commit_blocks=3)
    leaves = commit(c, jid)
    draw(c)
    attest(c, jid, 0)
    outsider0 = next(k for k in VERIFIERS if k not in verifiers_of(c, jid, 1))
    challenge(c, jid, outsider0, 2, leaves[1], i=1)
    vote(c, jid, outsider0, False, VAL, V2, i=1)
    attest(c, jid, 1)
    until(c, lambda: job(c, jid)["round"] == 1)
    until(c, lambda: all(s["status"] == "assigned" for s in job(c, jid)["shards"]))
    commit(c, jid, 0)  # shard 1's solver misses its deadline
    draw(c)
    outsider = next(k for k in VERIFIERS if k not in verifiers_of(c, jid, 0))
    challenge(c, jid, outsider, -1)
    vote(c, jid, outsider, True, VAL, V2)
    until(c, lambda: all(s["status"] in ("assigned", "passed") for s in job(c, jid)["shards"]))
    redone = [i for i, s in enumerate(job(c, jid)["shards"]) if s["status"] == "assigned"]
    commit(c, jid, *redone)
    draw(c)
    for i in redone:
        attest(c, jid, i)
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
