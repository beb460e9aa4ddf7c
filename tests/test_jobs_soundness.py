"""consensus.jobs against rational adversaries: a colluder's losing challenge cannot shield a
faulty shard, the window reopens in full after every cleared challenge, honest verifiers and
challengers are never slashed however referees behave, and a declared divergence ends a job
with every interval before it checked.

The world is in tests/jobworld.py (every block checks the token supply).
"""
from __future__ import annotations

import random
from collections import Counter

import pytest

from consensus.sampling import verifier_intervals
from tests.chainfactory import availability_body, challenge_body, commit_body
from tests.jobworld import (ALICE, REFEREES, SOLVERS, STAKE, VAL, V2, V3, V4, VERIFIERS, attest, block, challenge,
                            challenges, commit, draw, escrow, events, fork, job, leaves_for, locked, refused,
                            secret, selection, shard, solver_of, submit, tx, until, verifiers_of, verifying_world,
                            vote, vote_body, world)

N = 50        # intervals per shard of the world's job spec
FAULTY = 20   # the interval a cheating solver did not compute honestly


# -- shielding -----------------------------------------------------------------------------------

def test_a_colluders_losing_challenge_cannot_shield_a_faulty_shard():
    """The solver's accomplice (a drawn verifier) opens a wrong challenge first; the honest
    challenger opens its own beside it; the accomplice's loss leaves the shard disputed, the
    window runs out without the shard settling, and the honest challenge proves the fault."""
    c, jid, leaves, solver, colluder, honest = verifying_world(dispute_blocks=12)
    challenge(c, jid, colluder, -1)                    # the start is fine: a wrong challenge
    challenge(c, jid, honest, FAULTY, leaves)
    assert [ch["challenger"] for ch in challenges(c, jid)] == [colluder.address, honest.address]
    solver_balance = c.balance(solver)
    vote(c, jid, colluder, False, *REFEREES)
    assert c.stake_of(colluder, "verifier") == STAKE - 30 and c.balance(solver) == solver_balance + 15
    assert shard(c, jid)["status"] == "disputed" and [ch["challenger"] for ch in challenges(c, jid)] == [
        honest.address]
    window_end = shard(c, jid)["window_end"]
    until(c, lambda: c.height > window_end + 1)
    assert shard(c, jid)["status"] == "disputed" and events(c, jid, "paid") == []
    vote(c, jid, honest, True, *REFEREES)
    assert c.stake_of(solver, "solver") == STAKE - 300 and c.stake_of(honest, "verifier") == STAKE
    assert shard(c, jid)["tried"] == [solver.address] and locked(c, honest) == 0
    assert all(e[2] != solver.address for e in events(c, jid, "paid"))


def test_a_challenge_held_open_past_the_window_does_not_close_it_on_the_honest():
    """The accomplice challenges in the last block of the window, so an honest challenger is
    refused until it closes; then the window reopens for verify_blocks from the clearing height."""
    c, jid, leaves, solver, colluder, honest = verifying_world(dispute_blocks=12)
    attest(c, jid, 0, colluder)                          # the accomplice was drawn, and vouches
    window_end = shard(c, jid)["window_end"]
    until(c, lambda: c.height == window_end - 1)
    challenge(c, jid, colluder, -1)
    block(c)
    assert "window has closed" in refused(c, honest, "challenge", challenge_body(jid, 0, 0, FAULTY, leaves))
    vote(c, jid, colluder, False, *REFEREES)
    cleared_at = c.height
    s = shard(c, jid)
    assert s["status"] == "verifying" and s["window_end"] == cleared_at + 3     # verify_blocks 3
    until(c, lambda: c.height == s["window_end"] - 1)
    last = fork(c)
    challenge(last, jid, honest, FAULTY, leaves)        # still in time in the reopened window's last block
    vote(last, jid, honest, True, *REFEREES)
    assert shard(last, jid)["tried"] == [solver.address]
    block(c)
    block(c)
    assert job(c, jid)["status"] == "done"              # nobody challenged: the window closed after all


# -- honest parties are never slashed ------------------------------------------------------------

def own_intervals(c, jid, k) -> list[int]:
    """What a drawn verifier computes for itself before re-running anything."""
    s, sel = shard(c, jid), selection(c, jid, 0, k)
    return verifier_intervals(secret(k, sel["secret_index"]), s["commit"]["root"], s["beacon"], N, 1,
                              s["commit"]["diverged_leaf"] or None)


def truth(kind: str, interval: int, faulty) -> bool:
    """An honest referee's verdict: a recomputed interval is wrong only where the solver cheated;
    in these runs an availability challenge names a blob the solver never serves."""
    return kind == "available" or interval == faulty


def referee(c, jid, faulty, mode: str) -> None:
    """Validators decide the open challenges: truthfully ('online'), not at all until they expire
    ('late'), or split so that none is decided ('split'); 'late' and 'split' happen once, then the
    challengers challenge again in the reopened window and the referees are online."""
    open_ = [(ch["challenger"], ch["interval"], ch["kind"]) for ch in challenges(c, jid)]
    if mode in ("late", "split"):
        if mode == "split":
            for who, interval, kind in open_:
                vote(c, jid, KEY[who], truth(kind, interval, faulty), VAL)
                vote(c, jid, KEY[who], not truth(kind, interval, faulty), V2)
        until(c, lambda: not challenges(c, jid))
        for who, interval, kind in open_:
            challenge(c, jid, KEY[who], interval, leaves_for(c, jid))
    for who, interval, kind in open_:
        if shard(c, jid)["status"] != "disputed":
            break                                      # a proven fault closed the others
        if kind == "available":
            until(c, lambda: c.height > challenges(c, jid)[0]["respond_by"])
        vote(c, jid, KEY[who], truth(kind, interval, faulty), *REFEREES)


KEY = {k.address: k for k in VERIFIERS}


def run_job(c, seed: int, faulty, mode: str) -> bytes | None:
    """One one-shard job whose first solver cheats in `faulty` (None: honest; -1: the start;
    'manifest': it never serves its manifest); honest verifiers check their own intervals and
    challenge what they find, every later solver is honest. Returns the cheat's address."""
    jid = submit(c, shards=1, seed=seed, verify_blocks=4)
    cheat = solver_of(c, jid).address if faulty is not None else None
    leaves = commit(c, jid)[0]
    draw(c)
    drawn = verifiers_of(c, jid)
    for k in drawn:
        if faulty == "manifest":
            if not challenges(c, jid):             # one fetch failure is enough to challenge
                block(c, tx(c, k, "challenge", availability_body(jid, 0, 0, leaves, -1)))
        elif faulty is not None and (faulty == -1 or faulty in own_intervals(c, jid, k)):
            challenge(c, jid, k, faulty, leaves)
        else:
            attest(c, jid, 0, k)
    if mode == "whistleblower" and isinstance(faulty, int) and not challenges(c, jid):
        challenge(c, jid, next(k for k in VERIFIERS if k not in drawn), faulty, leaves)
    if challenges(c, jid):
        referee(c, jid, faulty, mode)
    for _ in range(3):                             # honest solvers redo a shard a fault reopened
        if job(c, jid)["status"] == "done":
            break
        until(c, lambda: shard(c, jid)["status"] in ("assigned", "verifying") or job(c, jid)["status"] == "done")
        if shard(c, jid)["status"] == "assigned":
            commit(c, jid)
            draw(c)
            attest(c, jid, 0)
        until(c, lambda: job(c, jid)["status"] == "done")
    assert job(c, jid)["status"] == "done"
    return cheat


def served_run(c, seed: int) -> None:
    """A drawn verifier could not fetch a checkpoint once and challenges; the solver does serve
    it, the referees say so, and the verifier then checks and attests."""
    jid = submit(c, shards=1, seed=seed, verify_blocks=4)
    leaves = commit(c, jid)[0]
    draw(c)
    k = verifiers_of(c, jid)[0]
    block(c, tx(c, k, "challenge", availability_body(jid, 0, 0, leaves, 7)))
    vote(c, jid, k, False, *REFEREES)
    attest(c, jid, 0)
    until(c, lambda: job(c, jid)["status"] == "done")


def test_honest_verifiers_and_challengers_are_never_slashed_whatever_the_referees_do():
    """Twelve jobs one after another: honest ones, cheats in the start, next to the last interval,
    in the last (with referees that let the dispute expire, or split), a manifest never served, a
    blob that was served after all, and cheats at random intervals that a whistleblower proves.
    Only the cheating solvers are ever slashed, each by exactly its collateral per cheat."""
    rng = random.Random(7)
    runs = [(None, "online"), (48, "whistleblower"), (-1, "online"), (N - 1, "late"), (N - 1, "split"),
            ("manifest", "online"), (None, "served")] \
        + [(rng.randrange(N - 1), "whistleblower") for _ in range(5)]
    c = world(dispute_blocks=6, response_blocks=2)
    cheats = Counter()
    for seed, (faulty, mode) in enumerate(runs):
        if mode == "served":
            served_run(c, seed)
            continue
        cheat = run_job(c, seed, faulty, mode)
        if cheat is not None:
            cheats[cheat] += 1
    slashed = [e for j in job_ids(c) for e in events(c, j, "slashed")]
    assert sorted(e[2] for e in slashed) == sorted(cheats.elements()), [e[4] for e in slashed]
    assert all(e[4].startswith("solver:") and e[3] == 300 for e in slashed)
    assert sum(cheats.values()) == 10
    assert [c.stake_of(k, "verifier") for k in VERIFIERS] == [STAKE] * 3
    assert [c.stake_of(k, "solver") for k in SOLVERS] == [STAKE - 300 * cheats[k.address] for k in SOLVERS]
    assert all(locked(c, k) == 0 for k in VERIFIERS) and all(locked(c, k, "solver") == 0 for k in SOLVERS)


def job_ids(c) -> list[bytes]:
    return sorted(k[len(b"job/"):] for k in c.state if k.startswith(b"job/"))


# -- divergence ----------------------------------------------------------------------------------

def test_a_declared_divergence_is_checked_up_to_it_and_ends_the_job_diverged():
    c = world()
    jid = submit(c, shards=1, rounds=2)
    budget = escrow(c, jid)
    start = c.balance(ALICE)
    commit(c, jid, diverged_leaf=5)
    assert "diverged at leaf 5" in events(c, jid, "commit")[0][4]
    draw(c)
    attest(c, jid, 0)
    for k in verifiers_of(c, jid):
        assert selection(c, jid, 0, k)["intervals"] == [0, 1, 2, 3, 4, N - 1] == own_intervals(c, jid, k)
    until(c, lambda: job(c, jid)["status"] != "active")
    j = job(c, jid)
    assert j["status"] == "diverged" and j["round"] == 0 and j["finals"] == []
    paid = 100 + 2 * 2 * 10   # each verifier claims 6 intervals; the shard's allowance is 2 x 2 x 10
    assert sum(e[3] for e in events(c, jid, "paid")) == paid
    [ended] = events(c, jid, "diverged")
    assert ended[2:4] == [ALICE.address, budget - paid] and escrow(c, jid) is None
    assert "shard 0 of round 0 is not finite from step 10 (leaf 5)" in ended[4]
    assert c.balance(ALICE) == start + budget - paid
    assert c.view().read(b"jobs_active") is None


def test_a_diverged_shard_ends_the_job_once_the_rest_of_its_round_has_passed():
    c = world()
    jid = submit(c, shards=2, rounds=2)
    commit(c, jid, 1)                                  # shard 1 honest and finite
    commit(c, jid, 0, diverged_leaf=1)                  # shard 0 blew up in its first interval
    draw(c)
    attest(c, jid, 1)
    attest(c, jid, 0)
    until(c, lambda: job(c, jid)["status"] != "active")
    assert job(c, jid)["status"] == "diverged"
    assert [s["status"] for s in job(c, jid)["shards"]] == ["passed", "passed"]
    assert "shard 0 of round 0 is not finite from step 2 (leaf 1)" in events(c, jid, "diverged")[0][4]


@pytest.mark.parametrize("leaf,reason", [(51, "diverged_leaf must be 0 (all leaves finite) or the first non-finite "
                                                "leaf, 1..50"), (10**6, "diverged_leaf must be 0"),
                                         (-1, "commit_shard.diverged_leaf must be")])
def test_a_diverged_leaf_out_of_range_is_refused(leaf, reason):
    c = world()
    jid = submit(c, shards=1)
    body = commit_body(jid, 0, 0, leaves_for(c, jid), diverged_leaf=leaf)
    assert reason in refused(c, solver_of(c, jid), "commit_shard", body)
    last = fork(c)
    commit(last, jid, diverged_leaf=N)                  # the last leaf is the highest allowed
    assert shard(last, jid)["commit"]["diverged_leaf"] == N


# -- found by an adversarial review ----------------------------------------------------------

def test_a_submitter_cannot_get_the_work_free_by_challenging_a_served_blob():
    """The late fee taken off a solver that served a challenged blob is burned, not refunded:
    refunded, it went back to the submitter, who could challenge to get the work for free."""
    from tests.chainfactory import availability_body, stake
    c = world()
    block(c, stake(ALICE, "verifier", 1_000, c.nonce(ALICE)))
    jid = submit(c, shards=1, verify_blocks=3)
    leaves = commit(c, jid)[0]
    draw(c)
    s, alice_before = solver_of(c, jid), c.balance(ALICE)
    solver_before = c.balance(s)
    block(c, tx(c, ALICE, "challenge", availability_body(jid, 0, 0, leaves, 7)))
    vote(c, jid, ALICE, False, *REFEREES)
    attest(c, jid, 0)
    until(c, lambda: job(c, jid)["status"] == "done")
    assert c.balance(s) == solver_before + 100 - 100          # the default fee of 100, off its reward
    refund = events(c, jid, "done")[0][3]
    assert c.balance(ALICE) == alice_before - 1 - 100 + refund
    assert refund == job_budget_left_after_paying(c, jid)     # the cut did not come back


def job_budget_left_after_paying(c, jid) -> int:
    paid = sum(e[3] for e in events(c, jid, "paid"))
    return events(c, jid, "submitted")[0][3] - paid - 100     # 100: the burned late fee


def test_a_diverged_shard_pays_its_verifiers_only_from_its_own_allowance():
    """A divergence declared at the last leaf has every interval checked; its verifiers share
    that shard's allowance and never eat another shard's reward."""
    from tests.chainfactory import commit_body
    c = world()
    jid = submit(c, shards=2, verify_blocks=3)
    until(c, lambda: all(s["status"] == "assigned" for s in job(c, jid)["shards"]))
    s0, s1 = solver_of(c, jid, 0), solver_of(c, jid, 1)
    block(c, tx(c, s0, "commit_shard", commit_body(jid, 0, 0, leaves_for(c, jid, 0), diverged_leaf=N)),
          tx(c, s1, "commit_shard", commit_body(jid, 0, 1, leaves_for(c, jid, 1))))
    draw(c)
    before = c.balance(s1)
    attest(c, jid, 0)
    attest(c, jid, 1)
    until(c, lambda: job(c, jid)["status"] != "active")
    assert job(c, jid)["status"] == "diverged"
    assert c.balance(s1) == before + 100
    shard0_fees = [e[3] for e in events(c, jid, "paid") if e[4] == "verifier, shard 0"]
    assert shard0_fees == [20, 20]                 # fee x (samples + 1) x verifiers, shared in proportion


def test_a_late_vote_never_counts_toward_a_later_challenge_by_the_same_challenger():
    """A vote names its challenge by challenger and opening height: votes signed for a
    challenge that closed cannot land on the same challenger's next one."""
    c = world()
    jid = submit(c, shards=1, verify_blocks=3)
    leaves = commit(c, jid)[0]
    draw(c)
    challenger = next(k for k in VERIFIERS if k not in verifiers_of(c, jid))
    challenge(c, jid, challenger, 5, leaves)
    stale = [tx(c, k, "dispute_vote", vote_body(c, jid, challenger, True)) for k in (V3, V4)]
    vote(c, jid, challenger, True, VAL, V2)                   # fault proven
    until(c, lambda: shard(c, jid)["status"] == "assigned")
    honest = solver_of(c, jid)
    stake_before = c.stake_of(honest, "solver")
    leaves2 = commit(c, jid)[0]
    challenge(c, jid, challenger, 9, leaves2)                 # a bogus challenge of the new commit
    block(c, *stale)                                          # valid, and late: they change nothing
    assert challenges(c, jid)[0]["votes"] == []
    vote(c, jid, challenger, True, VAL)                       # one 40% validator decides nothing
    assert c.stake_of(honest, "solver") == stake_before and shard(c, jid)["status"] == "disputed"


def test_a_submitter_cannot_cancel_to_pay_a_commit_between_a_redraw_and_the_next_draw():
    """After a window closes with no attestation the shard waits one block for new verifiers.
    It is not a commit "no verifier can check" then: cancelling is refused, and nobody is
    paid for work nobody checked. Once every verifier has been silent on it, it is."""
    c = world()
    jid = submit(c, shards=1, verify_blocks=2)
    commit(c, jid)
    draw(c)
    until(c, lambda: shard(c, jid)["status"] == "committed")     # redrawn: R3 is still eligible
    assert "have a solver at work or a result pending" in refused(c, ALICE, "cancel_job", {"job": jid})
    block(c)
    until(c, lambda: shard(c, jid)["status"] == "committed")     # R3 silent too: nobody is left
    s = solver_of(c, jid)
    before = c.balance(s)
    block(c, tx(c, ALICE, "cancel_job", {"job": jid}))
    assert job(c, jid)["status"] == "cancelled" and c.balance(s) == before + 100
