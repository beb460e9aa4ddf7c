"""consensus.jobs, disputes: the validators' votes on a challenged shard, what 2/3+ of the power
decides either way (who forfeits what, who is paid, what happens to the shard), that an
expired dispute slashes nobody, and that a solver's stake stays at risk while it holds a shard.

The world and its moves are in tests/jobworld.py.
"""
from __future__ import annotations

import pytest

from tests.chainfactory import ALICE, VAL, challenge_body, commit_body, stake
from tests.jobworld import (NEWCOMER, R1, R2, REFEREES, S1, STAKE, V2, V3, V4, attest, block, blocks, burned, challenge,
                            challenges, commit, draw, events, job, leaves_for, load, locked, refused, shard,
                            solver_of, submit, tx, until, verifiers_of, verifying_world, vote, vote_body, world)


# -- disputes: the referees' votes --------------------------------------------------------------

def disputed_world(interval=1, attesting=True, **params):
    """verifying_world, the selected verifier attests (unless told not to), then the challenger
    challenges `interval`."""
    c, jid, leaves, solver, selected, challenger = verifying_world(**params)
    if attesting:
        attest(c, jid, 0, selected)
    challenge(c, jid, challenger, interval, leaves)
    return c, jid, leaves, solver, selected, challenger


def test_only_validators_vote_once_each_with_a_boolean_on_a_challenge_that_is_open():
    c, jid, leaves, solver, selected, challenger = disputed_world()
    body = vote_body(c, jid, challenger, True)
    for outsider in (challenger, solver, NEWCOMER, ALICE):
        assert "only validators" in refused(c, outsider, "dispute_vote", body)
    assert "fault must be true or false" in refused(c, VAL, "dispute_vote", dict(body, fault=1))
    assert "missing: fault" in refused(c, VAL, "dispute_vote", {k: v for k, v in body.items() if k != "fault"})
    assert "missing: challenger" in refused(c, VAL, "dispute_vote", {"job": jid, "round": 0, "shard": 0,
                                                                     "fault": True})
    vote(c, jid, challenger, True, VAL)
    assert challenges(c, jid)[0]["votes"] == [[VAL.address, True]]
    assert "already voted" in refused(c, VAL, "dispute_vote", body)
    assert "already voted" in refused(c, VAL, "dispute_vote", dict(body, fault=False))


def late_vote_changes_nothing(c, k, body: dict) -> None:
    """A vote that lands after its challenge closed (or on none) is valid and a no-op: it uses
    its nonce and fee, so the validator's later txs are not held up, and changes no job."""
    before = job(c, body["job"])
    res = c.execute([tx(c, k, "dispute_vote", body)])
    assert len(res.included) == 1 and res.rejected == []
    block(c, tx(c, k, "dispute_vote", body))
    assert {**job(c, body["job"]), "events": None} == {**before, "events": None}


def test_a_vote_on_a_challenge_that_is_not_open_is_a_late_vote_that_changes_nothing():
    c, jid, leaves, solver, selected, challenger = verifying_world()
    late_vote_changes_nothing(c, VAL, vote_body(c, jid, challenger, True))           # nothing disputed
    c, jid, leaves, solver, selected, challenger = disputed_world()
    late_vote_changes_nothing(c, VAL, vote_body(c, jid, selected, True))             # not its challenge
    vote(c, jid, challenger, True, *REFEREES)                                        # decided: fault
    assert shard(c, jid)["challenges"] == [] and shard(c, jid)["tried"] == [solver.address]
    late_vote_changes_nothing(c, V4, vote_body(c, jid, challenger, False))           # after the decision
    assert "no job" in refused(c, VAL, "dispute_vote", dict(vote_body(c, jid, challenger, True), job=b"\x01" * 32))


def test_less_than_two_thirds_of_the_power_decides_nothing():
    c, jid, leaves, solver, selected, challenger = disputed_world()
    vote(c, jid, challenger, True, VAL, V3)          # 5_500 of 10_000
    vote(c, jid, challenger, False, V2, V4)          # 4_500
    assert shard(c, jid)["status"] == "disputed" and len(challenges(c, jid)) == 1


def test_exactly_two_thirds_of_the_power_is_not_enough():
    c = world(validators=((VAL, 4_000), (V2, 2_000), (V3, 3_000)))  # total 9_000: 2/3 is 6_000
    jid = submit(c, shards=1)
    commit(c, jid)
    challenge(c, jid, R1, -1)
    vote(c, jid, R1, True, VAL, V2)          # exactly 6_000
    assert shard(c, jid)["status"] == "disputed"
    vote(c, jid, R1, True, V3)               # 9_000
    assert shard(c, jid)["tried"] != []


def test_two_thirds_for_fault_forfeits_the_collaterals_pays_the_challenger_and_reopens_the_shard():
    """The fault is in the last interval, which every drawn verifier checks: the one that
    attested it forfeits its selection collateral, the one that did not is released."""
    c, jid, leaves, solver, selected, challenger = disputed_world(interval=49, winner_share_ppm=500_000)
    idle = next(k for k in verifiers_of(c, jid) if k is not selected)
    vote(c, jid, challenger, True, VAL)              # 4_000: not yet
    assert shard(c, jid)["status"] == "disputed"
    solver_balance, ch_balance, burned_before = c.balance(solver), c.balance(challenger), burned(c)
    assert locked(c, solver, "solver") == 300 and locked(c, challenger) == 30 and locked(c, selected) == 30
    t = tx(c, V2, "dispute_vote", vote_body(c, jid, challenger, True))
    block(c, t)                          # 7_000 of 10_000: more than 2/3, decided in this tx
    collateral, bond = 300, 30           # 3x and 0.3x the reward of 100
    assert c.stake_of(solver, "solver") == STAKE - collateral
    assert c.balance(solver) == solver_balance
    assert c.balance(challenger) == ch_balance + collateral // 2
    assert c.stake_of(selected, "verifier") == STAKE - bond   # it attested the faulty interval
    assert c.stake_of(challenger, "verifier") == STAKE and c.stake_of(idle, "verifier") == STAKE
    assert burned(c) == burned_before + t.fee + (collateral - collateral // 2) + bond
    assert [locked(c, k) for k in (challenger, selected, idle)] == [0, 0, 0]
    assert locked(c, solver, "solver") == 0 and load(c, solver) == 0
    s = shard(c, jid)
    assert s["tried"] == [solver.address] and s["challenges"] == [] and s["verifiers"] == []
    assert s["status"] == "assigned" and s["solver"] not in (solver.address, None)
    assert s["commit"] is None
    slashed = [e[2:4] for e in events(c, jid, "slashed")]
    assert slashed == [[solver.address, collateral], [selected.address, bond]]
    assert events(c, jid, "rewarded")[-1][2:4] == [challenger.address, collateral // 2]
    # the new solver does the work and is the one paid; the cheat never is
    fresh = solver_of(c, jid)
    before = c.balance(fresh)
    commit(c, jid)
    draw(c)
    attest(c, jid, 0)
    until(c, lambda: job(c, jid)["status"] == "done")
    assert c.balance(fresh) == before - 1 + 100
    assert c.balance(solver) == solver_balance


def test_two_thirds_for_no_fault_forfeits_the_challengers_bond_in_favour_of_the_solver():
    c, jid, leaves, solver, selected, challenger = disputed_world(attesting=False, winner_share_ppm=500_000)
    solver_balance, burned_before = c.balance(solver), burned(c)
    vote(c, jid, challenger, False, V2, VAL)
    bond = 30
    assert c.stake_of(challenger, "verifier") == STAKE - bond and locked(c, challenger) == 0
    assert c.balance(solver) == solver_balance + bond // 2
    assert c.stake_of(solver, "solver") == STAKE and locked(c, solver, "solver") == 300
    assert burned(c) == burned_before + 2 + (bond - bond // 2)
    s = shard(c, jid)
    assert s["status"] == "verifying" and s["challenges"] == [] and s["solver"] == solver.address
    assert s["window_end"] == c.height + 3   # the window reopens in full (verify_blocks 3)
    assert events(c, jid, "slashed")[0][2:4] == [challenger.address, bond]
    # the selected verifier still has time to attest, and the shard passes
    attest(c, jid, 0, selected)
    until(c, lambda: job(c, jid)["status"] == "done")
    assert c.balance(solver) == solver_balance + bond // 2 + 100
    assert locked(c, solver, "solver") == 0


UNDECIDED = {"tie": ((V3, True), (V4, False)), "nobody voted": (), "minority for fault": ((VAL, True), (V3, True)),
             "more power for fault": ((VAL, True), (V2, False)),
             "more power against": ((V3, True), (V4, True), (VAL, False))}


@pytest.mark.parametrize("voters", UNDECIDED.values(), ids=UNDECIDED.keys())
def test_an_expired_dispute_without_two_thirds_slashes_nobody_and_refunds_the_bond(voters):
    """Only 2/3 of the power decides; at the deadline an undecided challenge is returned, whatever
    the votes, and the shard is verified again with its window reopened in full."""
    c, jid, leaves, solver, selected, challenger = disputed_world(dispute_blocks=4)
    deadline = challenges(c, jid)[0]["deadline"]
    for k, fault in voters:
        vote(c, jid, challenger, fault, k)
    until(c, lambda: c.height == deadline)
    assert shard(c, jid)["status"] == "disputed"
    stakes = {k: c.stake_of(k, "verifier") for k in (challenger, selected)}
    block(c)
    s = shard(c, jid)
    assert s["status"] == "verifying" and s["challenges"] == [] and s["window_end"] == c.height + 3
    assert c.stake_of(solver, "solver") == STAKE and locked(c, solver, "solver") == 300
    assert {k: c.stake_of(k, "verifier") for k in (challenger, selected)} == stakes
    assert locked(c, challenger) == 0 and events(c, jid, "slashed") == []
    assert events(c, jid, "undecided")[0][2] == challenger.address


def test_a_shard_cleared_of_an_early_challenge_is_still_verified_by_drawn_verifiers():
    c = world()
    jid = submit(c, shards=1, verify_blocks=3)
    commit(c, jid)
    # an accomplice challenges before the draw, in the block after the commit, and loses
    challenge(c, jid, R1, -1)
    vote(c, jid, R1, False, VAL, V2)
    block(c)
    s = shard(c, jid)
    assert s["status"] == "verifying" and s["verifiers"], "no verifier was ever drawn for this shard"
    assert s["window_end"] >= c.height + 3 - 1


def test_a_failed_challenge_always_costs_the_challenger_something():
    """Challenging needs free verifier stake for the whole bond (0.3 x the reward): with 29 it is
    refused, with 30 it is accepted and all of it is lost when the challenge fails."""
    c = world(verifiers=(R1, R2))
    jid = submit(c, shards=1)
    commit(c, jid)
    block(c, stake(NEWCOMER, "verifier", 29, c.nonce(NEWCOMER)))   # >= min_verifier_stake (1)
    assert "needs 30 of free verifier stake" in refused(c, NEWCOMER, "challenge", challenge_body(jid, 0, 0, -1))
    block(c, stake(NEWCOMER, "verifier", 1, c.nonce(NEWCOMER)))
    challenge(c, jid, NEWCOMER, -1)
    vote(c, jid, NEWCOMER, False, VAL, V2)
    assert shard(c, jid)["status"] in ("committed", "verifying")
    assert c.stake_of(NEWCOMER, "verifier") == 0


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
