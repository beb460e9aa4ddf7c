"""consensus.jobs, hash-chain secrets: a verifier answers each selection with the one element of
its registered chain that the selection reserved, its intervals are exactly those that element
draws, verifiers of one shard check different intervals, and neither a solver grinding its root
nor a proposer's beacon can steer which intervals a verifier re-runs.

The world is in tests/jobworld.py; the draw itself is consensus.sampling.verifier_intervals.
"""
from __future__ import annotations

from collections import Counter

from consensus import hashchain
from consensus.crypto import sha256
from consensus.sampling import verifier_intervals
from tests.jobworld import (NEWCOMER, R1, R2, REFEREES, SECRET_LENGTH, VERIFIERS, attest, attest_body, block,
                            challenge, commit, draw, job, locked, refused, secret, selection, shard,
                            submit, tx, until, verifiers_of, vote, world)

N = 50   # intervals per shard of the world's job spec


def drawn_world(**params):
    """A one-shard job committed and drawn; returns (chain, job id, leaves, drawn verifiers)."""
    c = world(**params)
    jid = submit(c, shards=1, verify_blocks=6)
    leaves = commit(c, jid)[0]
    draw(c)
    return c, jid, leaves, verifiers_of(c, jid)


def register_body(seed: bytes, length: int = SECRET_LENGTH) -> dict:
    return {"role": "verifier", "tip": hashchain.tip(seed, length), "length": length}


# -- the element that answers a selection --------------------------------------------------------

def test_attest_with_anything_but_the_reserved_element_is_refused():
    c, jid, leaves, (v, w) = drawn_world()
    index = selection(c, jid, 0, v)["secret_index"]
    assert index == 1
    body = attest_body(c, jid, 0, v)
    wrong = {"random bytes": sha256(b"a guess"), "the registered tip": secret(v, 0),
             "the next element": secret(v, 2), "the same index of another chain": secret(w, 1),
             "the element of an outsider": secret(NEWCOMER, 1)}
    for what, value in wrong.items():
        assert "not element 1 of the registered hash chain" in refused(c, v, "attest", dict(body, secret=value)), what
    attest(c, jid, 0, v)
    assert selection(c, jid, 0, v)["attested"]


def test_an_old_element_cannot_answer_a_new_selection():
    """R1, the only verifier, answers its first selection with element 1; its next selection
    reserved element 2, which nobody but R1 knows; element 1, now public, is refused there."""
    c = world(verifiers=(R1,), verifiers_per_shard=1)
    first = submit(c, shards=1, seed=1)
    commit(c, first)
    draw(c)
    attest(c, first, 0, R1)
    second = submit(c, shards=1, seed=2)
    commit(c, second)
    draw(c)
    assert selection(c, second, 0, R1)["secret_index"] == 2
    body = attest_body(c, second, 0, R1)
    for old in (secret(R1, 1), secret(R1, 0), secret(R1, 3)):
        assert "not element 2" in refused(c, R1, "attest", dict(body, secret=old))
    attest(c, second, 0, R1)


def test_selections_may_be_answered_in_any_order_but_each_only_with_its_own_element():
    c = world(verifiers=(R1,), verifiers_per_shard=1, solver_capacity=2)
    jid = submit(c, shards=2)
    commit(c, jid)
    draw(c)
    assert [selection(c, jid, i, R1)["secret_index"] for i in (0, 1)] == [1, 2]
    attest(c, jid, 1, R1)                            # element 2 first: element 1 is now public
    assert "not element 1" in refused(c, R1, "attest", dict(attest_body(c, jid, 0, R1), secret=secret(R1, 2)))
    attest(c, jid, 0, R1)
    assert all(selection(c, jid, i, R1)["attested"] for i in (0, 1))


def test_recorded_intervals_are_what_the_revealed_secret_draws_and_include_the_last():
    for samples in (1, 3):
        c, jid, leaves, drawn = drawn_world(samples_per_shard=samples)
        attest(c, jid, 0)
        s = shard(c, jid)
        for k in drawn:
            sel = selection(c, jid, 0, k)
            want = verifier_intervals(secret(k, sel["secret_index"]), s["commit"]["root"], s["beacon"], N, samples,
                                      None)
            assert sel["intervals"] == want and len(want) == samples + 1 and want[-1] == N - 1


SHORT = sha256(b"a chain of one element")


def test_a_verifier_whose_chain_is_used_up_is_no_longer_drawn():
    c = world(verifiers=(R1,), verifiers_per_shard=1)
    block(c, tx(c, R1, "register_secrets", register_body(SHORT, 1)))  # one element
    first = submit(c, shards=1, seed=1)
    commit(c, first)
    draw(c)
    assert verifiers_of(c, first) == [R1]
    block(c, tx(c, R1, "attest", dict(attest_body(c, first, 0, R1),
                                      secret=hashchain.element(SHORT, 1, 1))))
    until(c, lambda: job(c, first)["status"] == "done")
    second = submit(c, shards=1, seed=2)
    commit(c, second)
    draw(c)
    assert shard(c, second)["status"] == "committed" and verifiers_of(c, second) == []


def test_a_new_chain_is_refused_while_anything_is_locked_and_replaces_the_old_one_after():
    """R1 and R2 are the only verifiers with hash chains, so both are drawn for every shard;
    NEWCOMER, staked but without a chain, can still challenge."""
    c = world(verifiers=(R1, R2))
    block(c, tx(c, NEWCOMER, "stake", {"role": "verifier", "amount": 100}))
    jid = submit(c, shards=1, seed=1)
    leaves = commit(c, jid)[0]
    draw(c)
    assert sorted(verifiers_of(c, jid), key=lambda k: k.address) == sorted([R1, R2], key=lambda k: k.address)
    fresh = register_body(b"new seed")
    assert "no collateral locked" in refused(c, R1, "register_secrets", fresh)
    challenge(c, jid, NEWCOMER, 3, leaves)              # a challenge bond is a lock too
    assert locked(c, NEWCOMER) == 30
    assert "no collateral locked" in refused(c, NEWCOMER, "register_secrets", fresh)
    vote(c, jid, NEWCOMER, False, *REFEREES)
    attest(c, jid, 0, R2)
    until(c, lambda: job(c, jid)["status"] == "done")
    assert locked(c, R1) == 0
    block(c, tx(c, R1, "register_secrets", fresh))
    again = submit(c, shards=1, seed=2)
    commit(c, again)
    draw(c)
    body = attest_body(c, again, 0, R1)
    assert selection(c, again, 0, R1)["secret_index"] == 1  # the new chain starts over
    assert "not element 1" in refused(c, R1, "attest", body)   # element 1 of the old chain
    block(c, tx(c, R1, "attest", dict(body, secret=hashchain.element(b"new seed", SECRET_LENGTH, 1))))
    assert selection(c, again, 0, R1)["attested"]


# -- coverage: each verifier checks its own intervals --------------------------------------------

def test_verifiers_of_one_shard_draw_different_intervals_so_coverage_grows_with_verifiers():
    """Sixteen shards, each checked by all three verifiers: the sampled intervals (besides the
    last, which all check) differ between verifiers, so the union grows with each verifier."""
    c = world(verifiers_per_shard=3, solver_capacity=6)
    jid = submit(c, shards=16, verify_blocks=30)
    commit(c, jid)
    draw(c)
    for i in range(16):
        attest(c, jid, i)
    sampled = [[selection(c, jid, i, k)["intervals"][:-1] for k in VERIFIERS] for i in range(16)]
    assert all(len(s) == 1 and 0 <= s[0] < N - 1 for per_shard in sampled for s in per_shard)
    coverage = [sum(len(set().union(*map(set, per_shard[:m]))) for per_shard in sampled) / 16 for m in (1, 2, 3)]
    assert coverage[0] == 1 and coverage[1] > 1.6 and coverage[2] > coverage[1] + 0.5, coverage
    assert sum(len({s[0] for s in per_shard}) > 1 for per_shard in sampled) >= 14


# -- grinding: neither the solver's root nor the proposer's beacon steers a draw --------------------

ROOTS = [sha256(b"root" + i.to_bytes(4, "big")) for i in range(4_900)]
BEACON = sha256(b"a beacon")
HIDDEN = sha256(b"the verifier's secret, unknown to the solver")


def sampled(secret_: bytes, root: bytes, beacon: bytes = BEACON) -> int:
    return verifier_intervals(secret_, root, beacon, N, 1)[0]


def test_for_a_secret_the_solver_does_not_know_the_draw_over_roots_is_uniform():
    counts = Counter(sampled(HIDDEN, r) for r in ROOTS)
    assert set(counts) == set(range(N - 1))
    expected = len(ROOTS) / (N - 1)                     # 100 per interval
    chi2 = sum((counts[i] - expected) ** 2 / expected for i in range(N - 1))
    assert chi2 < 100, chi2                             # 48 degrees of freedom: mean 48, sd about 10
    assert max(counts.values()) < 2 * expected


def test_grinding_roots_does_not_dodge_a_verifier_whose_secret_the_solver_does_not_know():
    """A solver that cheated in interval 17 keeps only the roots that its best guesses (a
    guessed secret, or the beacon alone) say dodge 17: the real draw still lands on 17 about
    one time in 49. Only knowing the secret would let it dodge, which is what the chain hides."""
    faulty = 17
    for guess in (sha256(b"a guessed secret"), b""):
        kept = [r for r in ROOTS if sampled(guess, r) != faulty]
        hits = sum(sampled(HIDDEN, r) == faulty for r in kept)
        expected = len(kept) / (N - 1)
        assert 0.6 * expected < hits < 1.4 * expected, (hits, expected)


def test_the_beacon_alone_does_not_determine_a_verifiers_intervals():
    """Same root and beacon (what a proposer can influence, by withholding a block), different
    secrets: the draws spread over the intervals instead of agreeing."""
    secrets = [sha256(b"secret" + i.to_bytes(2, "big")) for i in range(500)]
    draws = Counter(sampled(s, ROOTS[0]) for s in secrets)
    assert len(draws) >= 45 and max(draws.values()) <= 30
    # and for one secret the beacon does matter: a different beacon is a fresh draw
    beacons = [sha256(b"beacon" + i.to_bytes(2, "big")) for i in range(500)]
    assert len(Counter(sampled(HIDDEN, ROOTS[0], b) for b in beacons)) >= 45

