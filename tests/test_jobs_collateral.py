"""consensus.jobs, collateral and decline: what a solver and a verifier lock for a shard, that
only free stake counts and unstaking cannot free a lock, what a proven fault forfeits (exactly
the lock, and only from those who vouched for the faulty part), and a solver handing a shard back.

Every block of the world checks that the token supply is conserved (tests/jobworld.py).
"""
from __future__ import annotations

import pytest

from consensus.ledger import View
from consensus.state import TxError, apply_tx, check_signature
from tests.chainfactory import ALICE, unstake
from tests.jobworld import (NEWCOMER, REFEREES, S1, S2, S3, STAKE, VERIFIERS, attest, block, blocks,
                            burned, challenge, commit, decline, draw, escrow, events, fork, job, load, locked,
                            pass_round, refused, selection, shard, shard_body, solver_of, submit, tx, until,
                            verifiers_of, vote, world)


def tx_error(c, t) -> TxError:
    """The TxError the state transition raises for `t` (the type a node decides on)."""
    with pytest.raises(TxError) as err:
        apply_tx(View(c.state), t, c.chain_id, c.height + 1, check_signature)
    return err.value


# -- what assignment and the draw lock -----------------------------------------------------------

def test_assignment_locks_collateral_ratio_times_the_reward():
    c = world(collateral_ratio_ppm=2_500_000)
    jid = submit(c, shards=2, reward_per_shard=1_000)
    for i in range(2):
        s = shard(c, jid, i)
        assert s["collateral"] == 2_500 and locked(c, solver_of(c, jid, i), "solver") == 2_500
    assert [e[3] for e in events(c, jid, "assigned")] == [2_500, 2_500]
    assert locked(c, next(k for k in (S1, S2, S3) if load(c, k) == 0), "solver") == 0


def test_a_solver_without_enough_free_stake_is_never_assigned_even_with_a_large_total_stake():
    """S1 has 10_000 staked; its first shard locks 9_000 (3 x 3_000), so a second job's shard, which
    needs 9_000 more, waits even though S1's total stake exceeds it, until the first settles."""
    c = world(solvers=(S1,), solver_capacity=10)
    first = submit(c, shards=1, reward_per_shard=3_000, commit_blocks=10)
    assert shard(c, first)["solver"] == S1.address and locked(c, S1, "solver") == 9_000
    second = submit(c, shards=1, reward_per_shard=3_000)
    blocks(c, 2)
    assert shard(c, second)["status"] == "unassigned" and locked(c, S1, "solver") == 9_000
    commit(c, first)
    draw(c)
    attest(c, first, 0)
    until(c, lambda: shard(c, first)["status"] == "passed")
    assert shard(c, second)["status"] in ("unassigned", "assigned")  # jobs are stepped in id order
    until(c, lambda: shard(c, second)["status"] == "assigned", limit=1)
    assert shard(c, second)["solver"] == S1.address and locked(c, S1, "solver") == 9_000


def test_free_stake_must_cover_the_collateral_exactly():
    c = world(solvers=((S1, 8_999), (S2, 9_000)), solver_capacity=10)
    jobs_ = [submit(c, shards=1, reward_per_shard=3_000, seed=i) for i in range(3)]
    assert shard(c, jobs_[0])["solver"] == S2.address        # 9_000 free covers 9_000
    assert [shard(c, j)["status"] for j in jobs_[1:]] == ["unassigned", "unassigned"]
    assert locked(c, S1, "solver") == 0 and load(c, S1) == 0


def test_unstaking_cannot_free_locked_collateral_but_can_after_settlement():
    c = world()
    jid = submit(c, shards=1)
    solver = solver_of(c, jid)
    # a solver holding a shard cannot unstake at all
    err = tx_error(c, unstake(solver, "solver", 1, c.nonce(solver)))
    assert type(err) is TxError and "holding an assigned shard" in str(err)
    commit(c, jid)
    draw(c)
    v = verifiers_of(c, jid)[0]
    assert locked(c, v) == 30
    err = tx_error(c, unstake(v, "verifier", STAKE, c.nonce(v)))
    assert type(err) is TxError and "30 of the 10000 bonded as verifier is locked as collateral" in str(err)
    err = tx_error(c, unstake(v, "verifier", STAKE - 29, c.nonce(v)))
    assert "is locked as collateral" in str(err)
    block(c, unstake(v, "verifier", STAKE - 30, c.nonce(v)))   # the free part may go
    assert c.stake_of(v, "verifier") == 30 and locked(c, v) == 30
    attest(c, jid, 0, v)
    until(c, lambda: shard(c, jid)["status"] == "passed" or job(c, jid)["status"] == "done")
    assert locked(c, v) == 0 and locked(c, solver, "solver") == 0
    block(c, unstake(v, "verifier", 30, c.nonce(v)), unstake(solver, "solver", STAKE, c.nonce(solver)))
    assert c.stake_of(v, "verifier") == 0 and c.stake_of(solver, "solver") == 0


def test_the_draw_locks_each_verifier_and_settlement_releases_every_lock():
    c = world()
    jid = submit(c, shards=1)
    commit(c, jid)
    draw(c)
    drawn = verifiers_of(c, jid)
    assert [selection(c, jid, 0, k)["locked"] for k in drawn] == [30, 30]
    assert sorted(locked(c, k) for k in VERIFIERS) == [0, 30, 30]
    attest(c, jid, 0, drawn[0])                # the other never attests: released, not slashed
    until(c, lambda: job(c, jid)["status"] == "done")
    assert [locked(c, k) for k in VERIFIERS] == [0, 0, 0]
    assert [c.stake_of(k, "verifier") for k in VERIFIERS] == [STAKE] * 3
    assert events(c, jid, "slashed") == []


# -- what a proven fault forfeits ----------------------------------------------------------------

def attested_world(wanted, tries: int = 30):
    """A one-shard job committed, drawn and attested by both its verifiers, for the first job
    seed whose recorded intervals satisfy `wanted({verifier: intervals})`; returns (chain, job id,
    leaves, intervals, the verifier that was not drawn)."""
    for seed in range(tries):
        c = world()
        jid = submit(c, shards=1, seed=seed)
        leaves = commit(c, jid)[0]
        draw(c)
        attest(c, jid, 0)
        got = {k: selection(c, jid, 0, k)["intervals"] for k in verifiers_of(c, jid)}
        if wanted(got):
            return c, jid, leaves, got, next(k for k in VERIFIERS if k not in got)
    pytest.fail(f"no job seed below {tries} gave verifier intervals as wanted")


def solver_of_tried(c, jid) -> bytes:
    """The solver a proven fault took the shard from."""
    return shard(c, jid)["tried"][-1]


def test_proven_fraud_forfeits_exactly_the_collateral_with_the_winner_share_to_the_challenger():
    c = world(winner_share_ppm=250_000)
    jid = submit(c, shards=1, reward_per_shard=101)      # collateral 303, bond 30
    leaves = commit(c, jid)[0]
    solver = solver_of(c, jid)
    draw(c)
    whistleblower = next(k for k in VERIFIERS if k not in verifiers_of(c, jid))
    challenge(c, jid, whistleblower, 7, leaves)
    before = {"solver": c.stake_of(solver, "solver"), "wb": c.balance(whistleblower), "burned": burned(c),
              "escrow": escrow(c, jid)}
    vote(c, jid, whistleblower, True, *REFEREES)
    assert c.stake_of(solver, "solver") == before["solver"] - 303
    assert c.balance(whistleblower) == before["wb"] + 303 * 250_000 // 1_000_000
    assert burned(c) == before["burned"] + 2 + 303 - 75
    assert escrow(c, jid) == before["escrow"], "a fault costs the submitter nothing"
    assert locked(c, solver, "solver") == 0 and locked(c, whistleblower) == 0
    assert c.stake_of(whistleblower, "verifier") == STAKE


def test_a_verifier_that_attested_the_faulty_interval_forfeits_one_that_did_not_is_released():
    c, jid, leaves, got, whistleblower = attested_world(lambda got: len({i[0] for i in got.values()}) == 2)
    (liar, lied), (other, _) = got.items()
    challenge(c, jid, whistleblower, lied[0], leaves)
    vote(c, jid, whistleblower, True, *REFEREES)
    assert c.stake_of(liar, "verifier") == STAKE - 30
    assert c.stake_of(other, "verifier") == STAKE and locked(c, other) == 0 and locked(c, liar) == 0
    assert [e[2] for e in events(c, jid, "slashed")] == [solver_of_tried(c, jid), liar.address]


@pytest.mark.parametrize("side", [-1, +1])
def test_a_verifier_of_an_interval_next_to_the_faulty_one_is_not_slashed(side):
    """Re-running interval i checks leaf i+1 from leaf i; it says nothing about the step into
    leaf i or out of leaf i+1, so a fault proven in interval i-1 or i+1 is none of its doing."""
    def wanted(got):
        (a, ia), (b, ib) = got.items()
        faulty = ia[0] + side
        return 0 <= faulty < 49 and faulty not in ib
    c, jid, leaves, got, whistleblower = attested_world(wanted)
    (a, ia), (b, _) = got.items()
    challenge(c, jid, whistleblower, ia[0] + side, leaves)
    vote(c, jid, whistleblower, True, *REFEREES)
    assert shard(c, jid)["tried"] != [], "the fault was not proven"
    assert c.stake_of(a, "verifier") == STAKE and c.stake_of(b, "verifier") == STAKE
    assert [e[2] for e in events(c, jid, "slashed")] == [solver_of_tried(c, jid)]


def test_a_fault_next_to_the_last_interval_slashes_no_verifier_that_only_checked_the_last():
    c, jid, leaves, got, whistleblower = attested_world(lambda got: all(48 not in i for i in got.values()))
    challenge(c, jid, whistleblower, 48, leaves)
    vote(c, jid, whistleblower, True, *REFEREES)
    assert [c.stake_of(k, "verifier") for k in got] == [STAKE, STAKE]


def test_a_fault_in_the_start_checkpoint_forfeits_every_attesting_verifier():
    """Every verifier checks the start against the round's global checkpoint."""
    c, jid, leaves, got, whistleblower = attested_world(lambda got: True)
    challenge(c, jid, whistleblower, -1)
    vote(c, jid, whistleblower, True, *REFEREES)
    assert [c.stake_of(k, "verifier") for k in got] == [STAKE - 30, STAKE - 30]


# -- decline -------------------------------------------------------------------------------------

def test_a_declining_solver_is_not_slashed_is_released_and_never_gets_that_shard_again():
    c = world()
    jid = submit(c, shards=1)
    quitter = solver_of(c, jid)
    stake_before, burned_before = c.stake_of(quitter, "solver"), burned(c)
    decline(c, jid)
    assert c.stake_of(quitter, "solver") == stake_before and burned(c) == burned_before + 1  # the fee
    assert locked(c, quitter, "solver") == 0 and load(c, quitter) == 0
    s = shard(c, jid)
    assert s["declined"] == [quitter.address] and s["tried"] == [quitter.address]
    assert s["status"] == "assigned" and s["solver"] not in (None, quitter.address)  # in the same block
    assert events(c, jid, "declined")[0][2] == quitter.address
    second = solver_of(c, jid)
    decline(c, jid)
    assert shard(c, jid)["solver"] not in (quitter.address, second.address)


def test_only_the_assigned_solver_declines_and_only_before_its_commit_deadline():
    c = world(solvers=(S1, S2))
    jid = submit(c, shards=1, commit_blocks=3)
    mine = solver_of(c, jid)
    other = S2 if mine is S1 else S1
    assert "not assigned to you" in refused(c, other, "decline", shard_body(c, jid))
    committed = fork(c)
    commit(committed, jid)
    assert "shard is committed, not assigned" in refused(committed, mine, "decline", shard_body(committed, jid))
    deadline = shard(c, jid)["deadline"]
    until(c, lambda: c.height == deadline - 1)
    in_time = fork(c)
    decline(in_time, jid)                                   # in the deadline block
    assert c.stake_of(mine, "solver") == STAKE and shard(in_time, jid)["declined"] == [mine.address]
    block(c)
    # past the deadline a decline would dodge the missed-deadline slash
    assert "deadline has passed" in refused(c, mine, "decline", shard_body(c, jid))
    block(c)
    assert c.stake_of(mine, "solver") < STAKE and shard(c, jid)["declined"] == []


def test_a_job_every_staked_solver_declined_is_cancelled_and_refunded_less_what_was_paid():
    c = world(solvers=(S1, S2))
    before = c.balance(ALICE)
    jid = submit(c, shards=1, rounds=2)
    pass_round(c, jid)
    paid = sum(e[3] for e in events(c, jid, "paid"))
    assert paid == 100 + 2 * 20 and job(c, jid)["round"] == 1
    until(c, lambda: shard(c, jid)["status"] == "assigned")
    decline(c, jid)
    assert job(c, jid)["status"] == "active" and shard(c, jid)["status"] == "assigned"
    left = escrow(c, jid)
    decline(c, jid)
    j = job(c, jid)
    assert j["status"] == "cancelled" and escrow(c, jid) is None
    [cancelled] = events(c, jid, "cancelled")
    assert cancelled[3] == left and "every staked solver declined shard 0" in cancelled[4]
    assert c.balance(ALICE) == before - 1 - paid   # the submit fee and what the first round paid
    assert locked(c, S1, "solver") == locked(c, S2, "solver") == 0 and load(c, S1) == load(c, S2) == 0
    assert c.stake_of(S1, "solver") == c.stake_of(S2, "solver") == STAKE


def test_a_shard_one_solver_declined_and_another_missed_waits_for_a_new_solver():
    """Only declines cancel a job: a solver that missed its deadline may simply have been down."""
    c = world(solvers=(S1, S2))
    jid = submit(c, shards=1, commit_blocks=3)
    decline(c, jid)
    until(c, lambda: len(shard(c, jid)["tried"]) == 2)
    blocks(c, 2)
    assert job(c, jid)["status"] == "active" and shard(c, jid)["status"] == "unassigned"
    block(c, tx(c, NEWCOMER, "stake", {"role": "solver", "amount": 300}))
    assert shard(c, jid)["solver"] == NEWCOMER.address

