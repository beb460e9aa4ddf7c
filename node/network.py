"""The node's side of the network: what peers' messages mean for this node's chain.

p2p/ moves, dedups and rate-limits messages; this module decodes them, checks them against
the chain (signatures, heights, commits) and passes them to the mempool, the consensus
engine or the block syncer, blaming the peer (``Misbehaviour``) when a message is bad.
"""
from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path

from consensus import codec
from consensus.bft import verify_commit
from consensus.state import BlockError
from consensus.store import StoreError
from consensus.types import Block, Commit, DecodeError, DuplicateVoteEvidence, Proposal, Tx, Vote
from p2p.blobs import BlobError, BlobStore
from p2p.gossip import Gossip, Misbehaviour, Peer
from p2p.ratelimit import TokenBucket
from p2p.sync import SyncPlanner, serve_range
from p2p.transport import make_hello

from .blobxfer import BlobTransfers
from .chain import Chain
from .engine import Engine
from .mempool import InvalidTx, Rejected
from .metrics import admit

log = logging.getLogger("stepchain.net")
MAX_TXS_PER_MESSAGE = 1000
TX_FLUSH_S = 0.05
MALFORMED = 50
BAD_SIGNATURE = 20
INVALID_TX = 20  # per tx that can never execute: five in a message is a ban
# Each tx a peer sends costs a signature check (~70 us), even a valid one the pool then
# rejects (a used nonce): bounded per peer, so no peer can buy a whole core for free.
TX_RATE_PER_PEER = 5_000.0
TX_BURST_PER_PEER = 20_000.0
IN_MEMORY_BLOB = 64 * 1024 * 1024  # fetch_blob reads at most this into memory; bigger: fetch_blob_file


def _decode(fn, payload, what: str):
    try:
        return fn(payload)
    except (DecodeError, codec.CodecError, TypeError, IndexError) as exc:
        raise Misbehaviour(MALFORMED, f"malformed {what}: {exc}") from None


class Network:
    def __init__(self, chain: Chain, engine: Engine, key, listen: str, seeds: list[str], frame_limit: int,
                 blob_dir, external: str = "", misbehave: str = ""):
        self.chain, self.engine = chain, engine
        self.listen = listen
        self.advertised = external or listen  # what peers dial: the hello's `listen`
        self.gossip = Gossip(key, self, listen, seeds, frame_limit)
        self.planner = SyncPlanner()
        self._validators: tuple[int, frozenset] = (-1, frozenset())  # (at height, addresses)
        self._tx_buffer: list = []
        self._wake_sync = asyncio.Event()
        self.blobs = BlobStore(blob_dir, chain.genesis.params["max_blob_bytes"])
        self.transfers = BlobTransfers(self.gossip, self.blobs, frame_limit, misbehave)
        self.metrics = None  # node/metrics.NodeMetrics, set by the node: admission is timed and counted
        self._tx_budgets: dict[bytes, TokenBucket] = {}
        self.loops: dict[asyncio.Task, str] = {}  # the node stops if one of these ends

    async def start(self) -> None:
        await self.gossip.start()
        self.loops = {self.gossip._spawn(self._flush_txs()): "tx flusher",
                      self.gossip._spawn(self._sync_loop()): "block sync"}

    def end_fetches(self) -> None:
        """Shutting down: every blob fetch still waiting on peers ends now, empty-handed."""
        self.transfers.end_all()

    async def stop(self) -> None:
        self.end_fetches()
        await self.gossip.stop()
        self.transfers.close()

    # -- outgoing -------------------------------------------------------------------------

    async def broadcast(self, kind: str, msg, skip: frozenset = frozenset()) -> None:
        """To every peer but those in `skip` (peer ids are validator addresses)."""
        self.gossip.broadcast(kind, msg.to_obj(), skip)

    def queue_tx(self, tx: Tx) -> None:
        self._tx_buffer.append(tx.to_obj())

    async def _flush_txs(self) -> None:
        while True:
            await asyncio.sleep(TX_FLUSH_S)
            while self._tx_buffer:
                batch, self._tx_buffer = self._tx_buffer[:MAX_TXS_PER_MESSAGE], self._tx_buffer[MAX_TXS_PER_MESSAGE:]
                self.gossip.broadcast("txs", batch)

    def on_commit(self, block: Block) -> None:
        self.gossip.send_status(self.chain.height)

    # -- App protocol ---------------------------------------------------------------------

    def hello(self) -> dict:
        return make_hello(self.chain.chain_id, self.chain.genesis.hash, self.chain.height, self.advertised)

    def on_peer(self, peer: Peer) -> None:
        if peer.height > self.chain.height:
            self._wake_sync.set()
        elif peer.height == self.chain.height:
            self.engine.regossip()

    def is_validator(self, peer_id: bytes) -> bool:
        """Node key = validator key: such a peer always gets a connection slot."""
        if self._validators[0] != self.chain.height:
            self._validators = (self.chain.height, frozenset(v.address for v in self.chain.validators()))
        return peer_id in self._validators[1]

    async def handle(self, peer: Peer, kind: str, payload) -> bool:
        handler = getattr(self, f"_on_{kind}", None)
        if handler is None:
            raise Misbehaviour(10, f"unknown message kind {kind!r}")
        return handler(peer, payload)

    def _on_txs(self, peer: Peer, payload) -> bool:
        if type(payload) is not list or len(payload) > MAX_TXS_PER_MESSAGE:
            raise Misbehaviour(MALFORMED, "txs must be a list of at most 1000")
        if len(self._tx_budgets) > 4 * len(self.gossip.peers) + 64:  # forget peers that left
            self._tx_budgets = {p: b for p, b in self._tx_budgets.items() if p in self.gossip.peers}
        budget = self._tx_budgets.setdefault(peer.id, TokenBucket(TX_RATE_PER_PEER, TX_BURST_PER_PEER))
        txs = [_decode(Tx.from_obj, obj, "tx") for obj in payload]
        fresh = [(obj, tx) for obj, tx in zip(payload, txs) if tx.hash not in self.chain.mempool.by_hash]
        allowed = budget.take(len(fresh), time.monotonic())  # only what costs a signature check
        if allowed < len(fresh):  # over its budget: not even the signatures are checked
            log.debug("peer %s over its tx budget: %d of %d txs dropped", peer.name, len(fresh) - allowed, len(fresh))
            fresh = fresh[:allowed]
        accepted, invalid, why = [], 0, ""
        for obj, tx in fresh:
            try:
                admit(self.chain, self.metrics, tx)
                accepted.append(obj)
            except InvalidTx as exc:  # honest peers check before they relay: this one did not
                invalid, why = invalid + 1, str(exc)
            except Rejected:
                pass  # valid but untimely (races between honest peers are normal)
        if accepted:
            self.engine.tx_arrived.set()
            self.gossip.credit(peer, "txs")
            self.gossip.relay("txs", accepted, exclude=peer.id)
        if invalid:
            raise Misbehaviour(min(INVALID_TX * invalid, 100), f"{invalid} invalid txs (last: {why})")
        return False

    def _on_proposal(self, peer: Peer, payload) -> bool:
        proposal = _decode(Proposal.from_obj, payload, "proposal")
        if proposal.height > self.chain.height + 1:
            peer.hello["height"] = max(peer.height, proposal.height - 1)
            self._wake_sync.set()
            return False
        try:
            return self.engine.on_proposal(proposal)
        except ValueError as exc:
            raise Misbehaviour(BAD_SIGNATURE, str(exc)) from None

    def _on_vote(self, peer: Peer, payload) -> bool:
        vote = _decode(Vote.from_obj, payload, "vote")
        try:
            return self.engine.on_vote(vote)
        except ValueError as exc:
            raise Misbehaviour(BAD_SIGNATURE, str(exc)) from None

    def _on_evidence(self, peer: Peer, payload) -> bool:
        ev = _decode(DuplicateVoteEvidence.from_obj, payload, "evidence")
        try:
            return self.engine.on_evidence(ev)
        except ValueError as exc:
            raise Misbehaviour(BAD_SIGNATURE, str(exc)) from None

    def _on_status(self, peer: Peer, payload) -> bool:
        if type(payload) is not int:
            raise Misbehaviour(MALFORMED, "status must be a height")
        peer.hello["height"] = payload
        if payload > self.chain.height:
            self._wake_sync.set()
        return False

    def _on_get_blocks(self, peer: Peer, payload) -> bool:
        if type(payload) is not list or len(payload) != 2 or not all(type(x) is int for x in payload):
            raise Misbehaviour(MALFORMED, "get_blocks must be [first, last]")
        store = self.chain.store
        peer.send("blocks", serve_range(store.block_bytes, lambda h: store.commit(h).to_obj(),
                                        payload[0], payload[1], self.chain.height))
        return False

    def _on_blocks(self, peer: Peer, payload) -> bool:
        if type(payload) is not list:
            raise Misbehaviour(MALFORMED, "blocks must be a list")
        applied = 0
        try:
            for raw, commit_obj in payload:
                block = _decode(Block.decode, raw, "block")
                commit = _decode(Commit.from_obj, commit_obj, "commit")
                if block.height <= self.chain.height:
                    continue
                self._apply_synced(block, commit)
                applied += 1
        except (ValueError, TypeError) as exc:  # BlockError is a ValueError
            self.planner.done(peer.id, False, time.monotonic())
            raise Misbehaviour(MALFORMED, f"invalid synced block: {exc}") from None
        self.planner.done(peer.id, True, time.monotonic())
        if applied:
            self.gossip.credit(peer, "blocks")
            log.info("synced %d blocks from %s, now at height %d", applied, peer.name, self.chain.height)
            self.engine.restart_height()
            self.gossip.send_status(self.chain.height)
        self._wake_sync.set()
        return False

    def _apply_synced(self, block: Block, commit: Commit) -> None:
        if block.height != self.chain.height + 1:
            raise BlockError(f"block {block.height} does not follow our height {self.chain.height}")
        why = verify_commit(self.chain.chain_id, commit, self.chain.validators(), block.height, block.hash)
        if why:
            raise BlockError(why)
        self.chain.commit_block(block, commit)
        self.engine.after_commit(block)

    # -- blobs ----------------------------------------------------------------------------

    async def fetch_blob_file(self, digest: bytes, timeout: float = 600.0) -> Path | None:
        """Our copy, or one fetched from peers to disk, every chunk verified (node/blobxfer.py)."""
        return await self.transfers.fetch_file(digest, timeout)

    async def fetch_blob(self, digest: bytes, timeout: float = 30.0) -> bytes | None:
        """A small blob's bytes (ours or fetched); a blob over IN_MEMORY_BLOB is refused."""
        path = await self.fetch_blob_file(digest, timeout)
        if path is None:
            return None
        size = path.stat().st_size
        if size > IN_MEMORY_BLOB:
            raise BlobError(f"blob of {size} bytes is too large to read into memory: use fetch_blob_file")
        return path.read_bytes()

    def _on_blob_get(self, peer: Peer, payload) -> bool:
        self.transfers.on_get(peer, payload)
        return False

    def _on_blob_chunk(self, peer: Peer, payload) -> bool:
        self.transfers.on_chunk(peer, payload)
        return False

    def _on_blob_missing(self, peer: Peer, payload) -> bool:
        self.transfers.on_missing(peer, payload)
        return False

    def _on_blob_leaves_get(self, peer: Peer, payload) -> bool:
        self.transfers.on_leaves_get(peer, payload)
        return False

    def _on_blob_leaves(self, peer: Peer, payload) -> bool:
        self.transfers.on_leaves(peer, payload)
        return False

    async def _sync_loop(self) -> None:
        while True:
            try:
                await asyncio.wait_for(self._wake_sync.wait(), 1.0)
            except asyncio.TimeoutError:
                pass
            self._wake_sync.clear()
            heights = {pid: p.height for pid, p in self.gossip.peers.items()}
            req = self.planner.next_request(self.chain.height, heights, time.monotonic())
            if req is not None and req.peer in self.gossip.peers:
                self.gossip.peers[req.peer].send("get_blocks", [req.first, req.last])


__all__ = ["Network", "StoreError"]
