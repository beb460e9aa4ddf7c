"""consensus.jobs, cancelling a job and the fields a job tx may carry.

A submitter gets the rest of its escrow back when no solver is at work and no result is
being checked (a commitment no verifier can check is paid, then the job closes); never
otherwise, and never someone else. The world is in tests/jobworld.py.
"""
from __future__ import annotations

import pytest

from consensus import jobs
from tests.chainfactory import ALICE, challenge_body, commit_body, fake_leaves, job_spec
from tests.jobworld import (NEWCOMER, S1, attest_body, block, commit, escrow, events, job, pass_round, refused, shard,
                            solver_of, submit, tx, until, verifying_world, world)


def cancel(c, jid: bytes, who=ALICE) -> None:
    block(c, tx(c, who, "cancel_job", {"job": jid}))


def test_a_job_nobody_can_solve_is_cancelled_and_its_whole_budget_returns():
    c = world(solvers=())
    before = c.balance(ALICE)
    jid = submit(c, shards=2)
    budget = escrow(c, jid)
    block(c)
    assert [s["status"] for s in job(c, jid)["shards"]] == ["unassigned", "unassigned"]
    cancel(c, jid)
    assert c.balance(ALICE) == before - 2  # two fees, nothing else
    assert escrow(c, jid) is None and job(c, jid)["status"] == "cancelled"
    assert events(c, jid, "cancelled") == [[c.height, "cancelled", ALICE.address, budget,
                                            "job cancelled by its submitter; unused escrow refunded"]]
    assert c.view().read(jobs.K_ACTIVE_JOBS) is None
    block(c)  # a cancelled job is no longer stepped: nothing is assigned any more
    assert shard(c, jid)["status"] == "unassigned"


def test_when_the_only_solver_vanishes_mid_job_cancelling_refunds_what_was_not_paid():
    c = world(solvers=(S1,))
    before = c.balance(ALICE)
    jid = submit(c, shards=1, rounds=2, commit_blocks=3)
    pass_round(c, jid)
    paid = sum(e[3] for e in events(c, jid, "paid"))
    assert paid > 0 and job(c, jid)["round"] == 1
    until(c, lambda: shard(c, jid)["status"] == "assigned")
    assert "shard(s) 0 have a solver at work" in refused(c, ALICE, "cancel_job", {"job": jid})
    until(c, lambda: shard(c, jid)["status"] == "unassigned")  # S1 missed its deadline; nobody else
    cancel(c, jid)
    assert c.balance(ALICE) == before - paid - 2
    assert job(c, jid)["status"] == "cancelled" and len(job(c, jid)["finals"]) == 1


def test_a_commitment_no_verifier_can_check_is_paid_when_the_job_is_cancelled():
    c = world(solvers=(S1,), verifiers=())
    before = c.balance(ALICE)
    jid = submit(c, shards=1)
    until(c, lambda: shard(c, jid)["status"] == "assigned")
    commit(c, jid)
    solver = solver_of(c, jid)
    # the verifier draw has not run yet (draw_delay_blocks after the commit): the result is pending
    for _ in range(c.genesis.params["draw_delay_blocks"]):
        assert "have a solver at work or a result pending" in refused(c, ALICE, "cancel_job", {"job": jid})
        block(c)
    assert shard(c, jid)["status"] == "committed"  # the draw found no verifier staked
    earned, budget = c.balance(solver), escrow(c, jid)
    cancel(c, jid)
    reward = job(c, jid)["spec"]["reward_per_shard"]
    assert c.balance(solver) == earned + reward
    assert events(c, jid, "paid")[0][2:4] == [solver.address, reward]
    assert events(c, jid, "cancelled")[0][3] == budget - reward
    assert c.balance(ALICE) == before - reward - 2  # two fees: the refused cancel was never included
    assert c.view().read(jobs.k_load(solver.address)) is None  # the solver is free for other jobs


@pytest.mark.parametrize("status", ["assigned", "committed", "verifying", "disputed"])
def test_no_cancel_while_a_solver_is_at_work_or_a_result_is_pending(status):
    c, jid, leaves, solver, selected, challenger = verifying_world()
    if status == "disputed":
        block(c, tx(c, challenger, "challenge", challenge_body(jid, 0, 0, 0, leaves)))
    elif status != "verifying":
        c = world()
        jid = submit(c, shards=1)
        until(c, lambda: shard(c, jid)["status"] == "assigned")
        if status == "committed":
            commit(c, jid)
    assert shard(c, jid)["status"] == status
    before = escrow(c, jid)
    assert "have a solver at work or a result pending" in refused(c, ALICE, "cancel_job", {"job": jid})
    assert escrow(c, jid) == before


def test_only_the_submitter_cancels_an_active_job_that_exists():
    c = world(solvers=())
    jid = submit(c)
    assert "only the job's submitter" in refused(c, NEWCOMER, "cancel_job", {"job": jid})
    assert "no job" in refused(c, ALICE, "cancel_job", {"job": b"\x01" * 32})
    assert "cancel_job.job must be 32 bytes" in refused(c, ALICE, "cancel_job", {"job": jid.hex()})
    assert "missing: job" in refused(c, ALICE, "cancel_job", {})
    cancel(c, jid)
    assert "already cancelled" in refused(c, ALICE, "cancel_job", {"job": jid})


def test_a_finished_job_cannot_be_cancelled():
    c = world(solvers=(S1,))
    jid = submit(c, shards=1)
    pass_round(c, jid)
    assert job(c, jid)["status"] == "done"
    assert "already done" in refused(c, ALICE, "cancel_job", {"job": jid})


def test_job_txs_with_fields_their_kind_does_not_read_are_refused():
    c = world()
    assert "submit_job takes exactly the fields spec; unknown: memo" in refused(
        c, ALICE, "submit_job", {"spec": job_spec(), "memo": "hi"})
    jid = submit(c, shards=1)
    until(c, lambda: shard(c, jid)["status"] == "assigned")
    body = dict(commit_body(jid, 0, 0, fake_leaves(5, b"x")), extra=b"")
    assert "unknown: extra" in refused(c, solver_of(c, jid), "commit_shard", body)
    assert "cancel_job takes exactly the fields job; unknown: why" in refused(c, ALICE, "cancel_job", {"job": jid, "why": "x"})


def test_a_start_checkpoint_challenge_carries_no_leaves():
    c, jid, leaves, solver, selected, challenger = verifying_world()
    body = dict(challenge_body(jid, 0, 0, 0, leaves), interval=jobs.START)
    assert "unknown: end_leaf" in refused(c, challenger, "challenge", body)
    for extra in ({"note": 1}, {"fault": True}):
        assert "unknown: " in refused(c, selected, "attest", {**attest_body(c, jid, 0, selected), **extra})
