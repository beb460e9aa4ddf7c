"""One node process: store + consensus engine + mempool + RPC, stopped cleanly by a signal."""
from __future__ import annotations

import asyncio
import logging
import signal

from aiohttp import web

from consensus.genesis import load as load_genesis
from consensus.types import Block, Tx

from consensus.crypto import format_address

from .chain import Chain, set_clock_offset
from .network import Network
from .engine import Engine
from .home import Home, split_hostport
from .rpc import Rpc
from .workers.referee import Referee

log = logging.getLogger("stepchain.node")


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
        is_validator = self.config.validator
        self.engine = Engine(self.chain, self.key if is_validator else None,
                             block_interval=self.config.block_interval_ms / 1000,
                             idle_interval=self.config.idle_interval_ms / 1000,
                             broadcast=self._broadcast, on_commit=self._on_commit,
                             misbehave=self.config.misbehave)
        self.network = Network(self.chain, self.engine, self.key, self.config.p2p_listen, self.config.seeds,
                               self.config.max_frame_bytes, home.path / "blobs",
                               external=self.config.p2p_external)

    async def _broadcast(self, kind: str, msg) -> None:
        await self.network.broadcast(kind, msg)

    def on_new_tx(self, tx: Tx) -> None:
        self.network.queue_tx(tx)
        self.engine.tx_arrived.set()

    def _on_commit(self, block: Block) -> None:
        self.committed_txs += len(block.txs)
        self.rpc.publish_block(block)
        self.network.on_commit(block)
        self.referee.on_commit()

    async def serve(self, stop: asyncio.Event) -> None:
        host, port = split_hostport(self.config.rpc_listen)
        runner = web.AppRunner(self.rpc.app(self.config.max_body_bytes), access_log=None)
        await runner.setup()
        await web.TCPSite(runner, host, port).start()
        await self.network.start()
        log.info("node %s (%s): chain %s at height %d, RPC on http://%s:%d, P2P on %s", self.config.moniker,
                 format_address(self.key.address), self.chain.chain_id, self.chain.height, host, port,
                 self.config.p2p_listen)
        engine = asyncio.get_running_loop().create_task(self.engine.run())
        stopper = asyncio.get_running_loop().create_task(stop.wait())
        try:
            await asyncio.wait([engine, stopper], return_when=asyncio.FIRST_COMPLETED)
            if engine.done() and engine.exception():
                log.error("consensus stopped: %r", engine.exception())
        finally:
            stopper.cancel()
            log.info("shutting down")
            engine.cancel()
            await asyncio.gather(engine, return_exceptions=True)
            await self.network.stop()
            await runner.cleanup()
            self.chain.close()
            log.info("stopped at height %d", self.chain.height)


def run_node(home: Home) -> None:
    node = Node(home)

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await node.serve(stop)

    asyncio.run(main())
