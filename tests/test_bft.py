"""consensus.bft: the sans-I/O round state machine, driven by events through an in-test network.

No sockets, threads or clocks: SignVote actions become VoteReceived events for every online
machine, Propose actions become ProposalReceived events, and ScheduleTimeout actions are fired
by hand when the network has gone quiet.
"""
from __future__ import annotations

import collections
import dataclasses
from collections import deque

import pytest

from consensus.bft import (BFT, NIL, PROPOSE, CommitBlock, NewHeight, Propose, ProposalReceived,
                           ReportEvidence, ScheduleTimeout, SignVote, Timeout, TimeoutConfig, VoteReceived,
                           proposer_for, verify_commit)
from consensus.crypto import sha256
from consensus.ledger import Validator
from consensus.types import PRECOMMIT, PREVOTE, Block, Commit, Header, Proposal, Vote
from tests.chainfactory import CHAIN_ID, key, signed_vote

KEYS = {k.address: k for k in (key(i) for i in range(1, 5))}


def validators(n: int, power: int = 10) -> tuple[Validator, ...]:
    ks = sorted((key(i) for i in range(1, n + 1)), key=lambda k: k.address)
    return tuple(Validator(k.address, k.pubkey, power) for k in ks)


VALS1 = validators(1)
VALS4 = validators(4)


def make_block(height: int, round_: int, proposer: bytes, tag: bytes = b"") -> Block:
    """A dummy block with correctly sized header fields, unique per (height, round, tag)."""
    seed = sha256(b"block/%d/%d/" % (height, round_) + tag)
    h32 = lambda label: sha256(seed + label)  # noqa: E731
    header = Header(CHAIN_ID, height, 1_000 * height + round_, h32(b"prev"), h32(b"txs"), h32(b"ev"),
                    h32(b"lc"), h32(b"app"), h32(b"vals"), proposer, h32(b"beacon"), (h32(b"s") * 2))
    return Block(header, (), None)


def vote(kind: str, height: int, round_: int, block_hash: bytes, validator: bytes, real_sig: bool = False) -> Vote:
    if real_sig:
        return signed_vote(KEYS[validator], kind, height, round_, block_hash)
    return Vote(kind, height, round_, block_hash, validator, b"\x5a" * 64)


class Net:
    """Routes actions between BFT machines. `silent` validators are offline: they neither
    receive nor send anything."""

    def __init__(self, vals: tuple[Validator, ...], silent=(), real_sigs: bool = False, followers: int = 0,
                 invalid_from=()):
        self.vals = vals
        self.machines: dict[bytes, BFT] = {v.address: BFT(v.address) for v in vals}
        for i in range(followers):
            self.machines[b"follower-%d" % i] = BFT(None)
        self.silent = set(silent)
        self.real_sigs = real_sigs
        self.invalid_from = set(invalid_from)  # proposers whose blocks everyone finds invalid
        self.queue: deque = deque()
        self.timers: list[tuple[bytes, ScheduleTimeout]] = []
        self.commits: dict[bytes, dict[int, CommitBlock]] = collections.defaultdict(dict)
        self.proposes: list[tuple[bytes, Propose]] = []
        self.votes: list[Vote] = []
        self.evidence: list[tuple[bytes, ReportEvidence]] = []

    def online(self):
        return [a for a in self.machines if a not in self.silent]

    def start_height(self, height: int) -> None:
        for addr in self.online():
            self.dispatch(addr, self.machines[addr].handle(NewHeight(height, self.vals)))

    def broadcast(self, sender: bytes, event) -> None:
        for addr in self.online():
            self.queue.append((addr, event))

    def dispatch(self, addr: bytes, actions: list) -> None:
        for a in actions:
            if isinstance(a, SignVote):
                v = vote(a.kind, a.height, a.round, a.block_hash, addr, self.real_sigs)
                self.votes.append(v)
                self.broadcast(addr, VoteReceived(v))
            elif isinstance(a, Propose):
                self.proposes.append((addr, a))
                block = a.block if a.block is not None else make_block(a.height, a.round, addr)
                p = Proposal(a.height, a.round, a.pol_round, block, b"\x11" * 64)
                self.broadcast(addr, ProposalReceived(p, valid=block.header.proposer not in self.invalid_from))
            elif isinstance(a, ScheduleTimeout):
                self.timers.append((addr, a))
            elif isinstance(a, CommitBlock):
                assert a.block.height not in self.commits[addr], "committed twice"
                self.commits[addr][a.block.height] = a
            elif isinstance(a, ReportEvidence):
                self.evidence.append((addr, a))
            else:
                raise AssertionError(f"unexpected action {a!r}")

    def deliver(self) -> None:
        while self.queue:
            addr, ev = self.queue.popleft()
            self.dispatch(addr, self.machines[addr].handle(ev))

    def fire_timeouts(self) -> None:
        timers, self.timers = self.timers, []
        for addr, t in timers:
            self.dispatch(addr, self.machines[addr].handle(Timeout(t.height, t.round, t.step)))

    def run_height(self, height: int, max_timeout_waves: int = 40) -> None:
        self.start_height(height)
        for _ in range(max_timeout_waves):
            self.deliver()
            if all(height in self.commits[a] for a in self.online()):
                return
            if not self.timers:
                return
            self.fire_timeouts()

    def committed(self, height: int) -> set[bytes]:
        return {self.commits[a][height].block.hash for a in self.online() if height in self.commits[a]}


def first_height(pred, start: int = 1, limit: int = 10_000) -> int:
    for h in range(start, limit):
        if pred(h):
            return h
    raise AssertionError("no such height")


def actions_of(actions, kind):
    return [a for a in actions if isinstance(a, kind)]


# -- basic commits ------------------------------------------------------------------------------

def test_single_validator_commits_height_1_immediately():
    net = Net(VALS1)
    me = VALS1[0].address
    actions = net.machines[me].handle(NewHeight(1, VALS1))
    assert actions == [ScheduleTimeout(1, 0, PROPOSE, 3.0), Propose(1, 0, None, -1)]
    net.dispatch(me, actions)
    net.deliver()
    assert not net.timers[1:], "no further timeouts needed"
    c = net.commits[me][1]
    assert c.block.height == 1 and c.block.header.proposer == me
    assert c.commit == Commit(1, 0, c.block.hash, ((me, b"\x5a" * 64),))
    assert net.machines[me].decided
    kinds = [(v.kind, v.round, v.block_hash) for v in net.votes]
    assert kinds == [(PREVOTE, 0, c.block.hash), (PRECOMMIT, 0, c.block.hash)]


def test_single_validator_many_heights():
    net = Net(VALS1)
    for h in range(1, 6):
        net.run_height(h)
        assert len(net.committed(h)) == 1
    assert len({net.commits[VALS1[0].address][h].block.hash for h in range(1, 6)}) == 5


def test_four_validators_all_commit_the_same_block():
    net = Net(VALS4, real_sigs=True, followers=1)
    for h in range(1, 4):
        net.run_height(h)
        committed = net.committed(h)
        assert len(committed) == 1, committed
        assert all(h in net.commits[a] for a in net.machines)
        (bh,) = committed
        for a in net.machines:
            c = net.commits[a][h].commit
            assert c.height == h and c.round == 0 and c.block_hash == bh
            assert len(c.signatures) >= 3
            assert list(c.signatures) == sorted(c.signatures)
            assert verify_commit(CHAIN_ID, c, VALS4, h, bh) is None
    # the follower never voted nor proposed
    assert {v.validator for v in net.votes} == {v.address for v in VALS4}
    assert all(not a.startswith(b"follower") for a, _ in net.proposes)


def test_commit_contains_only_precommits_for_the_block():
    net = Net(VALS4)
    net.run_height(1)
    for a in net.online():
        c = net.commits[a][1].commit
        addrs = {x for x, _ in c.signatures}
        assert addrs <= {v.address for v in VALS4}
        assert len(addrs) == len(c.signatures)


# -- proposer selection ------------------------------------------------------------------------------

def test_proposer_is_deterministic_and_everyone_gets_a_turn():
    counts = collections.Counter()
    for h in range(1, 41):
        for r in range(3):
            p = proposer_for(VALS4, h, r)
            assert p == proposer_for(VALS4, h, r) == proposer_for(tuple(VALS4), h, r)
            assert p in VALS4
        counts[proposer_for(VALS4, h, 0).address] += 1
    assert set(counts) == {v.address for v in VALS4}


def test_only_the_proposer_proposes():
    net = Net(VALS4)
    seen = collections.Counter()
    for h in range(1, 21):
        net.run_height(h)
        props = [(a, p) for a, p in net.proposes if p.height == h]
        assert len(props) == 1
        addr, p = props[0]
        assert addr == proposer_for(VALS4, h, 0).address
        assert all(m.proposer(0).address == addr for m in net.machines.values())
        assert (p.round, p.block, p.pol_round) == (0, None, -1)
        seen[addr] += 1
    assert set(seen) == {v.address for v in VALS4}


def test_proposer_is_stake_weighted():
    heavy = (Validator(b"\x01" * 20, b"\x01" * 32, 97), Validator(b"\x02" * 20, b"\x02" * 32, 3))
    counts = collections.Counter(proposer_for(heavy, h, 0).address for h in range(1, 401))
    assert counts[b"\x01" * 20] > 340
    assert counts[b"\x02" * 20] > 0


def test_next_round_has_a_different_proposer():
    for h in range(1, 41):
        assert proposer_for(VALS4, h, 1) != proposer_for(VALS4, h, 0), f"height {h}"


# -- timeouts and rounds ------------------------------------------------------------------------------

def test_timeouts_grow_with_the_round():
    t = TimeoutConfig(propose=3.0, prevote=1.0, precommit=1.0, delta=0.5)
    assert t.seconds(PROPOSE, 0) == 3.0
    assert t.seconds(PROPOSE, 2) == 4.0
    assert t.seconds(PREVOTE, 1) == 1.5
    assert t.seconds(PRECOMMIT, 4) == 3.0


def test_propose_timeout_leads_to_nil_prevote_and_round_1_with_another_proposer():
    h = first_height(lambda h: proposer_for(VALS4, h, 0) != proposer_for(VALS4, h, 1))
    p0, p1 = proposer_for(VALS4, h, 0).address, proposer_for(VALS4, h, 1).address
    net = Net(VALS4, silent={p0})  # the round-0 proposer is offline
    net.start_height(h)
    net.deliver()
    assert net.votes == [] and not any(net.commits.values())
    # the propose timeout fires: everyone online prevotes nil
    net.fire_timeouts()
    prevotes0 = [v for v in net.votes if v.round == 0 and v.kind == PREVOTE]
    assert sorted(v.validator for v in prevotes0) == sorted(a for a in net.online())
    assert all(v.block_hash == NIL for v in prevotes0)
    net.deliver()
    precommits0 = [v for v in net.votes if v.round == 0 and v.kind == PRECOMMIT]
    assert len(precommits0) == 3 and all(v.block_hash == NIL for v in precommits0)
    # then the precommit timeout moves everyone to round 1, whose proposer proposes
    for _ in range(5):
        net.fire_timeouts()
        net.deliver()
        if net.committed(h):
            break
    assert all(m.round == 1 for a, m in net.machines.items() if a != p0)
    assert [(a, p.round) for a, p in net.proposes] == [(p1, 1)]
    (bh,) = net.committed(h)
    assert all(net.commits[a][h].commit.round == 1 for a in net.online())
    assert net.commits[net.online()[0]][h].block.header.proposer == p1


def test_prevote_timeout_after_split_votes_gives_nil_precommit():
    me = VALS4[0].address
    m = BFT(me)
    m.handle(NewHeight(1, VALS4))
    out = m.handle(Timeout(1, 0, PROPOSE))
    assert out == [SignVote(PREVOTE, 1, 0, NIL)]
    b = make_block(1, 0, VALS4[1].address)
    m.handle(VoteReceived(vote(PREVOTE, 1, 0, NIL, me)))
    m.handle(VoteReceived(vote(PREVOTE, 1, 0, b.hash, VALS4[1].address)))
    out = m.handle(VoteReceived(vote(PREVOTE, 1, 0, b"\x07" * 32, VALS4[2].address)))
    assert out == [ScheduleTimeout(1, 0, PREVOTE, 1.0)]  # 2/3+ prevoted, but for nothing in common
    assert m.handle(Timeout(1, 0, PREVOTE)) == [SignVote(PRECOMMIT, 1, 0, NIL)]
    assert m.handle(Timeout(1, 0, PREVOTE)) == []  # only once


def test_stale_timeouts_are_ignored():
    m = BFT(VALS4[0].address)
    m.handle(NewHeight(3, VALS4))
    assert m.handle(Timeout(2, 0, PROPOSE)) == []
    assert m.handle(Timeout(3, 1, PROPOSE)) == []
    assert m.handle(Timeout(3, 0, PREVOTE)) == []  # not in the prevote step
    assert m.step == PROPOSE


def test_skip_to_a_later_round_on_one_third_of_power():
    me = VALS4[0].address
    m = BFT(me)
    m.handle(NewHeight(1, VALS4))
    assert m.handle(VoteReceived(vote(PREVOTE, 1, 3, NIL, VALS4[1].address))) == []  # 1/4: not enough
    assert m.round == 0
    out = m.handle(VoteReceived(vote(PRECOMMIT, 1, 3, NIL, VALS4[2].address)))  # 2/4 > 1/3
    assert m.round == 3
    assert out[0] == ScheduleTimeout(1, 3, PROPOSE, 3.0 + 0.5 * 3)


# -- locking ----------------------------------------------------------------------------------------

def lock_scenario():
    """One machine `me`, driven by hand, locks on B in round 0 at a height where it proposes
    neither round 0 nor round 1 but does propose some later round r."""
    def ok(h):
        rs = [proposer_for(VALS4, h, r).address for r in range(6)]
        return any(rs[0] != a != rs[1] and a in rs[2:] for a in KEYS)
    h = first_height(ok)
    rs = [proposer_for(VALS4, h, r).address for r in range(6)]
    me = next(a for a in sorted(KEYS) if rs[0] != a != rs[1] and a in rs[2:])
    r_me = rs.index(me, 2)
    others = [v.address for v in VALS4 if v.address != me]
    m = BFT(me)
    assert not actions_of(m.handle(NewHeight(h, VALS4)), Propose)
    B = make_block(h, 0, rs[0])
    out = m.handle(ProposalReceived(Proposal(h, 0, -1, B, b"\x00" * 64), valid=True))
    assert out == [SignVote(PREVOTE, h, 0, B.hash)]
    m.handle(VoteReceived(vote(PREVOTE, h, 0, B.hash, me)))
    m.handle(VoteReceived(vote(PREVOTE, h, 0, B.hash, others[0])))
    out = m.handle(VoteReceived(vote(PREVOTE, h, 0, B.hash, others[1])))
    assert SignVote(PRECOMMIT, h, 0, B.hash) in out
    assert m.locked_block == B and m.locked_round == 0 and m.valid_block == B and m.valid_round == 0
    # round 0 fails to commit: the others precommit nil
    m.handle(VoteReceived(vote(PRECOMMIT, h, 0, B.hash, me)))
    m.handle(VoteReceived(vote(PRECOMMIT, h, 0, NIL, others[0])))
    out = m.handle(VoteReceived(vote(PRECOMMIT, h, 0, NIL, others[1])))
    assert out == [ScheduleTimeout(h, 0, PRECOMMIT, 1.0)]
    assert not m.decided
    out = m.handle(Timeout(h, 0, PRECOMMIT))
    assert m.round == 1 and not actions_of(out, Propose)
    return m, h, me, others, rs, r_me, B


def test_locked_validator_prevotes_nil_for_another_block_without_pol():
    m, h, me, others, rs, r_me, B = lock_scenario()
    B2 = make_block(h, 1, rs[1])
    out = m.handle(ProposalReceived(Proposal(h, 1, -1, B2, b"\x00" * 64), valid=True))
    assert out == [SignVote(PREVOTE, h, 1, NIL)]
    assert m.locked_block == B


def test_locked_validator_prevotes_its_locked_block_again():
    m, h, me, others, rs, r_me, B = lock_scenario()
    out = m.handle(ProposalReceived(Proposal(h, 1, 0, B, b"\x00" * 64), valid=True))
    assert out == [SignVote(PREVOTE, h, 1, B.hash)]


def test_locked_validator_reproposes_its_valid_block_with_pol_round():
    m, h, me, others, rs, r_me, B = lock_scenario()
    for r in range(1, r_me):
        out = m.handle(Timeout(h, r, PRECOMMIT))
        assert m.round == r + 1
    props = actions_of(out, Propose)
    assert props == [Propose(h, r_me, B, 0)]


def test_polka_seen_while_in_prevote_step_relocks():
    """Tendermint line 36: 2/3+ prevotes for the round's valid proposal while in the prevote step
    lock on it and precommit it, even after our own nil prevote."""
    m, h, me, others, rs, r_me, B = lock_scenario()
    B2 = make_block(h, 1, rs[1])
    m.handle(ProposalReceived(Proposal(h, 1, -1, B2, b"\x00" * 64), valid=True))  # we prevote nil
    out = []
    for a in others:
        out += m.handle(VoteReceived(vote(PREVOTE, h, 1, B2.hash, a)))
    assert SignVote(PRECOMMIT, h, 1, B2.hash) in out
    assert (m.locked_block, m.locked_round, m.valid_block, m.valid_round) == (B2, 1, B2, 1)


def test_lock_is_released_by_a_newer_proof_of_lock():
    m, h, me, others, rs, r_me, B = lock_scenario()
    B2 = make_block(h, 1, rs[1])
    m.handle(ProposalReceived(Proposal(h, 1, -1, B2, b"\x00" * 64), valid=True))  # we prevote nil
    assert m.handle(Timeout(h, 1, PREVOTE)) == [SignVote(PRECOMMIT, h, 1, NIL)]
    out = []
    for a in others:  # the other three prevote B2 in round 1: a POL for B2 at round 1
        out += m.handle(VoteReceived(vote(PREVOTE, h, 1, B2.hash, a)))
    assert not [a for a in out if isinstance(a, SignVote)]
    assert m.valid_block == B2 and m.valid_round == 1
    assert m.locked_block == B and m.locked_round == 0  # we precommitted nil, so no new lock
    m.handle(Timeout(h, 1, PRECOMMIT))
    assert m.round == 2
    out = m.handle(ProposalReceived(Proposal(h, 2, 1, B2, b"\x00" * 64), valid=True))
    assert SignVote(PREVOTE, h, 2, B2.hash) in out


def test_pol_round_without_the_prevotes_waits_then_times_out_to_nil():
    m, h, me, others, rs, r_me, B = lock_scenario()
    B2 = make_block(h, 1, rs[1])
    assert m.handle(ProposalReceived(Proposal(h, 1, 0, B2, b"\x00" * 64), valid=True)) == []
    assert m.handle(Timeout(h, 1, PROPOSE)) == [SignVote(PREVOTE, h, 1, NIL)]


# -- failures ---------------------------------------------------------------------------------------

def test_two_of_four_silent_nothing_is_committed():
    net = Net(VALS4, silent={VALS4[0].address, VALS4[3].address})
    net.run_height(1, max_timeout_waves=30)
    assert not any(net.commits.values())
    assert all(not net.machines[a].decided for a in net.online())
    # half the power can neither lock nor precommit a block: everyone is stuck waiting
    assert all(net.machines[a].locked_block is None for a in net.online())
    assert not [v for v in net.votes if v.kind == PRECOMMIT]
    assert all(net.machines[a].step == PREVOTE for a in net.online())
    assert not net.timers
    # more timeouts (e.g. a stray precommit timeout) only move rounds, never commit
    for r in range(5):
        for a in net.online():
            net.dispatch(a, net.machines[a].handle(Timeout(1, r, PRECOMMIT)))
        net.deliver()
        net.fire_timeouts()
        net.deliver()
    assert not any(net.commits.values())
    assert all(net.machines[a].round == 5 for a in net.online())


def test_one_of_four_silent_still_commits():
    h = first_height(lambda h: proposer_for(VALS4, h, 0).address != VALS4[2].address)
    net = Net(VALS4, silent={VALS4[2].address})
    net.run_height(h)
    assert len(net.committed(h)) == 1
    assert all(len(net.commits[a][h].commit.signatures) == 3 for a in net.online())


def test_conflicting_votes_produce_evidence():
    me, other = VALS4[0].address, VALS4[1].address
    m = BFT(me)
    m.handle(NewHeight(1, VALS4))
    b1, b2 = make_block(1, 0, other, b"1"), make_block(1, 0, other, b"2")
    v1, v2 = vote(PREVOTE, 1, 0, b1.hash, other), vote(PREVOTE, 1, 0, b2.hash, other)
    assert m.handle(VoteReceived(v1)) == []
    assert m.handle(VoteReceived(v1)) == []  # an exact repeat is not evidence
    out = m.handle(VoteReceived(v2))
    (ev,) = actions_of(out, ReportEvidence)
    assert {ev.evidence.vote_a, ev.evidence.vote_b} == {v1, v2}
    assert ev.evidence.vote_a.block_hash < ev.evidence.vote_b.block_hash
    assert m.rounds[0].prevotes[other] == v1  # the first vote is the one counted
    nil = vote(PRECOMMIT, 1, 0, NIL, other)
    m.handle(VoteReceived(nil))
    (ev2,) = actions_of(m.handle(VoteReceived(vote(PRECOMMIT, 1, 0, b1.hash, other))), ReportEvidence)
    assert ev2.evidence.vote_a == nil


def test_evidence_order_does_not_depend_on_arrival_order():
    other = VALS4[1].address
    v1, v2 = vote(PREVOTE, 1, 0, b"\x01" * 32, other), vote(PREVOTE, 1, 0, b"\x02" * 32, other)
    reports = []
    for first, second in ((v1, v2), (v2, v1)):
        m = BFT(VALS4[0].address)
        m.handle(NewHeight(1, VALS4))
        m.handle(VoteReceived(first))
        reports.append(actions_of(m.handle(VoteReceived(second)), ReportEvidence)[0].evidence)
    assert reports[0] == reports[1]
    assert reports[0].hash == reports[1].hash


def test_votes_from_non_validators_are_ignored():
    m = BFT(VALS4[0].address)
    m.handle(NewHeight(1, VALS4))
    stranger = b"\xee" * 20
    for r in range(3):
        assert m.handle(VoteReceived(vote(PRECOMMIT, 1, 5, NIL, stranger))) == []
    assert m.round == 0
    assert stranger not in m._round(5).precommits


def test_invalid_proposal_gets_a_nil_prevote():
    me = VALS4[0].address
    m = BFT(me)
    m.handle(NewHeight(1, VALS4))
    b = make_block(1, 0, proposer_for(VALS4, 1, 0).address)
    out = m.handle(ProposalReceived(Proposal(1, 0, -1, b, b"\x00" * 64), valid=False))
    assert out == [SignVote(PREVOTE, 1, 0, NIL)]
    # even 2/3+ prevotes and precommits for an invalid block never lock or decide it
    for v in VALS4[1:]:
        m.handle(VoteReceived(vote(PREVOTE, 1, 0, b.hash, v.address)))
    for v in VALS4[1:]:
        out = m.handle(VoteReceived(vote(PRECOMMIT, 1, 0, b.hash, v.address)))
        assert not actions_of(out, CommitBlock)
    assert m.locked_block is None and not m.decided


def test_network_with_invalid_proposer_commits_in_a_later_round():
    h = first_height(lambda h: proposer_for(VALS4, h, 0) != proposer_for(VALS4, h, 1))
    bad = proposer_for(VALS4, h, 0).address
    net = Net(VALS4, invalid_from={bad})
    net.run_height(h)
    (bh,) = net.committed(h)
    c = net.commits[net.online()[0]][h]
    assert c.block.header.proposer != bad and c.commit.round >= 1


def test_first_proposal_per_round_wins():
    m = BFT(VALS4[0].address)
    m.handle(NewHeight(1, VALS4))
    p = proposer_for(VALS4, 1, 0).address
    b1, b2 = make_block(1, 0, p, b"1"), make_block(1, 0, p, b"2")
    out = m.handle(ProposalReceived(Proposal(1, 0, -1, b1, b"\x00" * 64), valid=True))
    assert out == [SignVote(PREVOTE, 1, 0, b1.hash)]
    assert m.handle(ProposalReceived(Proposal(1, 0, -1, b2, b"\x00" * 64), valid=True)) == []
    assert m.rounds[0].proposal.block == b1


def test_decides_on_precommits_from_an_earlier_round():
    m = BFT(VALS4[0].address)
    m.handle(NewHeight(1, VALS4))
    b = make_block(1, 0, proposer_for(VALS4, 1, 0).address)
    m.handle(ProposalReceived(Proposal(1, 0, -1, b, b"\x00" * 64), valid=True))
    m.handle(Timeout(1, 0, PRECOMMIT))
    assert m.round == 1
    out = []
    for v in VALS4[1:]:
        out += m.handle(VoteReceived(vote(PRECOMMIT, 1, 0, b.hash, v.address)))
    (c,) = actions_of(out, CommitBlock)
    assert c.block == b and c.commit.round == 0 and len(c.commit.signatures) == 3
    assert m.handle(VoteReceived(vote(PRECOMMIT, 1, 0, b.hash, VALS4[0].address))) == []  # decided


# -- heights ----------------------------------------------------------------------------------------

def test_messages_for_next_height_are_buffered_and_replayed():
    me = VALS1[0].address
    m = BFT(me)
    m.handle(NewHeight(1, VALS1))
    b2 = make_block(2, 0, me)
    early = ProposalReceived(Proposal(2, 0, -1, b2, b"\x00" * 64), valid=True)
    assert m.handle(early) == []
    assert m.handle(VoteReceived(vote(PREVOTE, 2, 0, b2.hash, me))) == []
    assert m.handle(ProposalReceived(Proposal(3, 0, -1, make_block(3, 0, me), b"\x00" * 64), True)) == []
    assert m.height == 1 and m.step == PROPOSE
    out = m.handle(NewHeight(2, VALS1))
    assert ScheduleTimeout(2, 0, PROPOSE, 3.0) in out
    assert SignVote(PREVOTE, 2, 0, b2.hash) in out       # from the buffered proposal
    assert SignVote(PRECOMMIT, 2, 0, b2.hash) in out     # from the buffered prevote (1 of 1)
    assert m.rounds[0].proposal.block == b2
    out = m.handle(NewHeight(3, VALS1))  # the height-3 message was two ahead: dropped
    assert m._round(0).proposal is None


def test_messages_for_old_heights_and_after_decision_are_ignored():
    net = Net(VALS1)
    me = VALS1[0].address
    net.run_height(1)
    m = net.machines[me]
    assert m.decided
    assert m.handle(VoteReceived(vote(PREVOTE, 1, 1, NIL, me))) == []
    assert m.handle(Timeout(1, 0, PRECOMMIT)) == []
    m.handle(NewHeight(2, VALS1))
    assert m.handle(VoteReceived(vote(PREVOTE, 1, 0, NIL, me))) == []
    assert 0 not in m.rounds or me not in m.rounds[0].prevotes


def test_new_height_resets_lock_and_round():
    m, h, me, others, rs, r_me, B = lock_scenario()
    m.handle(NewHeight(h + 1, VALS4))
    assert (m.round, m.step, m.locked_block, m.locked_round, m.valid_block, m.valid_round) == \
        (0, PROPOSE, None, -1, None, -1)


def test_unknown_event_type():
    with pytest.raises(TypeError, match="unknown event"):
        BFT(None).handle(object())


# -- verify_commit ------------------------------------------------------------------------------------

def real_commit(height: int, round_: int, block_hash: bytes, signers, chain_id: str = CHAIN_ID) -> Commit:
    sigs = []
    for v in signers:
        sv = signed_vote(KEYS[v.address], PRECOMMIT, height, round_, block_hash, chain_id)
        sigs.append((v.address, sv.signature))
    return Commit(height, round_, block_hash, tuple(sorted(sigs)))


BH = sha256(b"the block")


def test_verify_commit_accepts_real_commit():
    assert verify_commit(CHAIN_ID, real_commit(7, 2, BH, VALS4), VALS4, 7, BH) is None
    assert verify_commit(CHAIN_ID, real_commit(7, 0, BH, VALS4[:3]), list(VALS4), 7, BH) is None
    assert verify_commit(CHAIN_ID, real_commit(1, 0, BH, VALS1), VALS1, 1, BH) is None


def test_verify_commit_rejects_missing_power():
    assert verify_commit(CHAIN_ID, real_commit(7, 0, BH, VALS4[:2]), VALS4, 7, BH) == \
        "commit lacks 2/3+ of voting power"
    assert verify_commit(CHAIN_ID, real_commit(7, 0, BH, ()), VALS4, 7, BH) == "commit lacks 2/3+ of voting power"
    weighted = (dataclasses.replace(VALS4[0], power=60),) + VALS4[1:]  # total 90
    assert verify_commit(CHAIN_ID, real_commit(7, 0, BH, VALS4[:1]), weighted, 7, BH) == \
        "commit lacks 2/3+ of voting power"  # exactly 2/3 is not enough
    assert verify_commit(CHAIN_ID, real_commit(7, 0, BH, VALS4[:2]), weighted, 7, BH) is None  # 70 of 90
    assert verify_commit(CHAIN_ID, real_commit(7, 0, BH, VALS4[1:]), weighted, 7, BH) is not None  # 30 of 90


def test_verify_commit_rejects_bad_signature():
    c = real_commit(7, 0, BH, VALS4)
    (a, s), rest = c.signatures[0], c.signatures[1:]
    bad = dataclasses.replace(c, signatures=((a, bytes([s[0] ^ 1]) + s[1:]),) + rest)
    assert verify_commit(CHAIN_ID, bad, VALS4, 7, BH) == "commit has a bad signature"
    # a signature for another round or chain does not count either
    assert verify_commit(CHAIN_ID, dataclasses.replace(c, round=1), VALS4, 7, BH) == "commit has a bad signature"
    assert verify_commit("otherchain", c, VALS4, 7, BH) == "commit has a bad signature"
    # a prevote signature is not a precommit signature
    pv = signed_vote(KEYS[a], PREVOTE, 7, 0, BH)
    mixed = dataclasses.replace(c, signatures=((a, pv.signature),) + rest)
    assert verify_commit(CHAIN_ID, mixed, VALS4, 7, BH) == "commit has a bad signature"


def test_verify_commit_rejects_duplicates_and_strangers():
    c = real_commit(7, 0, BH, VALS4[:2])
    dup = dataclasses.replace(c, signatures=c.signatures + (c.signatures[0],))
    assert verify_commit(CHAIN_ID, dup, VALS4, 7, BH) == "commit has a signature from a non-validator or a duplicate"
    stranger = key(9)
    sv = signed_vote(stranger, PRECOMMIT, 7, 0, BH)
    extra = dataclasses.replace(c, signatures=c.signatures + ((stranger.address, sv.signature),))
    assert verify_commit(CHAIN_ID, extra, VALS4, 7, BH) == \
        "commit has a signature from a non-validator or a duplicate"


def test_verify_commit_rejects_commit_for_another_block():
    c = real_commit(7, 0, BH, VALS4)
    assert verify_commit(CHAIN_ID, c, VALS4, 7, sha256(b"other")) == "commit is for another block"
    assert verify_commit(CHAIN_ID, c, VALS4, 8, BH) == "commit is for another block"
    forged = dataclasses.replace(c, block_hash=sha256(b"other"))
    assert verify_commit(CHAIN_ID, forged, VALS4, 7, sha256(b"other")) == "commit has a bad signature"


def test_verify_commit_against_a_different_validator_set():
    c = real_commit(7, 0, BH, VALS4[:3])
    others = validators(1)  # key(1) only: the other signers are strangers to it
    assert verify_commit(CHAIN_ID, c, others, 7, BH) is not None
