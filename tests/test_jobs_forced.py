"""consensus.jobs.reveal and consensus.forced: forced errors keep verifiers computing.

Shards carry a planted fault at the configured rate, drawn from the solver's hash-chain
element and the assignment beacon; the first challenger of one wins the jackpot and nobody is
slashed for it; verifiers that attested it before the reveal lose their collateral; a solver
that hides its reveal forfeits its reward and a small slash. Every block checks the supply
(the jackpot pool included).
"""
from __future__ import annotations

import math
import secrets

from consensus.forced import forced_interval
from consensus.genesis import DEFAULT_PARAMS
from tests.chainfactory import ALICE, challenge_body
from tests.jobworld import (FORCED_ERRORS, KEYS, REFEREES, STAKE, VERIFIERS, attest, block, blocks, challenge,
                            commit, draw, escrow, events, forced_of, job, locked, pool, refused, reveal, reveal_body,
                            secret, selection, shard, solver_of, submit, tx, until, verifiers_of, vote, vote_body, world)

ALWAYS = dict(FORCED_ERRORS, forced_error_ppm=1_000_000)  # every shard carries one: tests can aim at it
N = 50  # intervals of the world's job spec


# -- the draw ---------------------------------------------------------------------------------

def test_forced_errors_fire_at_the_configured_rate_and_uniformly_over_intervals():
    """40,000 draws at the genesis rate: the count is within 4 standard deviations of the
    expected one, and the interval counts pass a chi-square test (p > 0.0001) over 50 intervals."""
    rate, draws = DEFAULT_PARAMS["forced_error_ppm"], 40_000
    hits = [forced_interval(secrets.token_bytes(32), secrets.token_bytes(32), N, rate) for _ in range(draws)]
    fired = [h for h in hits if h is not None]
    p = rate / 1_000_000
    sd = math.sqrt(draws * p * (1 - p))
    assert abs(len(fired) - draws * p) < 4 * sd, (len(fired), draws * p, sd)
    counts = [fired.count(i) for i in range(N)]
    expected = len(fired) / N
    chi2 = sum((x - expected) ** 2 / expected for x in counts)
    assert chi2 < 100, chi2   # 49 degrees of freedom: P(chi2 > 100) ~ 2e-5
    assert forced_interval(b"x" * 32, b"y" * 32, N, 0) is None
    assert all(forced_interval(secrets.token_bytes(32), b"b" * 32, N, 1_000_000) is not None for _ in range(100))


def test_no_forced_error_ends_past_a_declared_divergence():
    for _ in range(300):
        f = forced_interval(secrets.token_bytes(32), b"b" * 32, N, 1_000_000, diverged_leaf=20)
        assert f is None or f + 1 < 20


# -- the pool -----------------------------------------------------------------------------------

def test_every_job_pays_the_pool_fee_at_submission_and_it_is_never_refunded():
    c = world(**FORCED_ERRORS)
    before = c.balance(ALICE)
    jid = submit(c, shards=1)
    [fee] = events(c, jid, "pool fee")
    assert fee[3] == escrow(c, jid) * 10_000 // 1_000_000 and pool(c) == fee[3] > 0
    assert c.balance(ALICE) == before - 1 - escrow(c, jid) - fee[3]
    commit(c, jid)
    draw(c)
    attest(c, jid, 0)
    until(c, lambda: shard(c, jid)["status"] == "revealing")
    reveal(c, jid)
    assert job(c, jid)["status"] == "done" and pool(c) == fee[3]   # the refund leaves the pool alone


# -- a challenge of the forced interval -----------------------------------------------------------

def _forced_world(**spec):
    """One shard committed with a forced error (every verifier checks every interval); returns
    (chain, job, leaves, solver, drawn verifiers, the other verifier, forced interval)."""
    c = world(**ALWAYS, samples_per_shard=N)
    jid = submit(c, shards=1, verify_blocks=8, **spec)
    leaves = commit(c, jid)[0]
    draw(c)
    drawn = verifiers_of(c, jid)
    other = next(v for v in VERIFIERS if v not in drawn)
    return c, jid, leaves, solver_of(c, jid), drawn, other, forced_of(c, jid)


def test_the_first_challenger_of_a_forced_error_wins_the_jackpot_and_nobody_is_slashed():
    c, jid, leaves, solver, drawn, other, f = _forced_world()
    challenge(c, jid, other, f, leaves, play=False)
    challenge(c, jid, drawn[0], f, leaves, play=False)
    jackpot = min(DEFAULT_PARAMS["jackpot"], pool(c) * DEFAULT_PARAMS["jackpot_pool_ppm"] // 1_000_000)
    assert jackpot > 0
    balance, in_pool = c.balance(other), pool(c)
    reveal(c, jid)
    s = shard(c, jid)
    assert s["challenges"] == [] and s["status"] == "verifying" and (s["forced"], s["revealed_at"]) == (f, c.height)
    assert c.balance(other) == balance + jackpot and pool(c) == in_pool - jackpot
    assert [e[2] for e in events(c, jid, "jackpot")] == [other.address]
    assert locked(c, other) == 0 and c.stake_of(other, "verifier") == STAKE
    assert locked(c, drawn[0]) == selection(c, jid, 0, drawn[0])["locked"]  # its draw lock, not its bond
    assert events(c, jid, "slashed") == []
    # a plain challenge of it is refused (one sent before the reveal landed must not become a
    # claim its sender never made); an unplanted one says "not the planted change" (no game)
    assert "challenge it as unplanted" in refused(c, other, "challenge", challenge_body(jid, 0, 0, f, leaves))
    g = (f + 1) % N
    assert "names the shard's revealed" in refused(c, other, "challenge",
                                                   challenge_body(jid, 0, 0, g, leaves, unplanted=True))
    block(c, tx(c, other, "challenge", challenge_body(jid, 0, 0, f, leaves, unplanted=True)))
    [again] = shard(c, jid)["challenges"]
    assert again["kind"] == "unplanted" and again["game"] is None
    vote(c, jid, other, False, *REFEREES)   # it is the planted change: the challenger was wrong
    assert c.stake_of(other, "verifier") == STAKE - again["bond"] and shard(c, jid)["challenges"] == []
    # the drawn verifiers attest after the reveal: not blamed; the solver is paid in full
    attest(c, jid, 0, *drawn)
    until(c, lambda: shard(c, jid)["status"] == "passed")
    paid = {e[2]: e[3] for e in events(c, jid, "paid")}
    assert paid[solver.address] == 100 and all(v.address in paid for v in drawn)
    assert [e[2] for e in events(c, jid, "slashed")] == [other.address]   # only the wrong second challenge
    assert c.stake_of(solver, "solver") == STAKE


def test_a_jobs_jackpots_never_take_more_from_the_pool_than_its_own_pool_fee():
    """A solver knows its forced interval and could have a sybil collect the jackpot: capped by
    what the job paid in, that only ever hands a job's own fee back, never drains the pool."""
    c = world(**ALWAYS, samples_per_shard=N, jackpot=10**9, jackpot_pool_ppm=1_000_000)
    rich = submit(c, shards=1, reward_per_shard=100_000)   # fills the pool
    small = submit(c, shards=2, verify_blocks=8)
    fee = events(c, small, "pool fee")[0][3]
    assert pool(c) > 10 * fee and job(c, rich)["status"] == "active"
    leaves = commit(c, small)
    draw(c)
    for i in range(2):
        challenger = next(v for v in VERIFIERS if v not in verifiers_of(c, small, i))
        challenge(c, small, challenger, forced_of(c, small, i), leaves[i], i=i, play=False)
        reveal(c, small, i)
    paid = [e[3] for e in events(c, small, "jackpot")]
    assert sum(paid) == fee and paid[0] == fee and job(c, small)["jackpots_left"] == 0


def test_a_reveal_before_the_window_closes_only_answers_a_challenge_of_the_forced_interval():
    c, jid, leaves, solver, drawn, other, f = _forced_world()
    assert "only answers a challenge" in refused(c, solver, "reveal", reveal_body(c, jid))
    g = (f + 1) % N
    challenge(c, jid, other, g, leaves, play=False)    # an honest interval: the reveal does not answer it
    assert "only answers a challenge" in refused(c, solver, "reveal", reveal_body(c, jid))
    assert "not secret" in refused(c, solver, "reveal", reveal_body(c, jid, secret_=b"\x01" * 32))
    other_secret = dict(reveal_body(c, jid), secret=secret(solver, 2, "solver"))  # right tree, wrong leaf
    assert "not secret" in refused(c, solver, "reveal", other_secret)
    assert "not secret" in refused(c, solver, "reveal", dict(reveal_body(c, jid), proof=[]))
    assert "only the shard's solver" in refused(c, other, "reveal", reveal_body(c, jid))


def test_a_fault_vote_waits_for_the_solvers_response_deadline():
    """Until then the solver may reveal that the interval is its forced error."""
    c, jid, leaves, solver, drawn, other, f = _forced_world(profile="tolerance")
    challenge(c, jid, other, f, leaves)
    assert "before the solver's response deadline" in refused(c, REFEREES[0], "dispute_vote",
                                                              vote_body(c, jid, other, True))
    block(c, tx(c, REFEREES[0], "dispute_vote", vote_body(c, jid, other, False)))  # no fault: any time


def test_a_solver_that_does_not_reveal_when_challenged_on_its_forced_error_is_slashed_like_a_cheat():
    c, jid, leaves, solver, drawn, other, f = _forced_world(profile="tolerance")
    collateral = shard(c, jid)["collateral"]
    challenge(c, jid, other, f, leaves)
    blocks(c, 10)
    vote(c, jid, other, True, *REFEREES)
    assert shard(c, jid)["solver"] != solver.address
    assert c.stake_of(solver, "solver") == STAKE - collateral
    assert any(e[2] == solver.address and "fraud proven" in e[4] for e in events(c, jid, "slashed"))


# -- after the window: the reveal the chain waits for ------------------------------------------

def test_verifiers_that_attested_the_forced_error_before_the_reveal_lose_their_collateral():
    c, jid, leaves, solver, drawn, other, f = _forced_world()
    lazy = drawn[0]
    attest(c, jid, 0, *drawn)           # both attest every interval, the forced one included
    assert f in selection(c, jid, 0, lazy)["intervals"]
    until(c, lambda: shard(c, jid)["status"] == "revealing")
    assert shard(c, jid)["reveal_by"] == c.height + 10
    lock = selection(c, jid, 0, lazy)["locked"]
    in_pool = pool(c)
    reveal(c, jid)
    # before anyone is slashed for it, the referees check that the interval was really wrong
    [check] = shard(c, jid)["challenges"]
    assert (check["kind"], check["interval"], check["challenger"]) == ("forced", f, solver.address)
    assert shard(c, jid)["status"] == "revealing" and events(c, jid, "slashed") == []
    vote(c, jid, solver, True, *REFEREES)   # planted: recomputing it gives another end
    assert shard(c, jid)["status"] == "passed"
    slashed = {e[2]: e for e in events(c, jid, "slashed")}
    assert set(slashed) == {v.address for v in drawn} and "forced error" in slashed[lazy.address][4]
    assert all(c.stake_of(v, "verifier") == STAKE - lock and locked(c, v) == 0 for v in drawn)
    assert pool(c) == in_pool + lock * len(drawn)          # what they lose funds later jackpots
    paid = {e[2]: e[3] for e in events(c, jid, "paid")}
    assert paid == {solver.address: 100}                   # the solver is paid; they are not


def _attested_and_revealed():
    c, jid, leaves, solver, drawn, other, f = _forced_world()
    attest(c, jid, 0, *drawn)
    until(c, lambda: shard(c, jid)["status"] == "revealing")
    reveal(c, jid)
    return c, jid, solver, drawn


def test_a_solver_whose_forced_interval_is_not_the_planted_change_is_slashed_and_the_shard_redone():
    """Attesters that found the 'forced' interval right were right (or the solver ended it on a
    model of its choosing): either way no forced error is shown, the solver misled the chain,
    and the shard is trained again by another solver; nobody else is blamed."""
    c, jid, solver, drawn = _attested_and_revealed()
    collateral = shard(c, jid)["collateral"]
    vote(c, jid, solver, False, *REFEREES)   # not the planted change
    s = shard(c, jid)
    assert s["solver"] != solver.address and solver.address in s["tried"]
    assert all(c.stake_of(v, "verifier") == STAKE and locked(c, v) == 0 for v in drawn)
    assert c.stake_of(solver, "solver") == STAKE - collateral and locked(c, solver, "solver") == 0
    assert solver.address not in {e[2] for e in events(c, jid, "paid")}
    assert any("does not end on the planted change" in e[4] for e in events(c, jid, "slashed"))


def test_an_undecided_forced_check_slashes_nobody():
    c, jid, solver, drawn = _attested_and_revealed()
    until(c, lambda: shard(c, jid)["status"] == "passed", limit=45)
    assert events(c, jid, "slashed") == [] and events(c, jid, "undecided")
    paid = {e[2] for e in events(c, jid, "paid")}
    assert {solver.address, *(v.address for v in drawn)} <= paid


def test_a_solver_that_hides_its_reveal_forfeits_the_reward_and_pays_a_small_slash():
    c = world(**FORCED_ERRORS)  # whether or not the shard carries one: every solver must reveal
    jid = submit(c, shards=1, verify_blocks=3)
    commit(c, jid)
    draw(c)
    solver, drawn = solver_of(c, jid), verifiers_of(c, jid)
    attest(c, jid, 0, *drawn)
    until(c, lambda: shard(c, jid)["status"] == "revealing")
    blocks(c, 10)
    assert shard(c, jid)["status"] == "revealing"   # the reveal_by block itself is still in time
    block(c)
    s = shard(c, jid)
    assert s["status"] == "passed" and job(c, jid)["status"] == "done"
    cut = STAKE * DEFAULT_PARAMS["missed_deadline_slash_ppm"] // 1_000_000
    assert c.stake_of(solver, "solver") == STAKE - cut and locked(c, solver, "solver") == 0
    paid = {e[2] for e in events(c, jid, "paid")}
    assert solver.address not in paid and {v.address for v in drawn} <= paid
    refund = events(c, jid, "done")[0][3]
    assert refund >= 100    # the forfeited reward went back to the submitter


def test_an_honest_solver_that_reveals_in_time_is_paid_in_full_and_never_slashed():
    c = world(**FORCED_ERRORS)
    jid = submit(c, shards=2, verify_blocks=3)
    commit(c, jid)
    draw(c)
    for i in range(2):
        attest(c, jid, i)
    until(c, lambda: all(s["status"] == "revealing" for s in job(c, jid)["shards"]))
    for i in range(2):
        reveal(c, jid, i)
    assert job(c, jid)["status"] == "done" and events(c, jid, "slashed") == []
    paid = {e[2]: 0 for e in events(c, jid, "paid")}
    for e in events(c, jid, "paid"):
        paid[e[2]] += e[3]
    solvers = {s["solver"] for s in job(c, jid)["shards"]}
    assert sum(paid[a] for a in solvers) == 200 and all(c.stake_of(KEYS[a], "solver") == STAKE for a in solvers)
