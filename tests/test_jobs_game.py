"""consensus.jobs.game: a challenge of an exact-profile interval is narrowed to one step by
bisection before the referees vote; whoever misses a move loses; tolerance-profile challenges,
start challenges and intervals past a divergence are voted on directly.

The chain never sees a checkpoint here (midpoint hashes are made up): what the referees'
single step decides is tested with real training in tests/test_verification_game.py.
"""
from __future__ import annotations

from tests.chainfactory import challenge_body
from tests.jobworld import (REFEREES, STAKE, attest, block, blocks, challenge, challenges, commit, draw, events,
                            game_body, job, locked, narrow, open_game, refused, shard, solver_of, submit, tx,
                            verifiers_of, verifying_world, vote, vote_body, world)
from consensus.crypto import sha256

MOVE = 10  # the default move_blocks


def _game_world(k: int = 8, **params):
    """A one-shard job whose intervals are k steps, committed, drawn; R-challenger unselected."""
    c = world(**params)
    jid = submit(c, shards=1, steps=50 * k, k=k, verify_blocks=3)
    leaves = commit(c, jid)[0]
    draw(c)
    drawn = verifiers_of(c, jid)
    from tests.jobworld import VERIFIERS
    challenger = next(v for v in VERIFIERS if v not in drawn)
    return c, jid, leaves, solver_of(c, jid), drawn, challenger


def _mid(n: int) -> bytes:
    return sha256(b"midpoint %d" % n)


def test_an_exact_profile_challenge_opens_a_game_over_the_intervals_steps():
    c, jid, leaves, solver, _, challenger = _game_world(k=8)
    challenge(c, jid, challenger, 3, leaves, play=False)
    game = open_game(c, jid, challenger)
    assert (game["lo"], game["hi"], game["lo_hash"], game["hi_hash"]) == (24, 32, leaves[3], leaves[4])
    assert game["mid_hash"] == b"" and game["move_by"] == c.height + MOVE and game["moves"] == 0
    # the whole dispute's deadline leaves room for 3 rounds of 2 moves, then the referees
    [ch] = challenges(c, jid)
    assert ch["deadline"] == ch["opened"] + 40 + 2 * 3 * MOVE


def test_no_game_for_the_tolerance_profile_the_start_or_past_a_divergence():
    c = world()
    jid = submit(c, shards=1, profile="tolerance", verify_blocks=3)
    leaves = commit(c, jid)[0]
    draw(c)
    challenge(c, jid, next(v for v in (verifiers_of(c, jid)[0],)), 2, leaves, play=False)
    assert challenges(c, jid)[0]["game"] is None
    c, jid, leaves, solver, _, challenger = verifying_world()
    challenge(c, jid, challenger, -1, play=False)
    assert challenges(c, jid)[0]["game"] is None
    c = world()
    jid = submit(c, shards=1, verify_blocks=3)
    leaves = commit(c, jid, diverged_leaf=10)[0]
    draw(c)
    from tests.jobworld import VERIFIERS
    challenger = next(v for v in VERIFIERS if v not in verifiers_of(c, jid))
    challenge(c, jid, challenger, 10, leaves, play=False)   # starts at the non-finite leaf: judged by rule
    challenge(c, jid, verifiers_of(c, jid)[0], 9, leaves, play=False)  # into the divergence: bit for bit
    assert [ch["game"] is None for ch in challenges(c, jid)] == [True, False]


def test_agree_moves_the_agreed_step_up_disagree_moves_the_disputed_step_down():
    c, jid, leaves, solver, _, challenger = _game_world(k=8)
    challenge(c, jid, challenger, 0, leaves, play=False)
    ranges = []
    for n, agree in enumerate((True, False, True)):
        block(c, tx(c, solver, "midpoint", game_body(c, jid, challenger, hash=_mid(n))))
        assert open_game(c, jid, challenger)["mid_hash"] == _mid(n)
        block(c, tx(c, challenger, "answer", game_body(c, jid, challenger, agree=agree)))
        g = open_game(c, jid, challenger)
        ranges.append((g["lo"], g["hi"]))
    assert ranges == [(4, 8), (4, 6), (5, 6)]   # agree at 4, disagree at 6, agree at 5
    g = open_game(c, jid, challenger)
    assert (g["lo_hash"], g["hi_hash"]) == (_mid(2), _mid(1)) and g["moves"] == 6
    assert g["serve_by"] == c.height + 10 and g["move_by"] == 0  # one step left: the agreed state is due
    assert [e[1] for e in events(c, jid, "answer")][-1:] == ["answer"]


def test_moves_are_refused_out_of_turn_from_the_wrong_party_or_once_one_step_is_left():
    c, jid, leaves, solver, drawn, challenger = _game_world(k=4)
    challenge(c, jid, challenger, 1, leaves, play=False)
    assert "not the solver's move" not in refused(c, drawn[0], "midpoint", game_body(c, jid, challenger, hash=_mid(0)))
    assert "only the shard's solver" in refused(c, drawn[0], "midpoint", game_body(c, jid, challenger, hash=_mid(0)))
    assert "no midpoint to answer" in refused(c, challenger, "answer", game_body(c, jid, challenger, agree=True))
    block(c, tx(c, solver, "midpoint", game_body(c, jid, challenger, hash=_mid(0))))
    assert "not the solver's move" in refused(c, solver, "midpoint", game_body(c, jid, challenger, hash=_mid(1)))
    assert "only the challenger" in refused(c, solver, "answer", game_body(c, jid, challenger, agree=True))
    body = dict(game_body(c, jid, challenger, agree=True), opened=shard(c, jid)["challenges"][0]["opened"] - 1)
    assert "no bisection game is open" in refused(c, challenger, "answer", body)
    # the referees wait for the game
    assert "still being played" in refused(c, REFEREES[0], "dispute_vote", vote_body(c, jid, challenger, True))
    narrow(c, jid, challenger)
    assert open_game(c, jid, challenger)["hi"] - open_game(c, jid, challenger)["lo"] == 1
    assert "not the solver's move" in refused(c, solver, "midpoint", game_body(c, jid, challenger, hash=_mid(2)))
    assert "no midpoint to answer" in refused(c, challenger, "answer", game_body(c, jid, challenger, agree=False))
    vote(c, jid, challenger, False, *REFEREES)   # now they decide, as for any challenge
    assert challenges(c, jid) == [] and locked(c, challenger) == 0


def _silent_solver(k: int = 8):
    """Both drawn verifiers attest every interval; a challenge of interval 0 whose solver never moves."""
    c, jid, leaves, solver, drawn, challenger = _game_world(k=k, samples_per_shard=50)
    attest(c, jid, 0, *drawn)
    challenge(c, jid, challenger, 0, leaves, play=False)
    blocks(c, MOVE)
    assert open_game(c, jid, challenger) is not None   # the deadline block itself is still in time
    block(c)
    return c, jid, solver, drawn, challenger


def test_a_solver_that_misses_its_move_loses_the_game_and_the_referees_recompute_the_interval():
    """Its silence is not taken as the fault: it loses the one-step judgement, and a fault
    found by recomputing slashes it and the verifiers that attested the interval (a caught
    cheater cannot stop playing to spare them)."""
    c, jid, solver, drawn, challenger = _silent_solver()
    [ch] = challenges(c, jid)
    assert ch["game"] is None and shard(c, jid)["status"] == "disputed"
    assert any("missed its move" in e[4] for e in events(c, jid, "forfeit"))
    collateral = shard(c, jid)["collateral"]
    lock = shard(c, jid)["verifiers"][0]["locked"]
    vote(c, jid, challenger, True, *REFEREES)
    assert shard(c, jid)["solver"] != solver.address and c.stake_of(solver, "solver") == STAKE - collateral
    assert all(c.stake_of(v, "verifier") == STAKE - lock for v in drawn)


def test_an_honest_solver_that_was_offline_for_its_move_is_not_slashed_when_the_interval_is_right():
    c, jid, solver, drawn, challenger = _silent_solver()
    bond = challenges(c, jid)[0]["bond"]
    vote(c, jid, challenger, False, *REFEREES)
    assert c.stake_of(solver, "solver") == STAKE and shard(c, jid)["solver"] == solver.address
    assert c.stake_of(challenger, "verifier") == STAKE - bond


def test_a_challenger_that_misses_its_answer_loses_its_bond():
    c, jid, leaves, solver, _, challenger = _game_world(k=8)
    challenge(c, jid, challenger, 2, leaves, play=False)
    bond = challenges(c, jid)[0]["bond"]
    block(c, tx(c, solver, "midpoint", game_body(c, jid, challenger, hash=_mid(0))))
    blocks(c, MOVE + 1)
    assert challenges(c, jid) == [] and shard(c, jid)["status"] == "verifying"
    assert c.stake_of(challenger, "verifier") == STAKE - bond and locked(c, challenger) == 0


def test_several_games_run_at_once_and_one_fault_closes_them_all():
    c, jid, leaves, solver, drawn, challenger = _game_world(k=2)
    challenge(c, jid, challenger, 5, leaves, play=False)
    challenge(c, jid, drawn[0], 7, leaves, play=False)
    assert [ch["game"]["lo"] for ch in challenges(c, jid)] == [10, 14]
    narrow(c, jid, drawn[0])
    narrow(c, jid, challenger)
    blocks(c, 7)  # past respond_by, so a fault may be decided
    assert all(ch["game"]["hi"] - ch["game"]["lo"] == 1 for ch in challenges(c, jid))
    vote(c, jid, drawn[0], True, *REFEREES)
    assert shard(c, jid)["solver"] != solver.address and challenges(c, jid) == []
    assert locked(c, challenger) == 0 and c.stake_of(challenger, "verifier") == STAKE


def test_a_game_for_k_of_1_starts_at_one_step():
    c = world()
    jid = submit(c, shards=1, steps=50, k=1, verify_blocks=3)
    leaves = commit(c, jid)[0]
    draw(c)
    from tests.jobworld import VERIFIERS
    challenger = next(v for v in VERIFIERS if v not in verifiers_of(c, jid))
    block(c, tx(c, challenger, "challenge", challenge_body(jid, 0, 0, 4, leaves)))
    g = open_game(c, jid, challenger)
    assert (g["lo"], g["hi"], g["move_by"]) == (4, 5, 0) and g["serve_by"] == c.height + 10
    assert job(c, jid)["shards"][0]["challenges"][0]["deadline"] == c.height + 40
