"""consensus.jobs, challenges: who may challenge a committed shard, which interval, what the
challenge must prove under the commit's root, and the dispute that it opens.

The world and its moves (verifying_world among them) are in tests/jobworld.py.
"""
from __future__ import annotations

from consensus import merkle
from tests.chainfactory import VAL, challenge_body, fake_leaves
from tests.jobworld import (NEWCOMER, R1, R2, S1, S2, S3, STAKE, attest, block, challenges, commit, events, fork, job,
                            locked, refused, selection, shard, solver_of, submit, tx, until, verifying_world, world)


# -- challenges ---------------------------------------------------------------------------------

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
    padded = leaves + leaves[:2]  # so that a body can name leaves past the last one
    assert "challenge takes exactly the fields" in refused(
        c, challenger, "challenge", challenge_body(jid, 0, 0, -2, padded))
    for interval in (50, 51):
        assert "interval must be between -1 (the start checkpoint) and 49" in refused(
            c, challenger, "challenge", challenge_body(jid, 0, 0, interval, padded))
    assert "challenge takes exactly the fields" in refused(c, challenger, "challenge",
                                                           {"job": jid, "round": 0, "shard": 0, "interval": True})
    for interval in (-1, 0, 49):
        f = fork(c)
        block(f, tx(f, challenger, "challenge", challenge_body(jid, 0, 0, interval, leaves)))
        assert [ch["interval"] for ch in challenges(f, jid)] == [interval]


def test_challenge_of_an_interval_must_prove_both_of_its_ends():
    c, jid, leaves, solver, selected, challenger = verifying_world()
    cases = [
        (dict(start_leaf=leaves[2]), "start_leaf is not leaf 1"),
        (dict(end_leaf=leaves[1]), "end_leaf is not leaf 2"),
        (dict(end_proof=merkle.proof(leaves, 3)), "end_leaf is not leaf 2"),
        (dict(start_leaf=b"\x07" * 32), "start_leaf is not leaf 1"),
        (dict(start_proof=None), "missing: start_proof"),
        (dict(end_leaf="aa" * 32), "challenge.end_leaf must be 32 bytes"),
    ]
    for change, reason in cases:
        body = challenge_body(jid, 0, 0, 1, leaves, **change)
        body = {k: v for k, v in body.items() if v is not None}
        assert reason in refused(c, challenger, "challenge", body)
    # a different tree's leaves do not prove anything about this commit
    other = fake_leaves(5, b"another solver")
    assert "is not leaf" in refused(c, challenger, "challenge", challenge_body(jid, 0, 0, 1, other))


def test_a_challenge_opens_a_dispute_that_keeps_the_shard_from_settling():
    """The challenge is recorded with its bond (0.3 x the reward) locked and, in this exact
    profile, a bisection game over its k = 2 steps (one pair of moves of at most 10 blocks
    each, added to the dispute's deadline); the shard cannot
    settle while it is open, even past its window, but the drawn verifiers may still attest and
    others may still challenge (several challenges may be open at once, one per challenger)."""
    c, jid, leaves, solver, selected, challenger = verifying_world(dispute_blocks=7)
    window_end = shard(c, jid)["window_end"]
    block(c, tx(c, challenger, "challenge", challenge_body(jid, 0, 0, 2, leaves)))
    s = shard(c, jid)
    assert s["status"] == "disputed"
    assert s["challenges"] == [{"challenger": challenger.address, "kind": "compute", "interval": 2,
                                "start_leaf": leaves[2], "end_leaf": leaves[3], "opened": c.height,
                                "respond_by": c.height + 6, "deadline": c.height + 7 + 20, "bond": 30, "fee": 0,
                                "votes": [], "game": {"lo": 4, "hi": 6, "lo_hash": leaves[2], "hi_hash": leaves[3],
                                                      "mid_hash": b"", "move_by": c.height + 10, "serve_by": 0,
                                                      "moves": 0}}]
    assert locked(c, challenger) == 30
    assert "already have a challenge open" in refused(c, challenger, "challenge", challenge_body(jid, 0, 0, -1))
    attest(c, jid, 0, selected)
    assert selection(c, jid, 0, selected)["attested"]
    block(c, tx(c, selected, "challenge", challenge_body(jid, 0, 0, -1)))
    assert [ch["challenger"] for ch in challenges(c, jid)] == [challenger.address, selected.address]
    until(c, lambda: c.height == window_end + 2)
    assert shard(c, jid)["status"] == "disputed"
    assert [e[2] for e in events(c, jid, "challenge")] == [challenger.address, selected.address]
    assert events(c, jid, "paid") == []


def test_a_start_challenge_names_the_committed_first_checkpoint():
    c, jid, leaves, solver, selected, challenger = verifying_world()
    block(c, tx(c, challenger, "challenge", challenge_body(jid, 0, 0, -1)))
    [ch] = challenges(c, jid)
    assert ch["interval"] == -1 and ch["start_leaf"] == ch["end_leaf"] == leaves[0]


def test_a_selected_verifier_may_challenge_instead_of_attesting():
    c, jid, leaves, solver, selected, challenger = verifying_world()
    block(c, tx(c, selected, "challenge", challenge_body(jid, 0, 0, 0, leaves)))
    assert shard(c, jid)["status"] == "disputed"


def test_challenges_close_with_the_verification_window():
    c, jid, leaves, solver, selected, challenger = verifying_world()
    attest(c, jid, 0, selected)
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
