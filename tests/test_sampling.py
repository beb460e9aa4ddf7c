"""consensus.sampling: every choice the chain makes (solvers, verifiers, intervals) is drawn
from the block beacon, identically on every node, in proportion to stake."""
from __future__ import annotations

from collections import Counter

import pytest

from consensus.crypto import sha256
from consensus.sampling import draw, sample_intervals, weighted_sample


def addr(i: int) -> bytes:
    return bytes([i]) * 20


def beacon(i: int) -> bytes:
    return sha256(b"beacon" + i.to_bytes(4, "big"))


POOL = [(addr(i), 10 * i) for i in range(1, 11)]  # sorted by address, as staking.candidates gives


# -- draw -------------------------------------------------------------------------------------

def test_draw_is_a_pure_function_of_beacon_and_label():
    assert draw(beacon(1), b"job", 0, 1, "solver") == draw(beacon(1), b"job", 0, 1, "solver")
    assert draw(beacon(1), b"job", 0, 1, "solver") != draw(beacon(2), b"job", 0, 1, "solver")
    assert draw(beacon(1), b"job", 0, 1, "solver") != draw(beacon(1), b"job", 0, 2, "solver")
    assert draw(beacon(1), b"job", 0, 1, "solver") != draw(beacon(1), b"job", 0, 1, "verifiers")
    assert 0 <= draw(beacon(1), "x") < 2**256


# -- weighted_sample --------------------------------------------------------------------------

def test_weighted_sample_is_deterministic_for_a_beacon_and_label():
    first = weighted_sample(POOL, 4, beacon(7), b"job", 0, 3, "verifiers")
    assert first == weighted_sample(list(POOL), 4, beacon(7), b"job", 0, 3, "verifiers")
    # another beacon or label gives another draw (over a few tries, surely at least one differs)
    others = {tuple(weighted_sample(POOL, 4, beacon(b), b"job", 0, 3, "verifiers")) for b in range(8, 16)}
    assert others - {tuple(first)}


def test_weighted_sample_returns_distinct_addresses_from_the_pool():
    for b in range(50):
        chosen = weighted_sample(POOL, 5, beacon(b), "label")
        assert len(chosen) == 5 and len(set(chosen)) == 5
        assert set(chosen) <= {a for a, _ in POOL}


def test_weighted_sample_asking_for_more_than_the_pool_returns_everyone_once():
    chosen = weighted_sample(POOL, 50, beacon(1), "label")
    assert sorted(chosen) == sorted(a for a, _ in POOL)


def test_weighted_sample_of_nothing_is_empty():
    assert weighted_sample([], 3, beacon(1), "label") == []
    assert weighted_sample(POOL, 0, beacon(1), "label") == []


def test_zero_weight_candidates_are_never_chosen():
    pool = [(addr(1), 0), (addr(2), 5), (addr(3), 0), (addr(4), 1)]
    seen = Counter()
    for b in range(500):
        seen.update(weighted_sample(pool, 2, beacon(b), "label"))
    assert set(seen) == {addr(2), addr(4)}
    assert weighted_sample([(addr(1), 0)], 1, beacon(1), "label") == []
    # asking for everyone still leaves the zero-weight ones out
    assert sorted(weighted_sample(pool, 4, beacon(1), "label")) == [addr(2), addr(4)]


@pytest.mark.parametrize("heavy_first", [True, False])
def test_one_draw_follows_the_weights_three_to_one(heavy_first):
    heavy, light = addr(1), addr(2)
    pool = [(heavy, 3_000), (light, 1_000)] if heavy_first else [(light, 1_000), (heavy, 3_000)]
    pool.sort()
    wins = Counter(weighted_sample(pool, 1, beacon(b), b"job", "solver")[0] for b in range(2000))
    assert wins[heavy] + wins[light] == 2000
    share = wins[heavy] / 2000
    assert 0.72 <= share <= 0.78, share  # 0.75 +- ~3 standard deviations


def test_weights_count_in_proportion_across_many_candidates():
    pool = [(addr(1), 1), (addr(2), 2), (addr(3), 7)]
    wins = Counter(weighted_sample(pool, 1, beacon(b), "x")[0] for b in range(3000))
    assert 0.07 <= wins[addr(1)] / 3000 <= 0.13
    assert 0.16 <= wins[addr(2)] / 3000 <= 0.24
    assert 0.66 <= wins[addr(3)] / 3000 <= 0.74


def test_later_draws_are_among_the_candidates_left():
    """Without replacement: with 3:1 weights the heavy one is nearly always in a 2-of-2 draw,
    and the second place goes to the light one when the heavy one came first."""
    heavy, light = addr(1), addr(2)
    for b in range(200):
        assert sorted(weighted_sample([(heavy, 3), (light, 1)], 2, beacon(b), "x")) == [heavy, light]


# -- sample_intervals -------------------------------------------------------------------------

def test_sample_intervals_are_distinct_sorted_and_in_range():
    for b in range(200):
        got = sample_intervals(10, 3, beacon(b), b"job", 0, 1, b"root", "intervals")
        assert got == sorted(got) and len(set(got)) == 3
        assert all(0 <= i < 10 for i in got)


def test_sample_intervals_is_deterministic_for_a_beacon_and_label():
    a = sample_intervals(50, 5, beacon(3), b"job", 0, 1, b"root", "intervals")
    assert a == sample_intervals(50, 5, beacon(3), b"job", 0, 1, b"root", "intervals")
    assert a != sample_intervals(50, 5, beacon(3), b"job", 0, 1, b"other root", "intervals") \
        or a != sample_intervals(50, 5, beacon(4), b"job", 0, 1, b"root", "intervals")


def test_sample_intervals_never_asks_for_more_than_there_are():
    assert sample_intervals(3, 10, beacon(1), "x") == [0, 1, 2]
    assert sample_intervals(1, 2, beacon(1), "x") == [0]
    assert sample_intervals(0, 2, beacon(1), "x") == []


def test_sample_intervals_reach_every_interval_roughly_evenly():
    seen = Counter()
    for b in range(1000):
        seen.update(sample_intervals(8, 2, beacon(b), "x"))
    assert set(seen) == set(range(8))
    for i in range(8):  # each interval is in 2/8 of the draws: 250 of 1000
        assert 200 <= seen[i] <= 300, seen
