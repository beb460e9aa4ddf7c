"""Drives the sans-I/O BFT machine: timers, signing, pacing, committing.

Everything that decides lives in ``consensus.bft``; this loop only turns its actions into
effects (sign, persist, broadcast, schedule) and feeds results back as events. A validator
persists what it is about to sign, with sync, before signing it, so a restart can never
make it sign a conflicting vote.
"""
from __future__ import annotations

import asyncio
import logging
import time
from typing import Awaitable, Callable

from consensus import bft
from consensus.crypto import PrivateKey, sha256, verify
from consensus.ledger import K_LAST_VALSET, View, get_valset
from consensus.staking import jail_status
from consensus.state import BlockError, process_duplicate_vote
from consensus.types import PRECOMMIT, PREVOTE, Block, DuplicateVoteEvidence, Proposal, Vote

from .chain import Chain

log = logging.getLogger("stepchain.consensus")
REGOSSIP_S = 1.0
STEP_ORDER = {bft.PROPOSE: 0, PREVOTE: 1, PRECOMMIT: 2}


class DoubleSignRefused(RuntimeError):
    pass


class _Restart:
    """Internal event: re-read the chain height and start consensus there."""


class _Failed:
    """Internal event: a task the engine spawned died; the engine dies with it, loudly."""

    def __init__(self, exc: BaseException):
        self.exc = exc


class EngineCrash(RuntimeError):
    """Test networks only (misbehave = "crash-engine"): the engine dies on purpose."""


class Engine:
    def __init__(self, chain: Chain, key: PrivateKey | None, *, block_interval: float = 1.0,
                 idle_interval: float = 3.0, broadcast: Callable[[str, object, frozenset], Awaitable[None]] | None = None,
                 on_commit: Callable[[Block], None] | None = None, misbehave: str = "",
                 on_proposal_seen: Callable[[int], None] | None = None):
        self.chain = chain
        self.key = key
        self.block_interval = block_interval
        self.idle_interval = idle_interval
        self.broadcast = broadcast
        self.on_commit = on_commit
        self.on_proposal_seen = on_proposal_seen or (lambda height: None)  # metrics: proposal-to-commit
        self.misbehave = misbehave
        timeouts = bft.TimeoutConfig(propose=2.0, first_propose_extra=block_interval + idle_interval)
        self.machine = bft.BFT(key.address if key else None, timeouts)
        self.events: asyncio.Queue = asyncio.Queue()
        self.tx_arrived = asyncio.Event()
        self._last_commit_at = time.monotonic()
        self._timers: list[asyncio.TimerHandle] = []
        self._tasks: set[asyncio.Task] = set()

    # -- inputs from the network and RPC --------------------------------------------------

    def submit(self, event) -> None:
        self.events.put_nowait(event)

    def on_proposal(self, proposal: Proposal) -> bool:
        """A peer's proposal: True when it is for our next height and properly signed."""
        if proposal.height != self.chain.height + 1:
            return False
        expected = bft.proposer_for(self.chain.validators(), proposal.height, proposal.round)
        if not verify(expected.pubkey, proposal.sign_bytes(self.chain.chain_id), proposal.signature):
            raise ValueError("proposal signature is not from the round's proposer")
        self.on_proposal_seen(proposal.height)
        if self.machine.height != proposal.height:
            self.submit(bft.ProposalReceived(proposal, self._valid(proposal)))  # the machine catches up first
            return True
        if not self.machine.accepts_proposal(proposal.height, proposal.round):
            return False  # a far-future round, or a second block for a round: not run, not relayed
        # Fed at once, not queued: the next message from the burst this one came in is checked
        # against state that already holds it (a queued proposal would let a second block of
        # the same round pass accepts_proposal too, and be run and relayed).
        self._feed_now(bft.ProposalReceived(proposal, self._valid(proposal)))
        return True

    def _valid(self, proposal: Proposal) -> bool:
        try:
            self.chain.check_block(proposal.block)
            return True
        except BlockError as exc:
            log.warning("rejecting block %d from round %d: %s", proposal.height, proposal.round, exc)
            return False

    def on_vote(self, vote: Vote) -> bool:
        """A peer's vote: for the height being decided, or a late precommit for our tip."""
        if vote.height == self.chain.height + 1:
            vals = self.chain.validators()
        elif vote.height == self.chain.height and vote.kind == PRECOMMIT and vote.block_hash == self.chain.tip_hash:
            vals = get_valset(self.chain.view(), K_LAST_VALSET)
        else:
            return False
        val = next((v for v in vals if v.address == vote.validator), None)
        if val is None:
            return False
        if not verify(val.pubkey, vote.sign_bytes(self.chain.chain_id), vote.signature):
            raise ValueError("vote signature is invalid")
        if vote.height == self.chain.height:
            return self.chain.add_late_precommit(vote)
        if self.machine.height != vote.height:
            self.submit(bft.VoteReceived(vote))
            return True
        if not self.machine.accepts_vote(vote):
            return False  # beyond its allowance of future rounds: welcome again when re-sent later
        self._feed_now(bft.VoteReceived(vote))  # at once, as for proposals
        return True

    def _feed_now(self, event) -> None:
        """Feed from a network handler. What goes wrong here is the engine's failure, not the
        peer's: it is handed to run(), which dies with it as if it had fed the event itself."""
        try:
            self._feed(event)
        except Exception as exc:
            self.submit(_Failed(exc))

    def on_evidence(self, ev: DuplicateVoteEvidence) -> bool:
        if ev.hash in self.chain.evidence:
            return False
        try:
            process_duplicate_vote(View(self.chain.state), ev, self.chain.chain_id, self.chain.height + 1)
        except BlockError as exc:
            raise ValueError(f"invalid evidence: {exc}") from None
        status = jail_status(self.chain.view(), ev.vote_a.validator)
        if status and status[1]:
            return False  # already punished
        return self.chain.add_evidence(ev)

    def restart_height(self) -> None:
        """Our height moved under consensus (blocks arrived by sync): start the next one."""
        if self.machine.height != self.chain.height + 1:
            self._cancel_timers()
            self.submit(_Restart())

    # -- main loop ------------------------------------------------------------------------

    def regossip(self) -> None:
        """Re-send this height's proposals and votes: a peer that restarted, was cut off or
        connected late has missed them, and without them it cannot join the round."""
        proposals, votes = self.machine.messages()
        for p in proposals:
            self._send("proposal", p, skip=self.machine.holders(p))
        for v in votes:
            self._send("vote", v)

    async def _regossip_loop(self) -> None:
        while True:
            await asyncio.sleep(REGOSSIP_S)
            if time.monotonic() - self._last_commit_at > REGOSSIP_S:
                self.regossip()

    def _resume_round(self) -> int:
        """A validator that crashed after signing at our next height must not sign that
        round again (its new block would conflict): it starts at the following round."""
        last = self.chain.store.last_signed()
        return last[1] + 1 if last and last[0] == self.chain.height + 1 else 0

    async def run(self) -> None:
        self._spawn(self._regossip_loop())
        self._feed(bft.NewHeight(self.chain.height + 1, self.chain.validators(), self._resume_round()))
        while True:
            event = await self.events.get()
            if isinstance(event, _Failed):
                raise event.exc
            if isinstance(event, _Restart):
                if self.machine.height != self.chain.height + 1:
                    self._feed(bft.NewHeight(self.chain.height + 1, self.chain.validators()))
            else:
                self._feed(event)

    def _feed(self, event) -> None:
        for action in self.machine.handle(event):
            self._do(action)

    def _do(self, action) -> None:
        if isinstance(action, bft.ScheduleTimeout):
            ev = bft.Timeout(action.height, action.round, action.step)
            self._timers.append(asyncio.get_running_loop().call_later(action.seconds, self.submit, ev))
        elif isinstance(action, bft.SignVote):
            self._sign_vote(action)
        elif isinstance(action, bft.Propose):
            self._spawn(self._propose(action))
        elif isinstance(action, bft.CommitBlock):
            self._commit(action)
        elif isinstance(action, bft.ReportEvidence):
            self.chain.add_evidence(action.evidence)
            log.warning("double sign by validator %s at height %d", action.evidence.vote_a.validator.hex(),
                        action.evidence.vote_a.height)
            self._send("evidence", action.evidence)

    def _spawn(self, coro) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._reap)

    def _reap(self, task: asyncio.Task) -> None:
        """A proposal or broadcast that raised would otherwise vanish and leave the node stalled."""
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            self.submit(_Failed(task.exception()))

    async def stop(self) -> None:
        """Cancel timers and everything the engine spawned, and wait for it to end."""
        self._cancel_timers()
        tasks = list(self._tasks)
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def _send(self, kind: str, msg: object, skip: frozenset = frozenset()) -> None:
        if self.broadcast is not None:
            self._spawn(self.broadcast(kind, msg, skip))

    # -- signing with double-sign protection ----------------------------------------------

    def _guard(self, height: int, round_: int, step: str, sign_bytes: bytes) -> None:
        """Persist (height, round, step, what) before signing; refuse anything conflicting."""
        record = [height, round_, STEP_ORDER[step], sha256(sign_bytes)]
        last = self.chain.store.last_signed()
        if last is not None:
            if record[:3] < last[:3] or (record[:3] == last[:3] and record[3] != last[3]):
                raise DoubleSignRefused(f"refusing to sign {step} at {height}/{round_}: already signed {last[:3]}")
            if record == last:
                return
        self.chain.store.set_last_signed(record)

    def _sign(self, height: int, round_: int, step: str, sign_bytes: bytes) -> bytes | None:
        """Our signature, or None (logged) when signing would conflict with what we signed."""
        try:
            self._guard(height, round_, step, sign_bytes)
        except DoubleSignRefused as exc:
            log.error("%s", exc)
            return None
        return self.key.sign(sign_bytes)

    def _sign_vote(self, a: bft.SignVote) -> None:
        vote = Vote(a.kind, a.height, a.round, a.block_hash, self.key.address)
        signature = self._sign(a.height, a.round, a.kind, vote.sign_bytes(self.chain.chain_id))
        if signature is None:
            return
        vote = Vote(a.kind, a.height, a.round, a.block_hash, self.key.address, signature)
        self._send("vote", vote)
        if self.misbehave == "double-prevote" and a.kind == PREVOTE:
            self._equivocate(a)
        self.submit(bft.VoteReceived(vote))

    def _equivocate(self, a: bft.SignVote) -> None:
        """Test networks only: also sign a conflicting prevote, which honest nodes turn into evidence."""
        other = sha256(b"equivocation" + a.block_hash + a.round.to_bytes(4, "big"))
        bad = Vote(PREVOTE, a.height, a.round, other, self.key.address)
        bad = Vote(PREVOTE, a.height, a.round, other, self.key.address, self.key.sign(bad.sign_bytes(self.chain.chain_id)))
        log.warning("misbehaving on purpose: conflicting prevote at height %d", a.height)
        self._send("vote", bad)

    async def _propose(self, a: bft.Propose) -> None:
        block = a.block
        if block is None:
            await self._pace(a.round)
            if self.machine.height != a.height or self.machine.round != a.round:
                return  # the round moved on while we waited
            block = self._build_block(a.height)
            if block is None:
                return
        proposal = Proposal(a.height, a.round, a.pol_round, block)
        signature = self._sign(a.height, a.round, bft.PROPOSE, proposal.sign_bytes(self.chain.chain_id))
        if signature is None:
            return
        proposal = Proposal(a.height, a.round, a.pol_round, block, signature)
        self.on_proposal_seen(a.height)
        self._send("proposal", proposal)
        self.submit(bft.ProposalReceived(proposal, True))

    def _build_block(self, height: int) -> Block | None:
        """Our block for this height, or None (one log line) if building failed: missing one
        proposal costs a round; an exception here would stop this validator's consensus."""
        try:
            return self.chain.build_block(self.key)
        except Exception:  # a bug in block building must not take the engine down
            log.exception("could not build a block at height %d; skipping this proposal", height)
            return None

    async def _pace(self, round_: int) -> None:
        """Wait one block interval after the last commit, then for txs or the idle interval."""
        since = time.monotonic() - self._last_commit_at
        if since < self.block_interval:
            await asyncio.sleep(self.block_interval - since)
        if round_ == 0 and len(self.chain.mempool) == 0 and not self.chain.evidence:
            self.tx_arrived.clear()
            remaining = self.idle_interval - (time.monotonic() - self._last_commit_at)
            if remaining > 0:
                try:
                    await asyncio.wait_for(self.tx_arrived.wait(), remaining)
                except asyncio.TimeoutError:
                    pass

    # -- committing -----------------------------------------------------------------------

    def _cancel_timers(self) -> None:
        for t in self._timers:
            t.cancel()
        self._timers.clear()

    def _commit(self, a: bft.CommitBlock) -> None:
        if a.block.height != self.chain.height + 1:
            return  # already committed through sync
        self.chain.commit_block(a.block, a.commit)
        self._cancel_timers()
        self.after_commit(a.block, a.commit.round)
        if self.misbehave == "crash-engine" and a.block.height >= 2:
            raise EngineCrash(f"misbehaving on purpose: the engine crashes after committing block {a.block.height}")
        self._feed(bft.NewHeight(self.chain.height + 1, self.chain.validators()))

    def after_commit(self, block: Block, round_: int = 0) -> None:
        elapsed = time.monotonic() - self._last_commit_at
        self._last_commit_at = time.monotonic()
        log.info("block %d committed: %d txs, round %d, hash %s, app_hash %s, %.2fs",
                 block.height, len(block.txs), round_, block.hash.hex()[:16],
                 block.header.app_hash.hex()[:16], elapsed)
        if self.on_commit:
            self.on_commit(block)
