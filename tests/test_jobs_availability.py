"""consensus.jobs, availability challenges: a verifier that cannot fetch the manifest or a
checkpoint names it (with its proof), pays `challenge_fee` into the job's escrow and locks its
bond; referees decide whether the solver served it. Not served: the solver forfeits its
collateral and the challenger gets its fee back and a share. Served: the challenger loses only
the fee. Undecided: everything is refunded and the window reopens.

The world is in tests/jobworld.py (every block checks the token supply).
"""
from __future__ import annotations

from consensus import merkle
from tests.chainfactory import availability_body
from tests.jobworld import (REFEREES, STAKE, attest, block, burned, challenges, escrow, events, fork, locked, refused, shard,
                            tx, until, verifying_world, vote, vote_body)

FEE, BOND, COLLATERAL = 100, 30, 300   # the default challenge_fee; 0.3x and 3x the reward of 100


def unavailable_world(leaf: int = 7, **params):
    """verifying_world (dispute_blocks 12, response_blocks 4) in which the challenger has named
    `leaf` (-1: the manifest) as not served; returns the world's tuple and the balances, escrow
    and burned total from just before the challenge."""
    c, jid, leaves, solver, selected, challenger = verifying_world(dispute_blocks=12, response_blocks=4, **params)
    before = {"balance": c.balance(challenger), "escrow": escrow(c, jid), "burned": burned(c)}
    block(c, tx(c, challenger, "challenge", availability_body(jid, 0, 0, leaves, leaf)))
    return c, jid, leaves, solver, selected, challenger, before


def test_an_availability_challenge_names_the_manifest_or_a_leaf_with_its_proof():
    c, jid, leaves, solver, selected, challenger = verifying_world()
    body = availability_body(jid, 0, 0, leaves, 7)
    bad = [
        (dict(availability_body(jid, 0, 0, leaves, -1), unavailable=leaves[0]), "not the commit's manifest"),
        (dict(body, proof=merkle.proof(leaves, 8)), "unavailable is not leaf 7"),
        (dict(body, unavailable=leaves[8]), "unavailable is not leaf 7"),
        (dict(body, leaf=51), "leaf must be -1 (the manifest) or a leaf index below 51"),
        (dict(body, leaf=-2), "challenge.leaf must be"),
        ({k: v for k, v in body.items() if k != "proof"}, "missing: proof"),
    ]
    for change, reason in bad:
        assert reason in refused(c, challenger, "challenge", change), reason
    for leaf, blob in ((-1, availability_body(jid, 0, 0, leaves, -1)["unavailable"]), (7, leaves[7]), (50, leaves[50])):
        f = fork(c)
        block(f, tx(f, challenger, "challenge", availability_body(jid, 0, 0, leaves, leaf)))
        [ch] = challenges(f, jid)
        assert ch == {"challenger": challenger.address, "kind": "available", "interval": leaf, "start_leaf": blob,
                      "end_leaf": blob, "opened": f.height, "respond_by": f.height + 10, "deadline": f.height + 40,
                      "bond": BOND, "fee": FEE, "votes": [], "game": None}
        assert shard(f, jid)["status"] == "disputed"


def test_the_fee_is_taken_from_the_challenger_and_held_in_the_jobs_escrow():
    c, jid, leaves, solver, selected, challenger, before = unavailable_world()
    assert c.genesis.params["challenge_fee"] == FEE
    assert c.balance(challenger) == before["balance"] - 1 - FEE
    assert escrow(c, jid) == before["escrow"] + FEE
    assert burned(c) == before["burned"] + 1          # only the tx fee is burned so far
    assert locked(c, challenger) == BOND


def test_an_availability_challenge_the_challenger_cannot_pay_for_is_refused():
    c, jid, leaves, solver, selected, challenger = verifying_world(challenge_fee=5_000)
    assert "costs a fee of 5000" in refused(c, challenger, "challenge", availability_body(jid, 0, 0, leaves, -1))


def test_not_served_by_two_thirds_forfeits_the_collateral_and_repays_the_challenger_with_a_share():
    c, jid, leaves, solver, selected, challenger, before = unavailable_world()
    until(c, lambda: c.height > challenges(c, jid)[0]["respond_by"])   # referees wait for the deadline
    vote(c, jid, challenger, True, *REFEREES)
    assert c.stake_of(solver, "solver") == STAKE - COLLATERAL and locked(c, solver, "solver") == 0
    assert c.balance(challenger) == before["balance"] - 1 + COLLATERAL // 2
    assert c.stake_of(challenger, "verifier") == STAKE and locked(c, challenger) == 0
    assert escrow(c, jid) == before["escrow"]
    assert c.stake_of(selected, "verifier") == STAKE and locked(c, selected) == 0
    s = shard(c, jid)
    assert s["tried"] == [solver.address] and s["challenges"] == [] and s["commit"] is None
    [slashed] = events(c, jid, "slashed")
    assert slashed[2:4] == [solver.address, COLLATERAL] and "did not serve a blob in time" in slashed[4]


def test_served_by_two_thirds_costs_the_challenger_only_its_fee():
    c, jid, leaves, solver, selected, challenger, before = unavailable_world(leaf=-1)
    vote(c, jid, challenger, False, *REFEREES)
    assert c.balance(challenger) == before["balance"] - 1 - FEE
    assert c.stake_of(challenger, "verifier") == STAKE and locked(c, challenger) == 0
    assert burned(c) == before["burned"] + 1 + 2 + FEE   # the challenge, two votes, and the fee
    assert escrow(c, jid) == before["escrow"]
    assert c.stake_of(solver, "solver") == STAKE and locked(c, solver, "solver") == COLLATERAL
    s = shard(c, jid)
    assert s["status"] == "verifying" and s["challenges"] == [] and s["window_end"] == c.height + 3
    assert events(c, jid, "slashed") == [] and events(c, jid, "served")[0][2:4] == [solver.address, FEE]


def test_no_decision_by_the_deadline_refunds_the_fee_slashes_nobody_and_reopens_the_window():
    c, jid, leaves, solver, selected, challenger, before = unavailable_world()
    deadline, respond_by = challenges(c, jid)[0]["deadline"], challenges(c, jid)[0]["respond_by"]
    until(c, lambda: c.height > respond_by)
    vote(c, jid, challenger, True, REFEREES[0])        # 4_000 of 10_000: not enough
    until(c, lambda: c.height == deadline)
    assert shard(c, jid)["status"] == "disputed"
    block(c)
    assert c.balance(challenger) == before["balance"] - 1
    assert escrow(c, jid) == before["escrow"] and locked(c, challenger) == 0
    assert c.stake_of(challenger, "verifier") == STAKE and c.stake_of(solver, "solver") == STAKE
    s = shard(c, jid)
    assert s["status"] == "verifying" and s["window_end"] == c.height + 3
    assert events(c, jid, "slashed") == [] and events(c, jid, "undecided")[0][2] == challenger.address


def test_a_solver_that_serves_in_time_keeps_its_shard_and_is_paid_less_the_fee():
    """Withholding until asked saves nothing and costs the challenge fee off the reward."""
    c, jid, leaves, solver, selected, challenger, before = unavailable_world(leaf=50, challenge_fee=40)
    vote(c, jid, challenger, False, *REFEREES)
    attest(c, jid, 0, selected)
    paid_before = c.balance(solver)
    until(c, lambda: shard(c, jid)["status"] == "passed" or shard(c, jid)["solver"] is None)
    assert c.balance(solver) == paid_before + 100 - 40 and locked(c, solver, "solver") == 0
    assert escrow(c, jid) is None and events(c, jid, "done")  # the 40 went back to the submitter


def test_a_blob_cannot_be_voted_unserved_before_the_response_deadline():
    """Referees wait for the solver's deadline; the chain refuses an early "not served" vote
    (a "served" vote may come at once)."""
    c, jid, leaves, solver, selected, challenger, before = unavailable_world()
    body = vote_body(c, jid, challenger, True)
    assert "before the solver's response deadline" in refused(c, REFEREES[0], "dispute_vote", body)
    until(c, lambda: c.height >= challenges(c, jid)[0]["respond_by"])
    block(c, tx(c, REFEREES[0], "dispute_vote", body))

