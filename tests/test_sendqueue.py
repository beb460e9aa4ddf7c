"""p2p.sendqueue: votes overtake block data, and nothing stale goes on the wire."""
from __future__ import annotations

import asyncio

from p2p.sendqueue import SHELF_LIFE_S, SendQueue


def drain(q: SendQueue, now: float) -> list[str]:
    out = []
    while (m := q.pop(now)) is not None:
        out.append(m[0])
    return out


def test_urgent_messages_overtake_queued_bulk():
    q = SendQueue(100)
    for kind in ("proposal", "txs", "vote", "blocks", "status", "vote"):
        q.put(kind, None, 0.0)
    assert drain(q, 0.0) == ["vote", "status", "vote", "proposal", "txs", "blocks"]


def test_stale_consensus_messages_are_dropped_on_the_way_out():
    """After a partition, what was queued while cut off is not sent before fresh votes."""
    q = SendQueue(100)
    q.put("vote", "old", 0.0)
    q.put("proposal", "old", 0.0)
    q.put("blocks", "sync reply", 0.0)
    later = max(SHELF_LIFE_S["vote"], SHELF_LIFE_S["proposal"]) + 1
    q.put("vote", "fresh", later)
    assert q.pop(later) == ["vote", "fresh"]
    assert q.pop(later) == ["blocks", "sync reply"]  # never stale: a peer asked for it
    assert q.pop(later) is None and q.dropped_stale == 2


def test_a_full_queue_never_grows_and_gives_urgent_messages_the_room_of_bulk_ones():
    q = SendQueue(3)
    assert all(q.put("txs", i, 0.0) for i in range(3))
    assert not q.put("proposal", "x", 0.0) and len(q) == 3
    assert q.put("vote", "v", 0.0) and len(q) == 3 and q.dropped_full == 1
    assert drain(q, 0.0) == ["vote", "txs", "txs"]
    q = SendQueue(2)
    q.put("vote", 1, 0.0), q.put("status", 2, 0.0)
    assert not q.put("vote", 3, 0.0)  # nothing bulk left to give way


def test_tx_batches_never_go_stale_they_are_sent_only_once():
    q = SendQueue(10)
    q.put("txs", "batch", 0.0)
    assert q.pop(10_000.0) == ["txs", "batch"]


async def test_get_waits_for_a_message_and_skips_stale_ones():
    q = SendQueue(10)
    clock = {"now": 100.0}
    q.put("vote", "stale", 0.0)
    waiter = asyncio.get_running_loop().create_task(q.get(lambda: clock["now"]))
    await asyncio.sleep(0.01)
    assert not waiter.done()
    q.put("vote", "fresh", 100.0)
    assert await asyncio.wait_for(waiter, 1) == ["vote", "fresh"]
