"""The node's view of the chain: store, committed state, mempool, and block build/check.

This is where the pure rules in ``consensus/`` meet one node's data. Building and checking
a block both run the same ``execute_block``; the result is cached by block hash so a block
is executed once per node, however many times it is proposed, voted on and committed.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
import time
from pathlib import Path

from consensus import merkle
from consensus.bft import verify_commit
from consensus.crypto import PrivateKey, verify
from consensus.genesis import Genesis
from consensus.ledger import K_LAST_VALSET, View, get_chain, get_params, get_valset
from consensus.staking import valset_hash
from consensus.state import (MAX_EVIDENCE_PER_BLOCK, BlockContext, BlockError, BlockResult, execute_block,
                             genesis_writes)
from consensus.store import Store, StoreError
from consensus.types import (MAX_BLOCK_BYTES, Block, Commit, DuplicateVoteEvidence, Header, beacon_sign_bytes,
                             commit_hash, next_beacon)

from .explorer_index import index_writes
from .mempool import Mempool

log = logging.getLogger("stepchain.chain")
MAX_CLOCK_DRIFT_MS = 10_000
MAX_PENDING_EVIDENCE = 4 * MAX_EVIDENCE_PER_BLOCK
TX_BYTES_PER_BLOCK = MAX_BLOCK_BYTES - 256 * 1024  # the rest is header, last commit and evidence


@dataclass
class Pace:
    """How long this node takes to execute a tx, learned from the blocks it runs. A proposer
    reaps only what it can execute within `budget_s`: every other validator must receive and
    execute the block within a propose timeout (2 s and up), and after a stall the backlog would
    otherwise go into one block too slow to decide in any round. Node-local and advisory: it
    changes which txs a proposer picks, never which blocks are valid."""
    budget_s: float = 0.5
    floor: int = 500
    s_per_tx: float = 0.0

    def observe(self, n_txs: int, seconds: float) -> None:
        if n_txs >= 100:
            sample = seconds / n_txs
            self.s_per_tx = sample if self.s_per_tx == 0 else 0.7 * self.s_per_tx + 0.3 * sample

    def limit(self, cap: int) -> int:
        if self.s_per_tx <= 0:
            return cap
        return max(min(self.floor, cap), min(cap, int(self.budget_s / self.s_per_tx)))


def signers_of(commit: Commit | None) -> tuple[bytes, ...]:
    return tuple(a for a, _ in commit.signatures) if commit else ()


_clock_offset_ms = 0  # Config.clock_offset_ms: a test/ops knob, 0 in normal use


def set_clock_offset(ms: int) -> None:
    global _clock_offset_ms
    _clock_offset_ms = ms


def now_ms() -> int:
    return int(time.time() * 1000) + _clock_offset_ms


class Chain:
    def __init__(self, data_dir: str | Path, genesis: Genesis):
        self.genesis = genesis
        self.chain_id = genesis.chain_id
        self.store = Store(data_dir)
        if not self.store.is_initialized():
            writes, app_hash = genesis_writes(genesis)
            self.store.init_genesis(writes, app_hash, genesis.hash)
        self.state: dict[bytes, bytes] = self.store.load_state()
        self.height, self.tip_hash, self.app_hash = self.store.tip()
        self._check_resume()
        self.last_commit: Commit | None = self.store.commit(self.height) if self.height else None
        self.mempool = Mempool(self.chain_id)
        self.evidence: dict[bytes, DuplicateVoteEvidence] = {}
        self._results: dict[bytes, BlockResult] = {}
        self.last_writes: dict = {}
        self.pace = Pace()

    def _check_resume(self) -> None:
        """The state we loaded must be the state after the last block we stored."""
        if get_chain(self.view())[0] != self.height:
            raise StoreError("state height does not match the last block: the store is corrupt")
        if self.height:
            block = self.store.block(self.height)
            if block is None or block.hash != self.tip_hash or block.header.app_hash != self.app_hash:
                raise StoreError("the last block does not match the stored app hash")
        log.info("resuming at height %d app_hash %s", self.height, self.app_hash.hex()[:16])

    def close(self) -> None:
        self.store.close()

    def view(self) -> View:
        return View(self.state)

    def validators(self) -> tuple:
        return tuple(get_valset(self.view()))

    # -- building -------------------------------------------------------------------------

    def build_block(self, key: PrivateKey) -> Block:
        """Make a block from the mempool, leaving out txs that fail. A block that could not
        travel (too big, or not encodable) is never proposed: the proposer falls back to a
        block without txs and drops what it reaped, so no tx can stall consensus."""
        block = self._build(key, with_txs=True)
        why = block.size_error()
        if why is None:
            return block
        log.error("block %d not proposed with its %d txs: %s; dropping them from the mempool",
                  block.height, len(block.txs), why)
        self.mempool.remove_invalid([(tx, why) for tx in block.txs])
        return self._build(key, with_txs=False)

    def _build(self, key: PrivateKey, with_txs: bool) -> Block:
        v = self.view()
        height, prev_beacon, last_time = get_chain(v)
        beacon_sig = key.sign(beacon_sign_bytes(self.chain_id, height + 1, prev_beacon))
        ctx = BlockContext(height + 1, max(now_ms(), last_time + 1), key.address,
                           next_beacon(prev_beacon, beacon_sig), signers_of(self.last_commit))
        cap = get_params(v)["max_block_txs"]
        # A sole validator waits for nobody, so only a set of several needs the pace.
        limit = self.pace.limit(cap) if len(self.validators()) > 1 else cap
        txs = self.mempool.reap(v, limit, TX_BYTES_PER_BLOCK) if with_txs else []
        evidence = self.pending_evidence()
        started = time.monotonic()
        result = execute_block(self.state, self.app_hash, self.chain_id, ctx, txs, evidence,
                               sig_ok=self.mempool.verified, skip_invalid=True)
        self.pace.observe(len(txs), time.monotonic() - started)
        self.mempool.remove_invalid(result.rejected)
        header = Header(self.chain_id, ctx.height, ctx.time_ms, self.tip_hash,
                        merkle.root([t.hash for t in result.included]),
                        merkle.root([e.hash for e in evidence]), commit_hash(self.last_commit),
                        result.app_hash, valset_hash(list(self.validators())), key.address,
                        ctx.beacon, beacon_sig)
        block = Block(header, tuple(result.included), self.last_commit, tuple(evidence))
        self._results[block.hash] = result
        return block

    def pending_evidence(self) -> list[DuplicateVoteEvidence]:
        """What the next block carries: one piece per offender (one is enough), bounded."""
        first: dict[bytes, DuplicateVoteEvidence] = {}
        for ev in sorted(self.evidence.values(), key=lambda e: e.hash):
            first.setdefault(ev.vote_a.validator, ev)
        return sorted(first.values(), key=lambda e: e.hash)[:MAX_EVIDENCE_PER_BLOCK]

    def add_evidence(self, ev: DuplicateVoteEvidence) -> bool:
        """Keep verified evidence for the next block: True if it is new and worth relaying (no
        evidence against that validator is pending yet, and the pool is not full)."""
        if ev.hash in self.evidence or len(self.evidence) >= MAX_PENDING_EVIDENCE \
                or any(e.vote_a.validator == ev.vote_a.validator for e in self.evidence.values()):
            return False
        self.evidence[ev.hash] = ev
        return True

    # -- checking -------------------------------------------------------------------------

    def check_block(self, block: Block) -> BlockResult:
        """Every rule a validator checks before prevoting; raises BlockError."""
        if block.hash in self._results:
            return self._results[block.hash]
        h, v = block.header, self.view()
        vals = self.validators()
        _, prev_beacon, _ = get_chain(v)
        if h.chain_id != self.chain_id or h.height != self.height + 1 or h.prev_hash != self.tip_hash:
            raise BlockError("block does not extend our tip")
        if not block.body_roots_match():
            raise BlockError("header roots do not match the block body")
        why = block.size_error()
        if why:
            raise BlockError(why)
        if h.validators_hash != valset_hash(list(vals)):
            raise BlockError("wrong validators_hash")
        # A block re-proposed in a later round (proof-of-lock) keeps its original builder,
        # so the header names any validator; the proposal's signer is checked per round.
        proposer = next((x for x in vals if x.address == h.proposer), None)
        if proposer is None:
            raise BlockError("block proposer is not a validator")
        if h.time_ms > now_ms() + MAX_CLOCK_DRIFT_MS:
            raise BlockError("block time is too far in the future")
        sig_ok = verify(proposer.pubkey, beacon_sign_bytes(self.chain_id, h.height, prev_beacon), h.beacon_sig)
        if not sig_ok or h.beacon != next_beacon(prev_beacon, h.beacon_sig):
            raise BlockError("bad beacon")
        self._check_last_commit(block)
        ctx = BlockContext(h.height, h.time_ms, h.proposer, h.beacon, signers_of(block.last_commit))
        started = time.monotonic()
        result = execute_block(self.state, self.app_hash, self.chain_id, ctx, block.txs, block.evidence,
                               sig_ok=self.mempool.verified)
        self.pace.observe(len(block.txs), time.monotonic() - started)
        if result.app_hash != h.app_hash:
            raise BlockError("app_hash does not match our execution")
        self._results[block.hash] = result
        return result

    def _check_last_commit(self, block: Block) -> None:
        if block.height == 1:
            if block.last_commit is not None:
                raise BlockError("block 1 cannot carry a last commit")
            return
        if block.last_commit is None:
            raise BlockError("block has no commit for its parent")
        why = verify_commit(self.chain_id, block.last_commit, get_valset(self.view(), K_LAST_VALSET),
                            self.height, self.tip_hash)
        if why:
            raise BlockError(f"bad last commit: {why}")

    def add_late_precommit(self, vote) -> bool:
        """A precommit for our tip that arrived after we decided: the next block's last
        commit carries it, so the validator is not counted as missing."""
        c = self.last_commit
        if c is None or vote.round != c.round or any(a == vote.validator for a, _ in c.signatures):
            return False
        sigs = tuple(sorted(c.signatures + ((vote.validator, vote.signature),)))
        self.last_commit = Commit(c.height, c.round, c.block_hash, sigs)
        return True

    # -- committing -----------------------------------------------------------------------

    def commit_block(self, block: Block, commit: Commit) -> BlockResult:
        result = self.check_block(block)
        index = index_writes(block, self.state, result.writes)
        self.store.commit_block(block, commit, result.writes, result.app_hash, index)
        for k, val in result.writes.items():
            if val is None:
                self.state.pop(k, None)
            else:
                self.state[k] = val
        self.height, self.tip_hash, self.app_hash = block.height, block.hash, result.app_hash
        self.last_commit = commit
        self.last_writes = result.writes  # what the block changed (metrics count its job events)
        punished = {ev.vote_a.validator for ev in block.evidence}
        self.evidence = {h: ev for h, ev in self.evidence.items() if ev.vote_a.validator not in punished}
        self._results.clear()
        self.mempool.update(self.view(), self.height)
        self.mempool.recheck(self.view(), self.height)
        return result
