"""consensus.jobs, disputes: the validators' votes on a challenged shard, what 2/3+ of the power
decides either way (who is slashed, who is paid, what happens to the shard), how an expired
dispute is settled, and that a solver's stake stays at risk while it holds a shard.

The world and its moves are in tests/jobworld.py.
"""
from __future__ import annotations

import pytest

from tests.chainfactory import ALICE, VAL, Chain, challenge_body, commit_body, stake
from tests.jobworld import (NEWCOMER, R1, R2, S1, STAKE, V2, V3, V4, attest, block, blocks, burned, commit, events,
                            job, leaves_for, load, refused, shard, solver_of, submit, tx, until, verifying_world,
                            world)


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
    assert "missing: fault" in refused(c, VAL, "dispute_vote", {"job": jid, "round": 0, "shard": 0})
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
