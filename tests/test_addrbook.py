"""p2p.addrbook: the bounded new/tried address book. A flood from one source stays inside the
few buckets its group hashes to and cannot push out entries that work; entries expire, back
off and are dropped when they keep failing; dialing favours addresses we have reached."""
from __future__ import annotations

import random

from hypothesis import given, settings, strategies as st

from p2p.addrbook import AddrBook, BookConfig
from p2p.netaddr import addr_group, netgroup

CFG = BookConfig()
PER_SOURCE = CFG.new_buckets_per_source_group * CFG.bucket_size


def make_book(seed: int = 1, secret: bytes = b"k" * 32, **cfg) -> AddrBook:
    return AddrBook(secret, random.Random(seed), BookConfig(**cfg))


def ident(rng: random.Random) -> bytes:
    return rng.randbytes(20)


def random_addr(rng: random.Random) -> str:
    return f"{rng.randrange(1, 224)}.{rng.randrange(256)}.{rng.randrange(256)}.{rng.randrange(1, 255)}:{rng.randrange(1, 65536)}"


def check_invariants(book: AddrBook) -> None:
    """Every entry sits in exactly the slot it names, and every occupied slot is an entry."""
    occupied = 0
    for table, tried in ((book._new, False), (book._tried, True)):
        for b, bucket in enumerate(table):
            for s, peer_id in enumerate(bucket):
                if peer_id is not None:
                    occupied += 1
                    e = book.entries[peer_id]
                    assert (e.tried, e.bucket, e.slot) == (tried, b, s)
    assert occupied == len(book.entries) <= book.capacity


def flood(book: AddrBook, source: str, count: int, rng: random.Random, now: float = 0.0) -> int:
    return sum(book.add(ident(rng), random_addr(rng), source, now) for _ in range(count))


# -- bounds --------------------------------------------------------------------------------

@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 2**32), a=st.integers(0, 255), b=st.integers(0, 255))
def test_a_flood_from_one_source_group_fills_at_most_its_buckets(seed, a, b):
    rng = random.Random(seed)
    book = make_book(seed)
    source = netgroup(f"{a}.{b}.9.9")
    flood(book, source, 3000, rng)
    buckets = {e.bucket for e in book.entries.values()}
    assert len(book) <= PER_SOURCE and len(buckets) <= CFG.new_buckets_per_source_group
    assert len(book) > PER_SOURCE // 2  # and it does fill them: the bound is not vacuous
    check_invariants(book)


def test_a_flood_cannot_push_out_entries_that_work():
    rng = random.Random(7)
    book = make_book()
    honest = {}
    for i in range(200):  # honest addresses, each told by a different source group
        pid, addr = ident(rng), random_addr(rng)
        if book.add(pid, addr, f"v4:50.{i}", 0.0):
            honest[pid] = addr
    assert len(honest) > 150
    for i in range(20):  # then an attacker with 20 source groups floods 20,000 addresses
        flood(book, f"v4:66.{i}", 1000, rng, now=10.0)
    assert all(book.entries[p].addr == a for p, a in honest.items())
    assert len(book) <= len(honest) + 20 * PER_SOURCE
    check_invariants(book)


def test_any_number_of_sources_never_exceeds_capacity():
    rng = random.Random(3)
    book = make_book()
    for i in range(2000):
        flood(book, f"v4:{i // 256}.{i % 256}", 5, rng)
    for pid in list(book.entries)[:300]:
        book.good(pid, book.entries[pid].addr, "v4:1.1", 1.0)
    assert len(book) <= book.capacity
    assert book.counts()[1] <= CFG.tried_buckets * CFG.bucket_size
    check_invariants(book)


def test_the_secret_decides_which_buckets_a_source_reaches():
    spans = []
    for secret in (b"a" * 32, b"b" * 32):
        book = make_book(secret=secret)
        flood(book, "v4:9.9", 1000, random.Random(5))
        spans.append({e.bucket for e in book.entries.values()})
    assert spans[0] != spans[1]


def test_one_entry_per_key_and_only_its_owner_may_move_an_unreached_address():
    book = make_book()
    pid = b"\x01" * 20
    assert book.add(pid, "10.0.0.1:1000", "v4:1.1", 0.0)
    assert book.add(pid, "10.0.0.2:1000", "v4:6.6", 1.0) is False  # gossip does not move it
    assert book.entries[pid].addr == "10.0.0.1:1000"
    assert book.add(pid, "10.0.0.3:1000", "v4:10.0", 2.0, replace=True)  # the peer's own hello may
    assert book.entries[pid].addr == "10.0.0.3:1000" and len(book) == 1
    book.good(pid, "10.0.0.3:1000", "v4:10.0", 3.0)
    assert book.add(pid, "10.0.0.4:1000", "v4:10.0", 4.0, replace=True) is False  # a reached one stays
    assert book.add(b"\x02" * 20, "not an address", "v4:1.1", 0.0) is False
    check_invariants(book)


# -- expiry, backoff, dropping --------------------------------------------------------------

def test_new_entries_expire_unless_re_advertised():
    book = make_book(new_ttl=100.0)
    a, b = b"\xaa" * 20, b"\xbb" * 20
    book.add(a, "10.0.0.1:1", "v4:1.1", 0.0)
    book.add(b, "10.0.0.2:1", "v4:1.1", 0.0)
    book.add(b, "10.0.0.2:1", "v4:2.2", 80.0)  # heard of again
    assert book.expire(150.0) == 1
    assert a not in book and b in book
    assert book.expire(181.0) == 1 and len(book) == 0


def test_tried_entries_expire_when_not_reached_for_their_ttl():
    book = make_book(tried_ttl=1000.0, new_ttl=10.0)
    pid = b"\xcc" * 20
    book.good(pid, "10.0.0.1:1", "v4:1.1", 0.0)
    assert book.expire(500.0) == 0 and book.entries[pid].tried  # the short new TTL does not apply
    book.good(pid, "10.0.0.1:1", "v4:1.1", 900.0)
    assert book.expire(1800.0) == 0
    assert book.expire(1901.0) == 1 and pid not in book


def test_backoff_doubles_with_each_failure_up_to_the_cap():
    book = make_book(backoff_base=2.0, backoff_max=60.0, max_tried_failures=100)
    pid = b"\xdd" * 20
    book.good(pid, "10.0.0.1:1", "v4:1.1", 0.0)
    delays = []
    for n in range(1, 9):
        book.attempt(pid, 100.0 * n)
        book.failed(pid, 100.0 * n)
        delays.append(book.entries[pid].next_try - 100.0 * n)
    for n, d in enumerate(delays, start=1):
        nominal = min(2.0 * 2 ** n, 60.0)
        assert nominal <= d <= nominal * 1.25, (n, d)
    assert book.entries[pid].failures == 8


def test_an_address_never_reached_is_dropped_after_its_tries():
    book = make_book(max_new_failures=3)
    pid = b"\xee" * 20
    book.add(pid, "10.0.0.1:1", "v4:1.1", 0.0)
    for n in range(2):
        book.failed(pid, float(n))
        assert pid in book
    book.failed(pid, 3.0)
    assert pid not in book
    check_invariants(book)


def test_a_tried_address_that_keeps_failing_goes_back_to_new_then_out():
    book = make_book(max_tried_failures=5)
    pid = b"\xef" * 20
    book.good(pid, "10.0.0.1:1", "v4:1.1", 0.0)
    for n in range(5):
        assert book.entries[pid].tried
        book.failed(pid, float(n))
    assert pid in book and not book.entries[pid].tried
    book.failed(pid, 10.0)
    assert pid not in book
    check_invariants(book)


def test_success_resets_failures():
    book = make_book()
    pid = b"\x11" * 20
    book.add(pid, "10.0.0.1:1", "v4:1.1", 0.0)
    book.failed(pid, 1.0)
    book.failed(pid, 2.0)
    book.good(pid, "10.0.0.1:1", "v4:1.1", 3.0)
    e = book.entries[pid]
    assert e.tried and e.failures == 0 and e.next_try == 3.0


# -- tried and new ---------------------------------------------------------------------------

def test_a_tried_slot_collision_sends_the_occupant_back_to_new():
    book = make_book(tried_buckets=1, bucket_size=2, tried_buckets_per_group=1)
    rng = random.Random(11)
    reached = []
    while len(reached) < 6:  # more reached addresses than the 2 tried slots
        pid = ident(rng)
        book.good(pid, random_addr(rng), "v4:1.1", float(len(reached)))
        reached.append(pid)
        check_invariants(book)
    new, tried = book.counts()
    assert tried == 2 and book.entries[reached[-1]].tried
    demoted = [p for p in reached if p in book and not book.entries[p].tried]
    assert len(demoted) == 4 and new == 4  # none lost: "new" had room for all of them


def test_dialing_favours_tried_addresses():
    rng = random.Random(2)
    book = make_book(seed=9)
    flood(book, "v4:1.1", 100, rng)
    flood(book, "v4:2.2", 100, rng)
    reached = [ident(rng) for _ in range(3)]
    for pid in reached:
        book.good(pid, random_addr(rng), "v4:3.3", 0.0)
    picks = [book.select(0.0, lambda _: True).peer_id for _ in range(2000)]
    share = sum(p in reached for p in picks) / len(picks)
    assert 0.68 < share < 0.82, share  # 75% by config, although they are 3 of 203 entries


def test_select_skips_entries_backing_off_or_unusable():
    book = make_book()
    a, b = b"\x0a" * 20, b"\x0b" * 20
    book.add(a, "10.0.0.1:1", "v4:1.1", 0.0)
    book.add(b, "10.0.0.2:1", "v4:1.1", 0.0)
    book.attempt(a, 0.0)
    assert {book.select(0.5, lambda _: True).peer_id for _ in range(50)} == {b}
    assert book.select(0.5, lambda p: p != b) is None
    assert book.select(100.0, lambda p: p != b).peer_id == a


def test_selection_is_spread_by_bucket_not_by_entry_count():
    """An attacker owning 128 entries of one source's buckets does not own 128/136 of the picks."""
    rng = random.Random(4)
    book = make_book(seed=4)
    flood(book, "v4:66.6", 2000, rng)
    attacker = set(book.entries)
    honest = set()
    for i in range(8):  # eight honest entries from eight other sources
        pid = ident(rng)
        if book.add(pid, random_addr(rng), f"v4:{100 + i}.0", 0.0):
            honest.add(pid)
    picks = [book.select(0.0, lambda _: True).peer_id for _ in range(2000)]
    honest_share = sum(p in honest for p in picks) / len(picks)
    entry_share = len(honest) / (len(honest) + len(attacker))
    assert honest_share > 3 * entry_share, (honest_share, entry_share)


def test_sample_for_pex_prefers_tried_and_leaves_out_bad_and_the_asker():
    book = make_book()
    rng = random.Random(8)
    flood(book, "v4:1.1", 40, rng)
    tried = [ident(rng) for _ in range(5)]
    for pid in tried:
        book.good(pid, random_addr(rng), "v4:2.2", 0.0)
    failing = next(iter(p for p in book.entries if not book.entries[p].tried))
    book.failed(failing, 0.0)
    got = book.sample(10, 0.0, exclude=tried[0])
    ids = [e.peer_id for e in got]
    assert len(got) == 10 and set(ids[:4]) == set(tried[1:])
    assert tried[0] not in ids and failing not in ids


# -- whatever the sequence, the grid stays consistent -----------------------------------------

OPS = st.lists(st.tuples(st.sampled_from(["add", "own", "good", "fail", "remove", "expire"]),
                         st.integers(0, 40), st.integers(0, 30), st.integers(0, 5)), max_size=300)


@settings(max_examples=60, deadline=None)
@given(ops=OPS)
def test_any_sequence_of_operations_keeps_the_book_consistent(ops):
    book = make_book(new_buckets=4, tried_buckets=2, bucket_size=3, new_buckets_per_source_group=2,
                     tried_buckets_per_group=1, new_ttl=50.0, tried_ttl=200.0)
    now = 0.0
    for op, who, host, src in ops:
        now += 1.0
        pid, addr, source = bytes([who]) * 20, f"10.{host}.0.1:{1000 + who}", f"v4:7.{src}"
        if op == "add":
            book.add(pid, addr, source, now)
        elif op == "own":
            book.add(pid, f"10.{host}.9.9:1", source, now, replace=True)
        elif op == "good":
            book.good(pid, addr, source, now)
        elif op == "fail":
            book.attempt(pid, now)
            book.failed(pid, now)
        elif op == "remove":
            book.remove(pid)
        else:
            book.expire(now)
        check_invariants(book)
        for e in book.entries.values():
            assert addr_group(e.addr).startswith("v4:10.")


def test_free_local_ports_are_below_the_ephemeral_range_bindable_and_never_repeated():
    """A node's port picked from the ephemeral range could be taken by any outgoing connection
    before the node binds it (seen in CI: 'address already in use')."""
    import socket

    from p2p.netaddr import _ephemeral_low, free_local_port
    ports = [free_local_port() for _ in range(200)]
    assert len(set(ports)) == len(ports)
    if _ephemeral_low() > 21000:
        assert all(20000 <= p < _ephemeral_low() for p in ports)
    with socket.socket() as s:
        s.bind(("127.0.0.1", ports[-1]))
