"""Adversarial cases of the bisection game and of forced errors (consensus.jobs.game, .reveal).

Each test names a way a rational party could gain, or an honest one lose, at the chain rules.
Those marked xfail(strict) are known weaknesses the rules do not answer yet: they fail today
and start passing (so strict xfail turns red) once the rule that closes them lands.
"""
from __future__ import annotations

import pytest

from consensus import hashchain, jobs
from tests.jobworld import (FORCED_ERRORS, REFEREES, S1, STAKE, VERIFIERS, attest, block, blocks, challenge, commit, draw,
                            events, forced_of, locked, pool, refused, reveal, reveal_body, selection, shard,
                            solver_of, solver_secret, submit, until, verifiers_of, vote, world)

ALWAYS = dict(FORCED_ERRORS, forced_error_ppm=1_000_000)  # every shard carries one: tests can aim at it
N = 50  # intervals of the world's job spec
MOVE = 10  # the default move_blocks


def test_a_reveal_is_refused_once_reveal_by_has_passed():
    """reveal_by is the last block a reveal counts in: one in the next block must not rescue
    a solver the end of that block slashes (every other deadline is checked in its tx too)."""
    c = world(**ALWAYS)
    jid = submit(c, shards=1, verify_blocks=3)
    commit(c, jid)
    draw(c)
    attest(c, jid, 0)
    until(c, lambda: shard(c, jid)["status"] == "revealing")
    until(c, lambda: c.height == shard(c, jid)["reveal_by"])
    assert "deadline" in refused(c, solver_of(c, jid), "reveal", reveal_body(c, jid))
    block(c)
    assert shard(c, jid)["status"] == "passed"
    assert any("did not reveal" in e[4] for e in events(c, jid, "slashed"))


def test_revealing_one_shards_element_keeps_the_solvers_other_forced_errors_hidden():
    """One solver holds two shards; its element for shard 1 is revealed (a challenge of that
    shard's forced interval). Shard 0 is still in its window: if its element can be computed
    from what is on chain, anyone knows its forced interval, challenges it for the jackpot
    without computing anything, and its lazy verifiers attest everything else safely."""
    c = world(solvers=(S1,), **ALWAYS)
    jid = submit(c, shards=2, verify_blocks=8)
    assert solver_of(c, jid, 0) == solver_of(c, jid, 1)
    leaves = commit(c, jid)
    draw(c)
    challenger = next(v for v in VERIFIERS if v not in verifiers_of(c, jid, 1))
    challenge(c, jid, challenger, forced_of(c, jid, 1), leaves[1], i=1, play=False)
    reveal(c, jid, 1)
    assert shard(c, jid, 0)["status"] == "verifying" and not shard(c, jid, 0)["revealed_at"]
    # a solver's secrets are independent leaves under its registered root: the revealed one,
    # hashed any number of times (what a hash chain would give away), is never the other
    revealed, hidden = solver_secret(c, jid, 1), solver_secret(c, jid, 0)
    assert hidden not in {hashchain.hash_n(revealed, n) for n in range(1, 64)}
    chain = c.view().read(jobs.k_secrets(solver_of(c, jid, 0).address, "solver"))
    assert chain["index"] == 0 and chain["anchor"] not in (revealed, hidden)  # the record holds the root only


@pytest.mark.xfail(strict=True, reason="the jackpot goes to whoever challenges the forced interval first; the "
                                       "solver knows it from its assignment, so a sybil challenger it tells "
                                       "collects it. Bounded, not closed: a job's jackpots never exceed its own "
                                       "pool fee (test_jobs_forced), and declining a shard to look for a forced "
                                       "one costs its whole reward")
def test_a_solver_cannot_hand_the_jackpot_to_a_sybil_challenger():
    """The solver's sybil (a staked verifier not drawn for the shard, so it was never asked to
    check the forced interval) challenges it at once; the solver reveals. The sybil risked
    nothing (its bond comes back) and computed nothing."""
    c = world(**ALWAYS, samples_per_shard=N)   # a budget whose pool fee funds a jackpot
    jid = submit(c, shards=1, verify_blocks=8)
    leaves = commit(c, jid)[0]
    draw(c)
    assert pool(c) * 100_000 // 1_000_000 > 0
    sybil = next(v for v in VERIFIERS if v not in verifiers_of(c, jid))
    before = pool(c)
    challenge(c, jid, sybil, forced_of(c, jid), leaves, play=False)
    reveal(c, jid)
    assert pool(c) == before and not any(e[2] == sybil.address and e[3] for e in events(c, jid, "jackpot"))


def test_an_honest_attester_of_an_unplanted_forced_error_is_not_slashed_at_the_reveal():
    """The solver commits honest leaves everywhere (it skipped planting its forced error). A
    drawn verifier recomputes its intervals, the forced one included, finds them right and
    attests. At the reveal the chain slashes it on the spot as lazy, and pays the solver in
    full: the attester needs at least a way to show that the interval was right."""
    c = world(**ALWAYS, samples_per_shard=N)   # every drawn verifier checks every interval
    jid = submit(c, shards=1, verify_blocks=3)
    commit(c, jid)      # honest leaves: no planted error
    draw(c)
    honest = verifiers_of(c, jid)[0]
    attest(c, jid, 0, honest)
    assert forced_of(c, jid) in selection(c, jid, 0, honest)["intervals"]
    until(c, lambda: shard(c, jid)["status"] == "revealing")
    reveal(c, jid)
    assert c.stake_of(honest, "verifier") == STAKE    # not on the spot: the referees check first
    solver = solver_of(c, jid)
    vote(c, jid, solver, False, *REFEREES)  # they find the interval right: not the planted change
    assert c.stake_of(honest, "verifier") == STAKE and locked(c, honest) == 0
    assert c.stake_of(solver, "solver") < STAKE


def test_a_caught_cheat_cannot_shield_its_attesters_by_forfeiting_the_game():
    """The drawn verifiers attest a faulty interval (bribed, or lazy); a whistleblower challenges
    it. The solver, caught, stays silent in the game instead of losing it at the referees:
    its collateral is lost either way, but its attesters walk away with their stake, so the
    attest collateral deters no bribe. They must at least still answer for the interval (a
    referee recomputation of it) before they are released."""
    c = world(samples_per_shard=N)
    jid = submit(c, shards=1, steps=400, k=8, verify_blocks=3)
    leaves = commit(c, jid)[0]
    draw(c)
    drawn = verifiers_of(c, jid)
    attest(c, jid, 0, *drawn)               # every interval, the faulty one included
    whistleblower = next(v for v in VERIFIERS if v not in drawn)
    challenge(c, jid, whistleblower, 3, leaves, play=False)
    blocks(c, MOVE + 1)                     # the solver never posts its midpoint
    assert all(c.stake_of(v, "verifier") < STAKE or locked(c, v) > 0 for v in drawn)


def test_a_solver_cannot_replace_its_secrets_while_a_shard_still_needs_one():
    """A shard paying no reward locks no solver collateral, so `locked` alone does not show
    that the solver's reserved secret is still owed. Were a new root accepted then, a solver
    could pick, after a challenge, a secret that makes the challenged interval its "forced
    error" (its fraud closed with nobody slashed); and an honest worker that renews its
    exhausted secrets could no longer reveal the old one, and be slashed for it."""
    from consensus.forced import secret_root
    c = world(**ALWAYS)
    jid = submit(c, shards=1, verify_blocks=3, reward_per_shard=0)
    until(c, lambda: shard(c, jid)["status"] == "assigned")
    solver = solver_of(c, jid)
    assert locked(c, solver, "solver") == 0
    new_root = secret_root([bytes([n]) * 32 for n in range(8)])
    assert "registered" in refused(c, solver, "register_secrets", {"role": "solver", "tip": new_root, "length": 8})
    commit(c, jid)
    draw(c)
    attest(c, jid, 0)
    until(c, lambda: shard(c, jid)["status"] == "revealing")
    reveal(c, jid)  # the reserved secret still answers under the root it was reserved from
    assert shard(c, jid)["status"] == "passed" and c.stake_of(solver, "solver") == STAKE


def test_a_solver_worker_keeps_its_seed_while_a_shard_still_needs_a_secret(tmp_path):
    """The worker's side of the rule above: its secrets used up (or not the registered ones)
    and nothing locked, it must not renew its seed while it holds a shard, or the secret that
    shard reserved is lost and its reveal impossible."""
    import logging
    from node.workers.common import SecretTree, ensure_registered
    c = world(**ALWAYS)
    jid = submit(c, shards=1, verify_blocks=3, reward_per_shard=0)
    until(c, lambda: shard(c, jid)["status"] == "assigned")
    solver = solver_of(c, jid)

    class ChainAccount:  # what the node's /account answers, read from this chain
        def account(self, _me):
            v = c.view()
            return {"locked": {r: jobs.locked(v, solver.address, r) for r in ("solver", "verifier")},
                    "secrets": {r: v.read(jobs.k_secrets(solver.address, r)) for r in ("solver", "verifier")},
                    "open_shards": v.read(jobs.k_load(solver.address), 0)}

    store = SecretTree(tmp_path / "secrets.json")  # not the registered root
    seed, sent = store.seed, []
    ensure_registered(ChainAccount(), store, "me", "solver", lambda kind, body: sent.append(kind),
                      logging.getLogger("test"))
    assert sent == [] and store.seed == seed
