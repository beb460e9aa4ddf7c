"""The blob fetch planner (p2p/blobfetch.py) driven directly, and the partial file it fills
(p2p/blobpartial.py): what it asks of whom, what it accepts, whom it blames, and that nothing a
hostile peer sends grows its state."""
from __future__ import annotations

import os

import pytest
from hypothesis import given, settings, strategies as st

from consensus.blobid import CHUNK, BlobHasher, blob_id
from p2p.blobfetch import (Accept, AskChunks, AskLeaves, Blame, Check, FetchConfig, FetchPlanner, Ignore,
                           LeavesOk, leaf_of)
from p2p.blobpartial import PartialBlob, prune_partials
from p2p.blobs import BlobStore

A, B, C = b"a" * 20, b"b" * 20, b"c" * 20
CFG = FetchConfig(window=4, batch=2, max_in_flight=6, chunk_timeout=5.0, leaves_timeout=5.0, max_strikes=2)


def blob(chunks: int, tail: int = 100) -> tuple[bytes, bytes, bytes]:
    """(data, id, leaf list) of a blob of `chunks` full chunks and a short last one."""
    data = b"".join(bytes([i]) * CHUNK for i in range(chunks)) + b"\xee" * tail
    h = BlobHasher()
    h.update(data)
    return data, h.digest(), b"".join(h.chunk_hashes())


DATA, DIGEST, LEAVES = blob(9)          # 10 chunks, the last 100 bytes
TOTAL = 10


def chunk(i: int, data: bytes = DATA) -> bytes:
    return data[i * CHUNK:(i + 1) * CHUNK]


def ready(*peers: bytes, cfg: FetchConfig = CFG) -> FetchPlanner:
    p = FetchPlanner(DIGEST, 64 * CHUNK, cfg)
    for peer in peers:
        p.add_peer(peer)
    asks = p.poll(0.0)
    assert asks == [AskLeaves(peer) for peer in sorted(peers)]
    return p


def asked(actions) -> dict[bytes, list[int]]:
    out: dict[bytes, list[int]] = {}
    for a in actions:
        if isinstance(a, AskChunks):
            out.setdefault(a.peer, []).extend(range(a.first, a.first + a.count))
    return out


def deliver(p: FetchPlanner, peer: bytes, i: int, data: bytes | None = None):
    """A chunk arrives and is hashed, as node/blobxfer.py does it; the final verdict."""
    data = chunk(i) if data is None else data
    v = p.on_chunk(peer, i, data)
    if not isinstance(v, Check):
        return v
    assert (v.index, v.offset) == (i, i * CHUNK)
    return p.on_checked(peer, i, leaf_of(data))


def run_to_end(p: FetchPlanner, now: float = 1.0, rounds: int = 100) -> dict[bytes, int]:
    """Answer every request, earlier ones included, honestly until done; how many chunks each
    peer was asked for from here on."""
    counts: dict[bytes, int] = {}
    for _ in range(rounds):
        if p.done:
            return counts
        for peer, idx in asked(p.poll(now)).items():
            counts[peer] = counts.get(peer, 0) + len(idx)
        for i, (peer, _) in sorted(p._owner.items()):
            assert isinstance(deliver(p, peer, i), Accept)
    raise AssertionError("fetch did not finish")


def test_one_peer_fetches_every_chunk_once_within_its_window():
    p = ready(A)
    assert isinstance(p.on_leaves(A, len(DATA), LEAVES), LeavesOk)
    first = asked(p.poll(1.0))
    assert first == {A: [0, 1, 2, 3]}                       # the window, lowest first, one range
    assert p.poll(1.0) == []                                # nothing more until slots free up
    assert isinstance(deliver(p, A, 0), Accept)
    assert p.poll(1.0) == []                                # one free slot is under the batch of 2
    assert isinstance(deliver(p, A, 1), Accept)
    assert asked(p.poll(1.0)) == {A: [4, 5]}
    counts = run_to_end(p)
    assert p.done and p.verified == TOTAL and counts == {A: TOTAL - 6}  # each chunk asked once


def test_two_peers_share_the_chunks_under_the_global_cap():
    p = ready(A, B)
    p.on_leaves(A, len(DATA), LEAVES)
    p.on_leaves(B, len(DATA), LEAVES)
    got = asked(p.poll(1.0))
    assert len(got[A]) + len(got[B]) == CFG.max_in_flight and got[A] and got[B]
    assert not set(got[A]) & set(got[B])
    run_to_end(p)
    assert p.done and p.peers[A].received + p.peers[B].received == TOTAL


@pytest.mark.parametrize("size,leaves,why", [
    (len(DATA), LEAVES[:-32] + bytes(32), "do not match the blob id"),     # forged
    (len(DATA), LEAVES + bytes(32), "leaf hashes"),                       # one too many
    (len(DATA), LEAVES[:-1], "leaf hashes"),                              # not whole hashes
    (65 * CHUNK, bytes(32 * 65), "outside"),                              # over the store's cap
    (-1, LEAVES, "outside"),
    ("10", LEAVES, "outside"),
    (len(DATA), [LEAVES], "leaf hashes"),
])
def test_a_bad_leaf_list_blames_the_peer_and_drops_it(size, leaves, why):
    p = ready(A, B)
    v = p.on_leaves(A, size, leaves)
    assert isinstance(v, Blame) and why in v.reason
    assert p.peers[A].state == "dropped" and p.leaves is None
    assert isinstance(p.on_leaves(B, len(DATA), LEAVES), LeavesOk)
    assert set(asked(p.poll(1.0))) == {B}                   # only the honest peer is asked


def test_a_second_leaf_list_must_equal_the_verified_one_and_unasked_lists_are_ignored():
    p = ready(A, B)
    p.on_leaves(A, len(DATA), LEAVES)
    assert isinstance(p.on_leaves(B, len(DATA) - 1, LEAVES), Blame)
    assert isinstance(p.on_leaves(C, len(DATA), LEAVES), Ignore)          # never asked
    assert isinstance(p.on_leaves(A, len(DATA), LEAVES), Ignore)          # asked once, answered once


def test_a_forged_chunk_blames_its_sender_and_goes_to_the_other_peer():
    p = ready(A, B)
    p.on_leaves(A, len(DATA), LEAVES)
    first = asked(p.poll(1.0))
    p.on_leaves(B, len(DATA), LEAVES)
    forged = bytearray(chunk(first[A][0]))
    forged[7] ^= 1
    v = deliver(p, A, first[A][0], bytes(forged))
    assert isinstance(v, Blame) and "leaf hash" in v.reason and p.peers[A].state == "dropped"
    again = asked(p.poll(1.0))
    assert set(again) == {B} and set(first[A]) <= set(again[B])   # all of A's chunks, to B
    run_to_end(p)
    assert p.done and p.peers[B].received == TOTAL


def test_a_chunk_of_the_wrong_length_is_blamed_before_hashing():
    p = ready(A)
    p.on_leaves(A, len(DATA), LEAVES)
    p.poll(1.0)
    assert isinstance(p.on_chunk(A, 0, chunk(0)[:-1]), Blame)
    p = ready(A)
    p.on_leaves(A, len(DATA), LEAVES)
    p.poll(1.0)
    run = asked(p.poll(1.0))
    assert run == {}
    assert isinstance(p.on_chunk(A, 3, chunk(3) + b"x"), Blame)


def test_hostile_chunks_are_ignored_or_blamed_and_never_grow_state():
    p = ready(A, B)
    p.on_leaves(A, len(DATA), LEAVES)
    got = asked(p.poll(1.0))
    before = (p.in_flight(), p.verified, len(p._checking), len(p._owner))
    assert isinstance(p.on_chunk(C, 0, chunk(0)), Ignore)            # not a peer of this fetch
    assert isinstance(p.on_chunk(B, got[A][0], chunk(got[A][0])), Ignore)  # asked of A, not B
    assert isinstance(p.on_chunk(C, 10**9, b""), Ignore)
    assert isinstance(p.on_chunk(A, "0", chunk(0)), Ignore)
    assert isinstance(p.on_checked(B, got[A][0], leaf_of(chunk(got[A][0]))), Ignore)  # no Check was given
    assert (p.in_flight(), p.verified, len(p._checking), len(p._owner)) == before
    v = p.on_chunk(A, TOTAL, b"x")                                    # out of range from a serving peer
    assert isinstance(v, Blame) and "out of range" in v.reason


def test_a_late_chunk_goes_to_another_peer_and_a_peer_that_keeps_timing_out_is_dropped():
    p = ready(A, B)
    p.on_leaves(A, len(DATA), LEAVES)
    first = asked(p.poll(1.0))[A]
    p.on_leaves(B, len(DATA), LEAVES)
    b_first = asked(p.poll(1.0))[B]
    for i in b_first:
        deliver(p, B, i)
    again = asked(p.poll(1.0 + CFG.chunk_timeout + 0.1))           # A delivered nothing in time
    assert again[B] and set(again[B]) <= set(first)                 # A's chunks go to B ...
    assert not set(first) & set(again.get(A, []))                   # ... and not back to A
    assert isinstance(deliver(p, A, first[0]), Ignore)              # too late: it is B's now
    assert p.peers[A].strikes == 1
    p2 = ready(A)
    p2.on_leaves(A, len(DATA), LEAVES)
    p2.poll(1.0)
    p2.poll(10.0)
    p2.poll(20.0)
    assert p2.peers[A].state == "dropped" and p2.stalled


def test_missing_and_silent_peers_are_dropped_and_then_the_fetch_is_stalled():
    p = ready(A, B)
    p.on_missing(A)
    assert not p.stalled
    p.poll(1.0 + CFG.leaves_timeout)                                 # B never answered
    assert p.peers[B].state == "dropped" and p.stalled


def test_a_resumed_fetch_asks_only_for_what_was_not_verified():
    p = FetchPlanner(DIGEST, 64 * CHUNK, FetchConfig(window=16, batch=1, max_in_flight=16))
    p.resume(len(DATA), LEAVES, [0, 1, 2, 5, 9])
    assert p.resumed == 5
    p.add_peer(A)
    p.poll(0.0)
    p.on_leaves(A, len(DATA), LEAVES)
    assert asked(p.poll(1.0)) == {A: [3, 4, 6, 7, 8]}
    with pytest.raises(ValueError):
        FetchPlanner(DIGEST, 64 * CHUNK).resume(len(DATA), bytes(len(LEAVES)), [])


def test_the_empty_blob_and_a_one_chunk_blob():
    for data in (b"", b"xyz"):
        digest = blob_id(data)
        p = FetchPlanner(digest, CHUNK)
        p.add_peer(A)
        p.poll(0.0)
        assert isinstance(p.on_leaves(A, len(data), leaf_of(data)), LeavesOk)
        assert asked(p.poll(1.0)) == {A: [0]}
        assert isinstance(deliver(p, A, 0, data), Accept) and p.done


events = st.lists(st.tuples(st.sampled_from(["chunk", "garbage", "leaves", "missing_other", "tick"]),
                            st.integers(-3, 40)), max_size=60)


@settings(max_examples=60, deadline=None)
@given(events)
def test_whatever_a_hostile_peer_sends_the_honest_peer_completes_the_blob(hostile):
    """C sends anything at any time; A is honest. The fetch ends with every chunk verified,
    nothing ever over the caps, and C never gets a chunk accepted that was not the real one."""
    p = ready(A, C)
    p.on_leaves(A, len(DATA), LEAVES)
    now = 1.0
    for step, (kind, n) in enumerate(hostile):
        if kind == "chunk":
            v = deliver(p, C, n, chunk(n) if 0 <= n < TOTAL else b"?")
        elif kind == "garbage":
            v = deliver(p, C, n % TOTAL, b"\x00" * len(chunk(n % TOTAL)))
            assert not isinstance(v, Accept)
        elif kind == "leaves":
            p.on_leaves(C, len(DATA) + n, LEAVES)
        elif kind == "tick":
            now += n % 3            # A answers every other step: never late
        else:
            p.on_missing(B)
        assert p.in_flight() <= CFG.max_in_flight
        assert all(q.in_flight <= CFG.window for q in p.peers.values())
        assert len(p._checking) <= p.in_flight() and set(p.peers) <= {A, C}
        p.poll(now)
        if step % 2:
            answer(p, A)
    for _ in range(2 * TOTAL):
        if p.done:
            break
        now += CFG.chunk_timeout + 1      # C's requests time out; A answers at once
        p.poll(now)
        answer(p, A)
    assert p.done and p.verified == TOTAL and p.peers[A].state == "ready"


def answer(p: FetchPlanner, peer: bytes) -> None:
    for i, (owner, _) in sorted(p._owner.items()):
        if owner == peer:
            assert isinstance(deliver(p, peer, i), Accept)


# -- the partial file ---------------------------------------------------------------------------

def test_a_partial_file_resumes_from_re_verified_chunks_and_becomes_the_blob(tmp_path):
    store = BlobStore(tmp_path, max_bytes=64 * CHUNK)
    part = PartialBlob(store, DIGEST)
    assert part.load() == []
    part.start(len(DATA), LEAVES)
    for i in (0, 3, 4, 9):
        part.write(i * CHUNK, chunk(i))
        part.mark(i)
    part.close()
    with open(part.path, "r+b") as f:   # chunk 4 rots on disk after its bit was written
        f.seek(4 * CHUNK + 10)
        f.write(b"!")
    again = PartialBlob(store, DIGEST)
    assert again.load() == [0, 3, 9]
    for i in range(TOTAL):
        if i not in (0, 3, 9):
            again.write(i * CHUNK, chunk(i))
            again.mark(i)
    path = again.finish()
    assert path == store.path(DIGEST) and path.read_bytes() == DATA
    assert store.stored_leaves(DIGEST) == LEAVES
    assert sorted(p.name for p in tmp_path.iterdir()) == [DIGEST.hex(), f"{DIGEST.hex()}.leaves"]


def test_a_partial_state_that_does_not_match_the_id_is_discarded(tmp_path):
    store = BlobStore(tmp_path, max_bytes=64 * CHUNK)
    part = PartialBlob(store, DIGEST)
    part.start(len(DATA), LEAVES)
    part.close()
    raw = bytearray(part.state_path.read_bytes())
    raw[20] ^= 1                                    # a leaf hash
    part.state_path.write_bytes(bytes(raw))
    assert PartialBlob(store, DIGEST).load() == []
    assert list(tmp_path.iterdir()) == []


def test_a_store_blob_without_a_sidecar_gets_one_and_a_corrupt_sidecar_is_not_used(tmp_path):
    store = BlobStore(tmp_path, max_bytes=64 * CHUNK)
    digest = store.put(DATA)
    assert store.stored_leaves(digest) == LEAVES
    store.leaves_path(digest).write_bytes(os.urandom(len(LEAVES)))
    assert store.stored_leaves(digest) is None
    assert store.leaves(digest) == LEAVES and store.stored_leaves(digest) == LEAVES
    store.leaves_path(digest).unlink()
    assert store.leaves(digest) == LEAVES and store.leaves_path(digest).exists()


def test_unfinished_fetches_on_disk_are_bounded_and_running_ones_spared(tmp_path):
    store = BlobStore(tmp_path, max_bytes=64 * CHUNK)
    digests = []
    for i in range(10):
        data, digest, leaves = blob(0, tail=10 + i)
        part = PartialBlob(store, digest)
        part.start(len(data), leaves)
        part.close()
        os.utime(part.state_path, (1000 + i, 1000 + i))
        digests.append(digest)
    (tmp_path / f".fetch-{'ab' * 32}").write_bytes(b"x")          # a partial without its state
    prune_partials(store, keep=8, spare={digests[0]})
    left = sorted(p.name for p in tmp_path.iterdir())
    kept = [digests[0]] + digests[3:]                                # the running one and the newest 7
    assert left == sorted([f".fetch-{d.hex()}" for d in kept] + [f".fetch-{d.hex()}.have" for d in kept])
