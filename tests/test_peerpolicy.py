"""p2p.peerpolicy and p2p.pex, sans-I/O: slots per direction, outbound slots reserved for our
own dials, protected peers (persistent, validators) always admitted and never evicted,
Bitcoin-style inbound eviction, the half-open cap, per-IP limits, bans, dial pacing and
backoff, and peer exchange that only takes what we asked for."""
from __future__ import annotations

import random

from hypothesis import given, settings, strategies as st

from p2p.addrbook import BookConfig
from p2p.netaddr import netgroup
from p2p.peerpolicy import Accept, Admit, PeerLimits, PeerPolicy, Refuse
from p2p.pex import PexConfig

SELF = b"\x00" * 20
SMALL = PeerLimits(max_outbound=3, max_inbound=6, max_inbound_per_ip=2, max_half_open=4,
                   max_half_open_per_ip=2, max_dialing=2, dial_interval=1.0)


def pid(n: int) -> bytes:
    return n.to_bytes(20, "big")


def make(limits: PeerLimits = SMALL, validators=(), persistent=None, seed: int = 1, **kw) -> PeerPolicy:
    vals = set(validators)
    return PeerPolicy(SELF, persistent or {}, lambda p: p in vals, b"s" * 32, random.Random(seed), limits, **kw)


def fill_inbound(pol: PeerPolicy, count: int, start: int = 100, now: float = 0.0) -> list[bytes]:
    """`count` unprotected inbound peers, each from its own IP in its own /16."""
    ids = []
    for i in range(count):
        d = pol.admit(pid(start + i), f"10.{start + i}.0.1", False, now + i)
        assert isinstance(d, Admit) and not d.evict, d
        ids.append(pid(start + i))
    return ids


# -- slots ---------------------------------------------------------------------------------

def test_inbound_and_outbound_slots_are_counted_apart():
    pol = make(limits=PeerLimits(max_outbound=3, max_inbound=6, max_inbound_per_ip=2,
                                 protect_netgroups=0, protect_ping=0))
    fill_inbound(pol, 6)
    for i in range(3):  # a full inbound side leaves every outbound slot to our own dials
        assert pol.admit(pid(200 + i), f"10.200.{i}.1", True, 10.0) == Admit()
    assert isinstance(pol.admit(pid(300), "10.250.0.1", True, 11.0), Refuse)  # outbound full
    s = pol.summary()
    assert (s["inbound"], s["outbound"]) == (6, 3)


def test_inbound_peers_never_take_the_reserved_outbound_slots():
    pol = make()
    for i in range(40):
        pol.admit(pid(100 + i), f"10.{i}.0.1", False, float(i))
    s = pol.summary()
    assert s["inbound"] == SMALL.max_inbound and s["outbound"] == 0
    pol.book.add(pid(900), "10.99.0.1:1", "v4:1.1", 0.0)
    assert [d.peer_id for d in pol.plan_dials(100.0)] == [pid(900)]


def test_a_full_inbound_side_evicts_an_unprotected_peer_or_refuses():
    pol = make()
    fill_inbound(pol, 6)
    d = pol.admit(pid(500), "10.77.0.1", False, 100.0)
    assert isinstance(d, Admit) and len(d.evict) == 1 and d.evict[0] != pid(500)
    assert d.evict[0] not in pol.peers and pol.summary()["inbound"] == 6
    # when every candidate is spared (here: all old and all useful), the newcomer is refused
    pol2 = make(limits=PeerLimits(max_inbound=4, protect_netgroups=0, protect_ping=0, protect_blocks=4))
    for p in fill_inbound(pol2, 4):
        pol2.on_useful(p, "proposal", 50.0)
    assert pol2.admit(pid(600), "10.66.0.1", False, 100.0) == Refuse("inbound slots full")


def test_unprotected_inbound_peers_are_limited_per_ip():
    pol = make(validators={pid(9)})
    assert pol.admit(pid(1), "10.0.0.1", False, 0.0) == Admit()
    assert pol.admit(pid(2), "10.0.0.1", False, 0.0) == Admit()
    assert pol.admit(pid(3), "10.0.0.1", False, 0.0) == Refuse("too many peers from 10.0.0.1")
    assert pol.admit(pid(9), "10.0.0.1", False, 0.0) == Admit()  # a validator behind the same IP
    assert pol.admit(pid(4), "10.0.0.2", False, 0.0) == Admit()


# -- protected peers ---------------------------------------------------------------------

def test_validators_and_persistent_peers_get_a_slot_when_inbound_is_full():
    pol = make(validators={pid(1)}, persistent={pid(2): "10.2.0.1:1"})
    sybils = fill_inbound(pol, 6)
    for who in (pid(1), pid(2)):
        d = pol.admit(who, "127.0.0.1", False, 100.0)
        assert isinstance(d, Admit) and len(d.evict) == 1 and d.evict[0] in sybils
    assert pid(1) in pol.peers and pid(2) in pol.peers and pol.summary()["inbound"] == 6


def test_protected_peers_go_over_the_limit_rather_than_be_refused():
    vals = {pid(i) for i in range(1, 20)}
    pol = make(validators=vals)
    for i in range(1, 20):  # 19 validators into 6 inbound slots: nobody to evict, nobody refused
        assert pol.admit(pid(i), "127.0.0.1", False, float(i)) == Admit()
    assert pol.summary()["inbound"] == 19
    assert pol.select_to_evict() is None
    assert pol.admit(pid(50), "10.5.0.1", False, 30.0) == Refuse("inbound slots full")


def test_a_persistent_peer_takes_the_youngest_unprotected_outbound_slot():
    pol = make(persistent={pid(7): "10.7.0.1:1"})
    for i in range(3):
        assert pol.admit(pid(10 + i), f"10.1{i}.0.1", True, float(i)) == Admit()
    assert pol.admit(pid(7), "10.7.0.1", True, 10.0) == Admit((pid(12),))


@settings(max_examples=80, deadline=None)
@given(peers=st.lists(st.tuples(st.booleans(), st.booleans(), st.integers(0, 5), st.integers(0, 1000),
                                st.one_of(st.none(), st.integers(1, 500)),
                                st.sets(st.sampled_from(["txs", "proposal", "vote"]))),
                      min_size=1, max_size=40))
def test_eviction_never_picks_a_protected_or_outbound_peer(peers):
    vals = {pid(i) for i, (v, *_rest) in enumerate(peers) if v}
    pol = make(limits=PeerLimits(max_inbound=1000, max_inbound_per_ip=1000, max_outbound=1000), validators=vals)
    for i, (_v, outbound, group, age, ping, useful) in enumerate(peers):
        pol.admit(pid(i), f"10.{group}.0.{i % 250 + 1}", outbound, float(age))
        if ping is not None:
            pol.on_ping(pid(i), ping / 1000)
        for kind in sorted(useful):
            pol.on_useful(pid(i), kind, float(age + 1))
    victim = pol.select_to_evict()
    if victim is not None:
        assert victim not in vals and not pol.peers[victim].outbound


# -- who is evicted --------------------------------------------------------------------------

def test_endless_sybil_churn_never_evicts_the_long_lived_honest_peers():
    pol = make(limits=PeerLimits(max_inbound=24, max_inbound_per_ip=24))
    honest = [pid(1 + i) for i in range(6)]
    for i, p in enumerate(honest):  # long-lived, each in its own /16
        assert pol.admit(p, f"10.{i}.0.1", False, float(i)) == Admit()
    sybils = []
    for i in range(18):  # an attacker with one /16 and many IPs fills the rest, later
        assert pol.admit(pid(100 + i), f"66.6.0.{i + 1}", False, 1000.0 + i) == Admit()
        sybils.append(pid(100 + i))
    assert pol.select_to_evict() == sybils[-1]  # the youngest of the biggest group
    for i in range(300):  # then keeps connecting fresh keys: each one costs the attacker a slot
        d = pol.admit(pid(1000 + i), f"66.6.{i % 200}.{i % 250 + 1}", False, 2000.0 + i)
        assert isinstance(d, Admit) and len(d.evict) == 1
        assert d.evict[0] not in honest
    assert all(p in pol.peers for p in honest) and pol.summary()["inbound"] == 24


def test_honest_newcomers_displace_sybils_that_came_first_from_one_netgroup():
    """Age alone would spare the attacker here; the netgroup rule does not."""
    pol = make(limits=PeerLimits(max_inbound=24, max_inbound_per_ip=24))
    sybils = [pid(100 + i) for i in range(24)]
    for i, p in enumerate(sybils):
        assert pol.admit(p, f"66.6.0.{i + 1}", False, float(i)) == Admit()
    honest = [pid(1 + i) for i in range(8)]
    for i, p in enumerate(honest):  # later, each from its own /16
        d = pol.admit(p, f"10.{i}.0.1", False, 1000.0 + i)
        assert isinstance(d, Admit) and d.evict and d.evict[0] in sybils
    assert all(p in pol.peers for p in honest) and pol.summary()["inbound"] == 24


def test_the_biggest_netgroup_loses_a_member_not_a_lone_young_peer():
    pol = make(limits=PeerLimits(max_inbound=50, max_inbound_per_ip=50, protect_netgroups=0, protect_ping=0))
    for i in range(10):  # old peers, spared by longevity
        pol.admit(pid(1 + i), f"10.{i}.0.1", False, float(i))
    for i in range(4):
        pol.admit(pid(100 + i), f"66.6.0.{i + 1}", False, 100.0 + i)
    pol.admit(pid(200), "77.7.0.1", False, 500.0)  # the youngest of all, alone in its group
    assert pol.select_to_evict() == pid(103)


def test_recently_useful_and_low_latency_peers_are_spared():
    limits = PeerLimits(max_inbound=50, max_inbound_per_ip=50, protect_netgroups=0, protect_ping=1,
                        protect_blocks=1, protect_votes=1, protect_txs=1)
    pol = make(limits=limits)
    ids = [pid(10 + i) for i in range(8)]
    for i, p in enumerate(ids):  # all in one group, connected at about the same time
        pol.admit(p, f"66.6.0.{i + 1}", False, 100.0 + i)
    # the four youngest each have one merit; the old four have none
    pol.on_ping(ids[7], 0.001)
    pol.on_useful(ids[6], "proposal", 200.0)
    pol.on_useful(ids[5], "vote", 200.0)
    pol.on_useful(ids[4], "txs", 200.0)
    # without merits the youngest would go; now the four merited are spared, then half of
    # the rest by age (ids 0, 1), and the youngest of what is left goes
    assert pol.select_to_evict() == ids[3]


# -- half-open sockets -------------------------------------------------------------------------

def test_half_open_sockets_are_capped_per_ip_by_closing_that_ips_oldest():
    pol = make()
    a = [pol.open_inbound("10.0.0.1", float(i)) for i in range(2)]
    assert all(isinstance(x, Accept) and not x.evict for x in a)
    third = pol.open_inbound("10.0.0.1", 3.0)
    assert third.evict == (a[0].token,)
    assert sorted(pol.half_open) == sorted([a[1].token, third.token])


def test_half_open_sockets_are_capped_overall_at_the_expense_of_the_most_crowded_ip():
    pol = make()
    tokens = [pol.open_inbound("66.6.0.1", 0.0).token, pol.open_inbound("66.6.0.1", 0.0).token,
              pol.open_inbound("66.6.0.2", 0.0).token, pol.open_inbound("10.0.0.1", 0.0).token]
    got = pol.open_inbound("10.9.0.9", 1.0)  # full: the oldest socket of the IP with two goes
    assert got.evict == (tokens[0],) and len(pol.half_open) == SMALL.max_half_open
    pol.close_half_open(got.token)  # its handshake finished
    assert pol.open_inbound("10.8.0.8", 2.0).evict == ()


@settings(max_examples=60, deadline=None)
@given(ops=st.lists(st.tuples(st.booleans(), st.integers(0, 6)), max_size=200))
def test_half_open_never_exceeds_its_caps_and_always_admits_the_newcomer(ops):
    pol = make()
    live: list[int] = []
    for i, (close, ip) in enumerate(ops):
        if close and live:
            pol.close_half_open(live.pop(0))
            continue
        got = pol.open_inbound(f"10.0.0.{ip}", float(i))
        assert isinstance(got, Accept) and got.token in pol.half_open
        live = [t for t in live if t not in got.evict] + [got.token]
        assert len(pol.half_open) <= SMALL.max_half_open
        per_ip = [list(pol.half_open.values()).count(x) for x in set(pol.half_open.values())]
        assert max(per_ip) <= SMALL.max_half_open_per_ip
        assert sorted(live) == sorted(pol.half_open)


# -- bans and isolation -------------------------------------------------------------------------

def test_a_banned_key_is_refused_until_the_ban_ends_and_leaves_the_book():
    pol = make()
    pol.book.add(pid(5), "10.5.0.1:1", "v4:1.1", 0.0)
    pol.ban(pid(5), 10.0)
    assert pid(5) not in pol.book
    assert pol.precheck(pid(5), 20.0) == Refuse("banned")
    assert pol.admit(pid(5), "10.5.0.1", False, 20.0) == Refuse("banned")
    assert pol.precheck(pid(5), 10.0 + SMALL.ban_seconds + 1) is None
    pol.housekeeping(10.0 + SMALL.ban_seconds + 1)
    assert pid(5) not in pol.bans


def test_isolation_refuses_everything_and_dials_nobody():
    pol = make(persistent={pid(3): "10.3.0.1:1"})
    pol.isolate(0.0, 5.0)
    assert isinstance(pol.open_inbound("10.0.0.1", 1.0), Refuse)
    assert isinstance(pol.admit(pid(3), "10.3.0.1", True, 1.0), Refuse)
    assert pol.plan_dials(1.0) == []
    assert [d.peer_id for d in pol.plan_dials(6.0)] == [pid(3)]


# -- dialing ------------------------------------------------------------------------------------

def test_persistent_peers_are_redialed_with_growing_backoff_reset_on_connect():
    pol = make(limits=PeerLimits(persistent_backoff_base=0.5, persistent_backoff_max=4.0),
               persistent={pid(3): "10.3.0.1:1"})
    times, now = [], 0.0
    while len(times) < 7 and now < 100:
        if pol.plan_dials(now):
            times.append(now)
            pol.dial_done(pid(3), "10.3.0.1:1", False, None, now)
        now = round(now + 0.05, 2)
    gaps = [b - a for a, b in zip(times, times[1:])]
    for gap, nominal in zip(gaps, [0.5, 1, 2, 4, 4, 4]):
        assert nominal <= gap <= nominal * 1.25 + 0.06, gaps
    assert pol.admit(pid(3), "10.3.0.1", True, now) == Admit()
    pol.disconnected(pid(3))
    assert pol.plan_dials(now)  # reconnects at once after a good connection


def test_book_dials_fill_free_outbound_slots_paced_and_a_few_at_a_time():
    pol = make()
    for i in range(20):
        pol.book.add(pid(100 + i), f"10.{i}.0.1:1", f"v4:1.{i}", 0.0)
    first = pol.plan_dials(0.0)
    assert len(first) == 1 and pol.plan_dials(0.5) == []  # one per dial_interval
    second = pol.plan_dials(1.0)
    assert len(second) == 1 and pol.plan_dials(2.0) == []  # max_dialing (2) in flight
    pol.dial_done(first[0].peer_id, first[0].addr, True, "10.0.0.1", 2.0)
    assert pol.book.entries[first[0].peer_id].tried
    pol.admit(first[0].peer_id, "10.0.0.1", True, 2.0)
    pol.dial_done(second[0].peer_id, second[0].addr, False, None, 2.0)
    assert pol.book.entries[second[0].peer_id].failures == 1
    assert len(pol.plan_dials(3.0)) == 1
    assert len(pol.plan_dials(4.0)) == 1  # 1 connected + 2 dialing = max_outbound
    assert pol.plan_dials(10.0) == []


def test_book_dials_prefer_network_groups_we_have_no_outbound_peer_in():
    pol = make(limits=PeerLimits(max_outbound=8, max_dialing=8, dial_interval=0.0))
    for i in range(60):  # a poisoned book: 60 addresses in one /16, and 3 elsewhere
        pol.book.add(pid(100 + i), f"66.6.{i}.1:1", f"v4:1.{i}", 0.0)
    for i in range(3):
        pol.book.add(pid(300 + i), f"10.{i}.0.1:1", f"v4:2.{i}", 0.0)
    picked = [pol.plan_dials(float(t))[0] for t in range(4)]
    groups = [netgroup(d.addr.rpartition(":")[0]) for d in picked]
    assert sorted(groups) == ["v4:10.0", "v4:10.1", "v4:10.2", "v4:66.6"]
    assert len(pol.plan_dials(5.0)) == 1  # and with every group used, any address will do


def test_known_validators_are_dialed_without_waiting_for_a_free_slot():
    pol = make(validators={pid(42)})
    for i in range(3):
        pol.admit(pid(10 + i), f"10.1{i}.0.1", True, 0.0)  # outbound full
    pol.book.add(pid(42), "10.42.0.1:1", "v4:1.1", 0.0)
    pol.book.add(pid(43), "10.43.0.1:1", "v4:1.1", 0.0)
    assert [d.peer_id for d in pol.plan_dials(1.0)] == [pid(42)]
    assert pol.admit(pid(42), "10.42.0.1", True, 1.0) == Admit((pid(12),))


def test_a_flood_of_book_entries_is_dialed_at_a_bounded_rate():
    pol = make()
    rng = random.Random(1)
    for i in range(5000):
        pol.book.add(rng.randbytes(20), f"10.{i % 250}.{i // 250}.1:1", f"v4:9.{i % 50}", 0.0)
    dials, now = 0, 0.0
    while now < 60.0:  # every dial fails at once
        for d in pol.plan_dials(now):
            dials += 1
            pol.dial_done(d.peer_id, d.addr, False, None, now)
        now = round(now + 0.25, 2)
    assert dials <= 60 / SMALL.dial_interval + 1
    assert len(pol.book) <= pol.book.capacity


# -- peer exchange --------------------------------------------------------------------------------

def test_pex_only_from_peers_we_asked_once_each_and_never_oversized():
    pol = make()
    pol.admit(pid(1), "10.1.0.1", True, 0.0)
    pol.admit(pid(2), "10.2.0.1", False, 0.0)
    entries = [f"sc1{(500 + i).to_bytes(20, 'big').hex()}@10.{i}.0.1:1" for i in range(40)]
    v = pol.on_pex(pid(1), "10.1.0.1", entries[:5], 0.0)
    assert not v.ok and v.penalty and len(pol.book) == 0  # never asked: unsolicited
    assert pol.want_pex(pid(2), 0.0) is False  # inbound peers are never asked
    assert pol.want_pex(pid(1), 0.0) is True
    assert pol.want_pex(pid(1), 10.0) is False  # one request per interval
    assert pol.on_pex(pid(1), "10.1.0.1", entries, 1.0).penalty == PexConfig().oversized_penalty
    assert len(pol.book) == 0
    assert pol.want_pex(pid(1), 61.0)
    v = pol.on_pex(pid(1), "10.1.0.1", entries[:32], 62.0)
    assert v.ok and v.penalty == 0 and 28 <= len(pol.book) <= 32  # (a few may share a slot)
    assert all(e.source_group == netgroup("10.1.0.1") for e in pol.book.entries.values())
    assert pol.on_pex(pid(1), "10.1.0.1", entries[:5], 63.0).penalty  # one response per request


def test_pex_requests_are_answered_once_per_interval_with_at_most_max_addrs():
    pol = make(persistent={pid(3): "10.3.0.1:1"})
    for i in range(100):
        pol.book.add(pid(100 + i), f"10.{i}.0.1:1", f"v4:2.{i}", 0.0)
    v, addrs = pol.on_pex_request(pid(5), 0.0)
    assert v.ok and len(addrs) == PexConfig().max_addrs and addrs[0].endswith("@10.3.0.1:1")
    v, addrs = pol.on_pex_request(pid(5), 5.0)
    assert not v.ok and v.penalty and addrs == []
    assert pol.on_pex_request(pid(5), 31.0)[0].ok


def test_one_peer_cannot_flood_the_book_even_through_answered_requests():
    pol = make(book=BookConfig())
    pol.admit(pid(1), "66.6.0.1", True, 0.0)
    rng = random.Random(3)
    now = 0.0
    for _ in range(300):  # 300 solicited responses of 32 fresh addresses each: 9,600 addresses
        assert pol.want_pex(pid(1), now)
        batch = [f"sc1{rng.randbytes(20).hex()}@{rng.randrange(1, 224)}.{rng.randrange(256)}.0.1:1"
                 for _ in range(32)]
        assert pol.on_pex(pid(1), "66.6.0.1", batch, now + 1).ok
        now += 61.0
    bound = BookConfig().new_buckets_per_source_group * BookConfig().bucket_size
    assert len(pol.book) <= bound < 9600
