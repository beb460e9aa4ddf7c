"""p2p.sync: which range to ask which peer for (SyncPlanner), and serving ranges (serve_range).
Both are sans-I/O, so time is just a number here."""
from __future__ import annotations

import pytest

from p2p.sync import MAX_BLOCKS_PER_REQUEST, MAX_RESPONSE_BYTES, REQUEST_TIMEOUT, SyncPlanner, serve_range

A, B, C = b"A" * 20, b"B" * 20, b"C" * 20
AVOID = 3 * REQUEST_TIMEOUT  # how long a failed peer is avoided


# -- SyncPlanner ------------------------------------------------------------------------------

def test_nothing_to_do_without_peers_ahead():
    p = SyncPlanner()
    assert p.next_request(10, {}, 0.0) is None
    assert p.next_request(10, {A: 10, B: 3}, 0.0) is None
    assert p.inflight is None


def test_picks_the_highest_peer_and_the_next_range():
    p = SyncPlanner()
    req = p.next_request(5, {A: 12, B: 30, C: 20}, 100.0)
    assert req.peer == B
    assert (req.first, req.last) == (6, 30)
    assert req.deadline == 100.0 + REQUEST_TIMEOUT
    assert p.inflight == req


def test_range_is_bounded():
    p = SyncPlanner()
    req = p.next_request(0, {A: 10_000}, 0.0)
    assert (req.first, req.last) == (1, MAX_BLOCKS_PER_REQUEST)
    p.done(A, True, 1.0)
    req = p.next_request(MAX_BLOCKS_PER_REQUEST, {A: 10_000}, 1.0)
    assert (req.first, req.last) == (MAX_BLOCKS_PER_REQUEST + 1, 2 * MAX_BLOCKS_PER_REQUEST)
    # a peer just one block ahead gets asked for exactly that block
    p.done(A, True, 2.0)
    req = p.next_request(77, {A: 78}, 2.0)
    assert (req.first, req.last) == (78, 78)


def test_only_one_request_in_flight():
    p = SyncPlanner()
    first = p.next_request(0, {A: 10}, 0.0)
    assert first is not None
    for t in (0.0, 1.0, REQUEST_TIMEOUT - 0.001):
        assert p.next_request(0, {A: 10, B: 500}, t) is None  # even when a better peer appears
    assert p.inflight == first


def test_success_frees_the_slot_and_keeps_the_peer():
    p = SyncPlanner()
    p.next_request(0, {A: 100}, 0.0)
    p.done(A, True, 1.0)
    assert p.inflight is None
    req = p.next_request(50, {A: 100}, 1.0)
    assert req.peer == A and (req.first, req.last) == (51, 100)


def test_timeout_moves_to_another_peer_and_avoids_the_slow_one():
    p = SyncPlanner()
    req = p.next_request(0, {A: 100, B: 60}, 0.0)
    assert req.peer == A
    # at the deadline the request is forgotten and the next best peer is asked
    req2 = p.next_request(0, {A: 100, B: 60}, REQUEST_TIMEOUT)
    assert req2 is not None and req2.peer == B
    assert (req2.first, req2.last) == (1, 50)
    # B answers; A is still avoided although it is the highest
    p.done(B, True, REQUEST_TIMEOUT + 1)
    req3 = p.next_request(50, {A: 100, B: 60}, REQUEST_TIMEOUT + 1)
    assert req3.peer == B and (req3.first, req3.last) == (51, 60)
    p.done(B, True, REQUEST_TIMEOUT + 2)
    # only A is ahead now, and it is still avoided
    assert p.next_request(60, {A: 100, B: 60}, REQUEST_TIMEOUT + 2) is None
    assert p.next_request(60, {A: 100, B: 60}, REQUEST_TIMEOUT + AVOID - 0.01) is None
    # ... for a while, not forever
    req4 = p.next_request(60, {A: 100, B: 60}, REQUEST_TIMEOUT + AVOID)
    assert req4 is not None and req4.peer == A and req4.first == 61


def test_timeout_with_a_single_peer_waits_then_retries_it():
    p = SyncPlanner()
    p.next_request(0, {A: 10}, 0.0)
    assert p.next_request(0, {A: 10}, REQUEST_TIMEOUT) is None
    assert p.inflight is None
    assert p.next_request(0, {A: 10}, REQUEST_TIMEOUT + AVOID - 1) is None
    assert p.next_request(0, {A: 10}, REQUEST_TIMEOUT + AVOID).peer == A


def test_failed_response_moves_to_another_peer():
    p = SyncPlanner()
    assert p.next_request(0, {A: 100, B: 60, C: 40}, 0.0).peer == A
    p.done(A, False, 2.0)  # A sent invalid blocks
    assert p.inflight is None
    req = p.next_request(0, {A: 100, B: 60, C: 40}, 2.0)  # immediately, no need to wait for a timeout
    assert req.peer == B
    p.done(B, False, 3.0)
    assert p.next_request(0, {A: 100, B: 60, C: 40}, 3.0).peer == C
    p.done(C, True, 4.0)
    # A comes back once its penalty is over, B a second later
    assert p.next_request(40, {A: 100, B: 60, C: 40}, 2.0 + AVOID - 0.5) is None
    assert p.next_request(40, {A: 100, B: 60, C: 40}, 2.0 + AVOID).peer == A


def test_answer_from_another_peer_does_not_free_the_slot():
    p = SyncPlanner()
    req = p.next_request(0, {A: 100, B: 60}, 0.0)
    assert req.peer == A
    p.done(B, True, 1.0)  # unsolicited or late answer from B
    assert p.inflight == req
    assert p.next_request(0, {A: 100, B: 60}, 1.0) is None
    p.done(B, False, 1.0)  # B's bad blocks count against B, not against the request to A
    assert p.inflight == req
    p.done(A, True, 2.0)
    assert p.next_request(0, {A: 100, B: 60}, 2.0).peer == A


def test_inflight_peer_that_disappears_is_given_up_at_the_deadline():
    p = SyncPlanner()
    p.next_request(0, {A: 100, B: 80}, 0.0)
    assert p.next_request(0, {B: 80}, 1.0) is None  # A left; its request still runs to the deadline
    assert p.next_request(0, {B: 80}, REQUEST_TIMEOUT).peer == B


# -- serve_range -----------------------------------------------------------------------------

class Store:
    def __init__(self, tip: int, size: int = 100, sizes: dict | None = None):
        self.tip = tip
        self.size = size
        self.sizes = sizes or {}
        self.asked: list[int] = []

    def block(self, h: int):
        self.asked.append(h)
        if not 1 <= h <= self.tip:
            return None
        return bytes([h % 256]) * self.sizes.get(h, self.size)

    def commit(self, h: int):
        return {"commit_for": h}


def heights(out) -> list[int]:
    return [c["commit_for"] for _, c in out]


def test_serves_the_asked_range_with_commits():
    s = Store(tip=20)
    out = serve_range(s.block, s.commit, 3, 7, s.tip)
    assert heights(out) == [3, 4, 5, 6, 7]
    for raw, commit in out:
        assert raw == s.block(commit["commit_for"])


def test_count_is_bounded():
    s = Store(tip=10_000)
    out = serve_range(s.block, s.commit, 1, 10_000, s.tip)
    assert heights(out) == list(range(1, MAX_BLOCKS_PER_REQUEST + 1))
    out = serve_range(s.block, s.commit, 500, 2**62, s.tip)
    assert heights(out) == list(range(500, 500 + MAX_BLOCKS_PER_REQUEST))
    assert max(s.asked) < 500 + MAX_BLOCKS_PER_REQUEST


def test_never_past_the_tip():
    s = Store(tip=10)
    assert heights(serve_range(s.block, s.commit, 5, 40, s.tip)) == [5, 6, 7, 8, 9, 10]
    assert serve_range(s.block, s.commit, 11, 40, s.tip) == []
    assert serve_range(s.block, s.commit, 2**62, 2**63, s.tip) == []
    assert max(s.asked) <= s.tip
    # a store that has more blocks than our committed tip (written ahead) is not served past the tip
    ahead = Store(tip=100)
    assert heights(serve_range(ahead.block, ahead.commit, 1, 100, 10)) == list(range(1, 11))
    assert max(ahead.asked) <= 10


def test_silly_ranges_are_empty_or_start_at_one():
    s = Store(tip=10)
    assert serve_range(s.block, s.commit, 7, 3, s.tip) == []
    assert serve_range(s.block, s.commit, -100, -1, s.tip) == []
    assert heights(serve_range(s.block, s.commit, 0, 3, s.tip)) == [1, 2, 3]
    assert 0 not in s.asked and all(h >= 1 for h in s.asked)


def test_bytes_are_bounded():
    mib = 1024 * 1024
    s = Store(tip=100, size=mib)
    out = serve_range(s.block, s.commit, 1, 100, s.tip)
    assert 1 <= len(out) < MAX_BLOCKS_PER_REQUEST
    assert sum(len(raw) for raw, _ in out) <= MAX_RESPONSE_BYTES
    assert heights(out) == list(range(1, len(out) + 1))
    assert len(out) == MAX_RESPONSE_BYTES // mib
    # the next request picks up where this one stopped
    nxt = serve_range(s.block, s.commit, len(out) + 1, 100, s.tip)
    assert heights(nxt)[0] == len(out) + 1


def test_one_oversized_block_is_still_served_alone():
    s = Store(tip=10, sizes={4: MAX_RESPONSE_BYTES + 1})
    assert heights(serve_range(s.block, s.commit, 4, 10, s.tip)) == [4]  # or sync would stall on it
    assert heights(serve_range(s.block, s.commit, 1, 10, s.tip)) == [1, 2, 3]


def test_stops_at_a_missing_block():
    s = Store(tip=10)
    missing = lambda h: None if h == 6 else s.block(h)  # noqa: E731
    assert heights(serve_range(missing, s.commit, 1, 10, s.tip)) == [1, 2, 3, 4, 5]


@pytest.mark.parametrize("first,last", [(1, 1), (1, 50), (25, 60), (99, 200)])
def test_response_is_a_contiguous_prefix_of_the_request(first, last):
    s = Store(tip=100)
    hs = heights(serve_range(s.block, s.commit, first, last, s.tip))
    assert hs == list(range(first, first + len(hs)))
    assert hs and hs[-1] <= min(last, s.tip) and len(hs) <= MAX_BLOCKS_PER_REQUEST
