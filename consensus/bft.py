"""Tendermint-style BFT round state machine, sans-I/O.

Feed it events (a new height, a proposal, a vote, a timeout) and it returns actions
(propose, sign a vote, schedule a timeout, commit a block, report evidence). It never
touches sockets, clocks, keys or disks: the node signs, persists, broadcasts and feeds its
own signed messages back as events. The rules follow "The latest gossip on BFT consensus"
(Buchman, Kwon, Milosevic 2018): lock on a block after 2/3+ prevotes, unlock only on a
newer proof-of-lock, decide on 2/3+ precommits in any round.

The caller verifies signatures and block validity before handing messages in; this module
decides what those messages mean.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from . import codec
from .crypto import sha256
from .ledger import Validator
from .types import PRECOMMIT, PREVOTE, Block, Commit, DuplicateVoteEvidence, Proposal, Vote

PROPOSE = "propose"
NIL = b""


# -- events --------------------------------------------------------------------------------

@dataclass(frozen=True)
class NewHeight:
    height: int
    validators: tuple[Validator, ...]
    round: int = 0  # after a restart: the round after the last one we signed in


@dataclass(frozen=True)
class ProposalReceived:
    proposal: Proposal
    valid: bool  # the caller executed the block against its state


@dataclass(frozen=True)
class VoteReceived:
    vote: Vote


@dataclass(frozen=True)
class Timeout:
    height: int
    round: int
    step: str


# -- actions -------------------------------------------------------------------------------

@dataclass(frozen=True)
class Propose:
    height: int
    round: int
    block: Block | None  # a block to re-propose (valid_block), or None: make a new one
    pol_round: int


@dataclass(frozen=True)
class SignVote:
    kind: str
    height: int
    round: int
    block_hash: bytes


@dataclass(frozen=True)
class ScheduleTimeout:
    height: int
    round: int
    step: str
    seconds: float


@dataclass(frozen=True)
class CommitBlock:
    block: Block
    commit: Commit


@dataclass(frozen=True)
class ReportEvidence:
    evidence: DuplicateVoteEvidence


@dataclass(frozen=True)
class TimeoutConfig:
    propose: float = 3.0
    prevote: float = 1.0
    precommit: float = 1.0
    delta: float = 0.5  # added per round, so timeouts grow until the network catches up
    first_propose_extra: float = 0.0  # round 0 only: the proposer may wait this long for txs

    def seconds(self, step: str, round_: int) -> float:
        base = {PROPOSE: self.propose, PREVOTE: self.prevote, PRECOMMIT: self.precommit}[step]
        extra = self.first_propose_extra if step == PROPOSE and round_ == 0 else 0.0
        return base + extra + self.delta * round_


def proposer_for(validators: tuple[Validator, ...], height: int, round_: int) -> Validator:
    """Round 0: a stake-weighted, deterministic draw for the height. Later rounds walk on
    through the (address-sorted) set, so a silent proposer never holds two rounds in a row."""
    total = sum(v.power for v in validators)
    point = int.from_bytes(sha256(codec.encode(["proposer", height])), "big") % total
    for i, v in enumerate(validators):
        if point < v.power:
            return validators[(i + round_) % len(validators)]
        point -= v.power
    raise AssertionError("unreachable: point < total power")


@dataclass
class _Round:
    proposal: Proposal | None = None
    prevotes: dict[bytes, Vote] = field(default_factory=dict)
    precommits: dict[bytes, Vote] = field(default_factory=dict)

    def votes(self, kind: str) -> dict[bytes, Vote]:
        return self.prevotes if kind == PREVOTE else self.precommits


MAX_FUTURE_EVENTS = 10_000
# Votes for rounds beyond the next are how a node that fell behind learns to skip ahead, but
# a validator can sign votes for any number of rounds: each may hold at most this many such
# rounds at once (CometBFT's "catch-up rounds"), so memory is bounded by the validator count.
FUTURE_ROUNDS_PER_VALIDATOR = 2


class BFT:
    def __init__(self, me: bytes | None, timeouts: TimeoutConfig = TimeoutConfig()):
        self.me = me  # our validator address, or None for a full node that only follows
        self.timeouts = timeouts
        self.height = 0
        self.validators: tuple[Validator, ...] = ()
        self.decided = True  # nothing to do until the first NewHeight
        self._future: list[ProposalReceived | VoteReceived] = []
        self._reset_height()

    def _reset_height(self) -> None:
        self.round, self.step = 0, PROPOSE
        self.locked_block: Block | None = None
        self.locked_round = -1
        self.valid_block: Block | None = None
        self.valid_round = -1
        self.rounds: dict[int, _Round] = {}
        self.valid: dict[bytes, bool] = {}
        self._fired: set[tuple[str, int]] = set()  # "first time" rules already taken

    # -- voting power ---------------------------------------------------------------------

    def power(self, addr: bytes) -> int:
        for v in self.validators:
            if v.address == addr:
                return v.power
        return 0

    def _total(self) -> int:
        return sum(v.power for v in self.validators)

    def _tally(self, votes: dict[bytes, Vote], block_hash: bytes | None = None) -> int:
        return sum(self.power(a) for a, v in votes.items() if block_hash is None or v.block_hash == block_hash)

    def _two_thirds(self, power: int) -> bool:
        return 3 * power > 2 * self._total()

    def _one_third(self, power: int) -> bool:
        return 3 * power > self._total()

    def _round(self, r: int) -> _Round:
        return self.rounds.setdefault(r, _Round())

    def proposer(self, round_: int) -> Validator:
        return proposer_for(self.validators, self.height, round_)

    def messages(self) -> tuple[list[Proposal], list[Vote]]:
        """What a peer needs to join us: this round's and the previous round's messages."""
        rounds = [self.rounds[r] for r in sorted(self.rounds) if r >= self.round - 1]
        proposals = [r.proposal for r in rounds if r.proposal is not None]
        votes = [v for r in rounds for d in (r.prevotes, r.precommits) for v in d.values()]
        return proposals, votes

    def holders(self, proposal: Proposal) -> frozenset[bytes]:
        """Validators that must already have this proposal: they voted for its block in its
        round. Re-sending a large block to them is wasted bandwidth."""
        rnd = self.rounds.get(proposal.round)
        if rnd is None:
            return frozenset()
        h = proposal.block.hash
        return frozenset(a for d in (rnd.prevotes, rnd.precommits) for a, v in d.items() if v.block_hash == h)

    # -- entry point ----------------------------------------------------------------------

    def handle(self, event) -> list:
        if isinstance(event, NewHeight):
            return self._on_new_height(event)
        if isinstance(event, (ProposalReceived, VoteReceived)):
            msg_height = event.proposal.height if isinstance(event, ProposalReceived) else event.vote.height
            if msg_height == self.height + 1:  # a peer is ahead of us: keep it for NewHeight
                if len(self._future) < MAX_FUTURE_EVENTS:
                    self._future.append(event)
                return []
            if msg_height != self.height or self.decided:
                return []
            actions = self._on_proposal(event) if isinstance(event, ProposalReceived) else self._on_vote(event.vote)
            return actions + self._apply_rules()
        if isinstance(event, Timeout):
            return self._on_timeout(event)
        raise TypeError(f"unknown event {event!r}")

    def _on_new_height(self, ev: NewHeight) -> list:
        self.height, self.validators, self.decided = ev.height, tuple(ev.validators), False
        self._reset_height()
        actions = self._start_round(ev.round)
        future, self._future = self._future, []
        for e in future:
            actions += self.handle(e)
        return actions

    def _on_proposal(self, ev: ProposalReceived) -> list:
        p = ev.proposal
        if p.round > self.round + 1:
            return []
        rnd = self._round(p.round)
        if rnd.proposal is None:
            rnd.proposal = p
            self.valid[p.block.hash] = ev.valid
        return []

    def accepts_proposal(self, height: int, round_: int) -> bool:
        """Worth executing and keeping: for this height, a round no later than the next, and
        the first proposal for that round (a proposer that equivocates gets one block run)."""
        if height != self.height or self.decided or round_ > self.round + 1:
            return False
        rnd = self.rounds.get(round_)
        return rnd is None or rnd.proposal is None

    def accepts_vote(self, vote: Vote) -> bool:
        """Worth keeping (and so relaying): a validator's vote for this height, within its
        allowance of far-future rounds."""
        if vote.height != self.height or self.decided or self.power(vote.validator) == 0:
            return False
        if vote.round <= self.round + 1:
            return True
        ahead = self._far_rounds(vote.validator)
        return vote.round in ahead or len(ahead) < FUTURE_ROUNDS_PER_VALIDATOR or vote.round > min(ahead)

    def _far_rounds(self, validator: bytes) -> set[int]:
        return {r for r, rnd in self.rounds.items() if r > self.round + 1
                and (validator in rnd.prevotes or validator in rnd.precommits)}

    def _make_room(self, vote: Vote) -> None:
        """A validator's highest far-future rounds are the ones worth keeping (they say where
        it is now): a newer one replaces its lowest."""
        ahead = self._far_rounds(vote.validator)
        if vote.round in ahead or len(ahead) < FUTURE_ROUNDS_PER_VALIDATOR:
            return
        rnd = self.rounds[min(ahead)]
        rnd.prevotes.pop(vote.validator, None)
        rnd.precommits.pop(vote.validator, None)
        if rnd.proposal is None and not rnd.prevotes and not rnd.precommits:
            del self.rounds[min(ahead)]

    def _on_vote(self, vote: Vote) -> list:
        if not self.accepts_vote(vote):
            return []
        if vote.round > self.round + 1:
            self._make_room(vote)
        votes = self._round(vote.round).votes(vote.kind)
        seen = votes.get(vote.validator)
        if seen is None:
            votes[vote.validator] = vote
            return []
        if seen.block_hash != vote.block_hash:
            return [ReportEvidence(DuplicateVoteEvidence(*sorted((seen, vote), key=lambda v: v.block_hash)))]
        return []

    def _on_timeout(self, t: Timeout) -> list:
        if t.height != self.height or t.round != self.round or self.decided:
            return []
        if t.step == PROPOSE and self.step == PROPOSE:
            return self._vote(PREVOTE, NIL) + self._apply_rules()
        if t.step == PREVOTE and self.step == PREVOTE:
            return self._vote(PRECOMMIT, NIL) + self._apply_rules()
        if t.step == PRECOMMIT:
            return self._start_round(self.round + 1) + self._apply_rules()
        return []

    # -- steps ----------------------------------------------------------------------------

    def _start_round(self, r: int) -> list:
        self.round, self.step = r, PROPOSE
        actions: list = [ScheduleTimeout(self.height, r, PROPOSE, self.timeouts.seconds(PROPOSE, r))]
        if self.me is not None and self.proposer(r).address == self.me:
            actions.append(Propose(self.height, r, self.valid_block, self.valid_round))
        return actions

    def _vote(self, kind: str, block_hash: bytes) -> list:
        self.step = kind
        if self.me is None or self.power(self.me) == 0:
            return []
        return [SignVote(kind, self.height, self.round, block_hash)]

    def _is_valid(self, block: Block) -> bool:
        return self.valid.get(block.hash, False)

    def _apply_rules(self) -> list:
        """Apply every rule whose condition holds, until none does."""
        actions: list = []
        while not self.decided:
            step = self._rules_once()
            if step is None:
                break
            actions += step
        return actions

    def _rules_once(self) -> list | None:
        for rule in (self._rule_decide, self._rule_skip_round, self._rule_prevote,
                     self._rule_lock, self._rule_precommit_nil, self._rule_timeouts):
            out = rule()
            if out is not None:
                return out
        return None

    def _rule_prevote(self) -> list | None:
        """Prevote the round's proposal if it is valid and does not contradict our lock."""
        rnd = self._round(self.round)
        p = rnd.proposal
        if self.step != PROPOSE or p is None:
            return None
        b = p.block
        if p.pol_round == -1:
            ok = self._is_valid(b) and (self.locked_round == -1 or self.locked_block.hash == b.hash)
        elif 0 <= p.pol_round < self.round and self._two_thirds(
                self._tally(self._round(p.pol_round).prevotes, b.hash)):
            ok = self._is_valid(b) and (self.locked_round <= p.pol_round or self.locked_block.hash == b.hash)
        else:
            return None
        return self._vote(PREVOTE, b.hash if ok else NIL)

    def _rule_lock(self) -> list | None:
        """2/3+ prevoted this round's valid proposal: lock on it and precommit it."""
        rnd = self._round(self.round)
        p = rnd.proposal
        if (self.step == PROPOSE or p is None or not self._is_valid(p.block)
                or ("lock", self.round) in self._fired
                or not self._two_thirds(self._tally(rnd.prevotes, p.block.hash))):
            return None
        self._fired.add(("lock", self.round))
        self.valid_block, self.valid_round = p.block, self.round
        if self.step == PREVOTE:
            self.locked_block, self.locked_round = p.block, self.round
            return self._vote(PRECOMMIT, p.block.hash)
        return []

    def _rule_precommit_nil(self) -> list | None:
        if self.step == PREVOTE and self._two_thirds(self._tally(self._round(self.round).prevotes, NIL)):
            return self._vote(PRECOMMIT, NIL)
        return None

    def _rule_timeouts(self) -> list | None:
        rnd = self._round(self.round)
        if (self.step == PREVOTE and ("prevote-wait", self.round) not in self._fired
                and self._two_thirds(self._tally(rnd.prevotes))):
            self._fired.add(("prevote-wait", self.round))
            return [ScheduleTimeout(self.height, self.round, PREVOTE, self.timeouts.seconds(PREVOTE, self.round))]
        if (("precommit-wait", self.round) not in self._fired
                and self._two_thirds(self._tally(rnd.precommits))):
            self._fired.add(("precommit-wait", self.round))
            return [ScheduleTimeout(self.height, self.round, PRECOMMIT,
                                    self.timeouts.seconds(PRECOMMIT, self.round))]
        return None

    def _rule_decide(self) -> list | None:
        """2/3+ precommits for a valid proposal in any round: the block is final."""
        for r in sorted(self.rounds):
            rnd = self.rounds[r]
            p = rnd.proposal
            if p is None or not self._is_valid(p.block):
                continue
            if self._two_thirds(self._tally(rnd.precommits, p.block.hash)):
                self.decided = True
                sigs = tuple(sorted((a, v.signature) for a, v in rnd.precommits.items()
                                    if v.block_hash == p.block.hash))
                return [CommitBlock(p.block, Commit(self.height, r, p.block.hash, sigs))]
        return None

    def _rule_skip_round(self) -> list | None:
        """More than 1/3 of power is already in a later round: join them."""
        for r in sorted(self.rounds):
            if r <= self.round:
                continue
            rnd = self.rounds[r]
            senders = set(rnd.prevotes) | set(rnd.precommits)
            if self._one_third(sum(self.power(a) for a in senders)):
                return self._start_round(r)
        return None


def verify_commit(chain_id: str, commit: Commit, validators: tuple[Validator, ...] | list[Validator],
                  height: int, block_hash: bytes) -> str | None:
    """Why `commit` does not prove `block_hash` final at `height`, or None when it does."""
    from .crypto import verify
    if commit.height != height or commit.block_hash != block_hash:
        return "commit is for another block"
    by_addr = {v.address: v for v in validators}
    seen: set[bytes] = set()
    power = 0
    for vote in commit.votes():
        v = by_addr.get(vote.validator)
        if v is None or vote.validator in seen:
            return "commit has a signature from a non-validator or a duplicate"
        if not verify(v.pubkey, vote.sign_bytes(chain_id), vote.signature):
            return "commit has a bad signature"
        seen.add(vote.validator)
        power += v.power
    if 3 * power <= 2 * sum(v.power for v in validators):
        return "commit lacks 2/3+ of voting power"
    return None
