"""One node process: store + consensus engine + mempool + RPC, stopped cleanly by a signal.

SIGTERM or SIGINT stops the node in bounded stages (engine, RPC, P2P, store; see
lifecycle.py) within a few seconds whatever it is doing, exit code 0. If the consensus
engine or a network loop dies, the node logs one line naming it and the error, stops the
same way and exits with EXIT_FAILED. A shutdown that overruns its hard deadline, or a
second signal during one, ends the process with EXIT_HUNG.
"""
from __future__ import annotations

import asyncio
import logging
import os
import signal

from aiohttp import web

from consensus.genesis import load as load_genesis
from consensus.jobs import K_ACTIVE_JOBS
from consensus.types import Block, Tx

from consensus.crypto import format_address

from .blobgc import BlobKeeper
from .chain import Chain, set_clock_offset
from .network import Network
from .engine import Engine
from .home import Home, split_hostport
from .lifecycle import EXIT_FAILED, EXIT_OK, Deadline, bounded, busy_threads, where
from .explorer_index import all_job_ids
from .metrics import NodeMetrics
from .rpc import Rpc, is_loopback
from .rpc_http import RpcRunner
from .workers.referee import Referee

log = logging.getLogger("stepchain.node")
ENGINE_STOP_S = 1.0
RPC_DRAIN_S = 1.0  # aiohttp's shutdown_timeout (60 s by default): in-flight requests get this long, then are cancelled
RPC_STOP_S = 3.0
NETWORK_STOP_S = 2.0


class Node:
    def __init__(self, home: Home):
        self.home = home.require()
        self.config = home.config()
        self.key = home.node_key()
        set_clock_offset(self.config.clock_offset_ms)
        self.chain = Chain(home.data_dir, load_genesis(home.genesis_path))
        self.rpc = Rpc(self)
        self.referee = Referee(self)
        self.committed_txs = 0
        self.metrics = NodeMetrics()
        view = self.chain.view()
        self.metrics.census(view, all_job_ids(self.chain.store.db) + view.read(K_ACTIVE_JOBS, []))
        self.stopping = False
        is_validator = self.config.validator
        self.engine = Engine(self.chain, self.key if is_validator else None,
                             block_interval=self.config.block_interval_ms / 1000,
                             idle_interval=self.config.idle_interval_ms / 1000,
                             broadcast=self._broadcast, on_commit=self._on_commit,
                             misbehave=self.config.misbehave, on_proposal_seen=self.metrics.proposal_seen)
        self.network = Network(self.chain, self.engine, self.key, self.config.p2p_listen, self.config.seeds,
                               self.config.max_frame_bytes, home.path / "blobs",
                               external=self.config.p2p_external, misbehave=self.config.misbehave)
        self.storage = BlobKeeper(self.chain, self.network.blobs, self.config)
        self.network.metrics = self.metrics
        self.network.transfers.count_bytes = lambda direction, n: self.metrics.blob_bytes.labels(direction).inc(n)
        self.network.transfers.reserve = self.storage.reserve

    async def _broadcast(self, kind: str, msg, skip: frozenset = frozenset()) -> None:
        await self.network.broadcast(kind, msg, skip)

    def on_new_tx(self, tx: Tx) -> None:
        self.network.queue_tx(tx)
        self.engine.tx_arrived.set()

    def _on_commit(self, block: Block) -> None:
        self.committed_txs += len(block.txs)
        self.metrics.committed(block, self.chain.last_writes)
        self.rpc.publish_block(block)
        self.network.on_commit(block)
        self.referee.on_commit()
        self.storage.on_commit(block.height)

    async def serve(self, stop: asyncio.Event, deadline: Deadline) -> int:
        """Run until `stop` is set or a vital task dies; then stop in bounded stages. The exit code."""
        host, port = split_hostport(self.config.rpc_listen)
        runner = RpcRunner(self.rpc.app(self.config.max_body_bytes, is_loopback(host)), access_log=None,
                           shutdown_timeout=RPC_DRAIN_S)
        await runner.setup()
        engine: asyncio.Task | None = None
        gc = asyncio.get_running_loop().create_task(self.storage.run())
        try:
            await web.TCPSite(runner, host, port).start()
            await self.network.start()
            log.info("node %s (%s): chain %s at height %d, RPC on http://%s:%d, P2P on %s", self.config.moniker,
                     format_address(self.key.address), self.chain.chain_id, self.chain.height, host, port,
                     self.config.p2p_listen)
            engine = asyncio.get_running_loop().create_task(self.engine.run())
            if self.config.misbehave == "busy-referee":
                self.referee.keep_busy()
            return await self._until_stopped(stop, deadline, {engine: "consensus engine", **self.network.loops})
        finally:
            gc.cancel()
            await self._shutdown(runner, engine)

    async def _until_stopped(self, stop: asyncio.Event, deadline: Deadline, vital: dict) -> int:
        stopper = asyncio.get_running_loop().create_task(stop.wait())
        try:
            done, _ = await asyncio.wait([*vital, stopper], return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopper.cancel()
        dead = [t for t in vital if t in done]
        if not dead:
            return EXIT_OK
        task = dead[0]
        deadline.arm(f"{vital[task]} failed")
        exc = None if task.cancelled() else task.exception()
        why = f"{type(exc).__name__}: {exc} (at {where(exc)})" if exc is not None else "it ended"
        log.error("%s failed, so the node stops (exit code %d): %s", vital[task], EXIT_FAILED, why)
        return EXIT_FAILED

    async def _shutdown(self, runner: web.AppRunner, engine: asyncio.Task | None) -> None:
        """Each stage is bounded: a stuck peer, client or task costs seconds, never the exit."""
        self.stopping = True
        log.info("shutting down")
        if self.config.misbehave == "hang-on-stop":
            await asyncio.sleep(3600)  # test networks only: a stage that never ends, for the hard deadline
        if engine is not None:
            engine.cancel()
            await bounded("consensus engine", asyncio.gather(engine, self.engine.stop(), return_exceptions=True),
                          ENGINE_STOP_S)
        await bounded("RPC server", runner.cleanup(), RPC_STOP_S)
        await bounded("P2P network", self.network.stop(), NETWORK_STOP_S)
        self.chain.close()
        log.info("stopped at height %d", self.chain.height)


def run_node(home: Home) -> int:
    """Run a node until SIGTERM/SIGINT (exit code 0) or until it fails (non-zero)."""
    node = Node(home)
    deadline = Deadline()

    def on_signal(sig: signal.Signals, stop: asyncio.Event) -> None:
        if not deadline.armed:
            log.info("received %s, stopping", sig.name)
        deadline.arm(sig.name)  # a second signal: exit now
        stop.set()

    async def main() -> int:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, on_signal, sig, stop)
        return await node.serve(stop, deadline)

    try:
        code = asyncio.run(main())
    finally:
        deadline.disarm()
    busy = busy_threads()
    if busy:  # a referee thread in torch: nothing may join it, and interpreter exit would abort under it
        log.info("leaving %d busy worker thread(s) behind: %s", len(busy), ", ".join(t.name for t in busy))
        logging.shutdown()
        os._exit(code)
    return code
