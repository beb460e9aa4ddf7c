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
from consensus.crypto import PrivateKey, sha256
from consensus.state import BlockError
from consensus.types import PRECOMMIT, PREVOTE, Block, Proposal, Vote

from .chain import Chain

log = logging.getLogger("stepchain.consensus")
STEP_ORDER = {bft.PROPOSE: 0, PREVOTE: 1, PRECOMMIT: 2}


class DoubleSignRefused(RuntimeError):
    pass


class Engine:
    def __init__(self, chain: Chain, key: PrivateKey | None, *, block_interval: float = 1.0,
                 idle_interval: float = 3.0, broadcast: Callable[[str, object], Awaitable[None]] | None = None,
                 on_commit: Callable[[Block], None] | None = None):
        self.chain = chain
        self.key = key
        self.block_interval = block_interval
        self.idle_interval = idle_interval
        self.broadcast = broadcast
        self.on_commit = on_commit
        timeouts = bft.TimeoutConfig(propose=block_interval + idle_interval + 2.0)
        self.machine = bft.BFT(key.address if key else None, timeouts)
        self.events: asyncio.Queue = asyncio.Queue()
        self.tx_arrived = asyncio.Event()
        self._last_commit_at = time.monotonic()
        self._timers: list[asyncio.TimerHandle] = []
        self._tasks: set[asyncio.Task] = set()

    # -- inputs from the network and RPC --------------------------------------------------

    def submit(self, event) -> None:
        self.events.put_nowait(event)

    def on_proposal(self, proposal: Proposal) -> None:
        """A proposal from a peer (signature checked here, validity by execution)."""
        if proposal.height != self.chain.height + 1:
            return
        expected = bft.proposer_for(self.chain.validators(), proposal.height, proposal.round)
        from consensus.crypto import verify
        if not verify(expected.pubkey, proposal.sign_bytes(self.chain.chain_id), proposal.signature):
            raise ValueError("proposal signature is not from the round's proposer")
        self.submit(bft.ProposalReceived(proposal, self._valid(proposal)))

    def _valid(self, proposal: Proposal) -> bool:
        try:
            self.chain.check_block(proposal.block, proposal.round)
            return True
        except BlockError as exc:
            log.warning("rejecting block %d from round %d: %s", proposal.height, proposal.round, exc)
            return False

    # -- main loop ------------------------------------------------------------------------

    async def run(self) -> None:
        self._feed(bft.NewHeight(self.chain.height + 1, self.chain.validators()))
        while True:
            event = await self.events.get()
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
            self.chain.evidence[action.evidence.hash] = action.evidence
            log.warning("double sign by validator %s at height %d", action.evidence.vote_a.validator.hex(),
                        action.evidence.vote_a.height)
            self._send("evidence", action.evidence)

    def _spawn(self, coro) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _send(self, kind: str, msg: object) -> None:
        if self.broadcast is not None:
            self._spawn(self.broadcast(kind, msg))

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

    def _sign_vote(self, a: bft.SignVote) -> None:
        vote = Vote(a.kind, a.height, a.round, a.block_hash, self.key.address)
        sign_bytes = vote.sign_bytes(self.chain.chain_id)
        try:
            self._guard(a.height, a.round, a.kind, sign_bytes)
        except DoubleSignRefused as exc:
            log.error("%s", exc)
            return
        vote = Vote(a.kind, a.height, a.round, a.block_hash, self.key.address, self.key.sign(sign_bytes))
        self._send("vote", vote)
        self.submit(bft.VoteReceived(vote))

    async def _propose(self, a: bft.Propose) -> None:
        block = a.block
        if block is None:
            await self._pace()
            if self.machine.height != a.height or self.machine.round != a.round:
                return  # the round moved on while we waited
            block = self.chain.build_block(self.key, a.round)
        proposal = Proposal(a.height, a.round, a.pol_round, block)
        sign_bytes = proposal.sign_bytes(self.chain.chain_id)
        try:
            self._guard(a.height, a.round, bft.PROPOSE, sign_bytes)
        except DoubleSignRefused as exc:
            log.error("%s", exc)
            return
        proposal = Proposal(a.height, a.round, a.pol_round, block, self.key.sign(sign_bytes))
        self._send("proposal", proposal)
        self.submit(bft.ProposalReceived(proposal, True))

    async def _pace(self) -> None:
        """Wait one block interval after the last commit, then for txs or the idle interval."""
        since = time.monotonic() - self._last_commit_at
        if since < self.block_interval:
            await asyncio.sleep(self.block_interval - since)
        if len(self.chain.mempool) == 0 and not self.chain.evidence:
            self.tx_arrived.clear()
            remaining = self.idle_interval - (time.monotonic() - self._last_commit_at)
            if remaining > 0:
                try:
                    await asyncio.wait_for(self.tx_arrived.wait(), remaining)
                except asyncio.TimeoutError:
                    pass

    # -- committing -----------------------------------------------------------------------

    def _commit(self, a: bft.CommitBlock) -> None:
        started = time.monotonic()
        result = self.chain.commit_block(a.block, a.commit)
        for t in self._timers:
            t.cancel()
        self._timers.clear()
        elapsed = started - self._last_commit_at
        self._last_commit_at = time.monotonic()
        log.info("block %d committed: %d txs, round %d, hash %s, app_hash %s, %.2fs",
                 a.block.height, len(result.included), a.commit.round, a.block.hash.hex()[:16],
                 result.app_hash.hex()[:16], elapsed)
        if self.on_commit:
            self.on_commit(a.block)
        self._feed(bft.NewHeight(self.chain.height + 1, self.chain.validators()))
