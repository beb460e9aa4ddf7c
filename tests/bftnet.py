"""The in-test network that drives consensus.bft's sans-I/O round state machine, and the
pieces the BFT tests build their cases from.

No sockets, threads or clocks: SignVote actions become VoteReceived events for every online
machine, Propose actions become ProposalReceived events, and ScheduleTimeout actions are fired
by hand when the network has gone quiet.
"""
from __future__ import annotations

import collections
from collections import deque

from consensus.bft import (BFT, CommitBlock, NewHeight, ProposalReceived, Propose, ReportEvidence, ScheduleTimeout,
                           SignVote, Timeout, VoteReceived)
from consensus.crypto import sha256
from consensus.ledger import Validator
from consensus.types import Block, Header, Proposal, Vote
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
