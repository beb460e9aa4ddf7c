"""`stepchain devnet`: a local network of node processes on 127.0.0.1, and the `--demo` script.

The devnet owns its child processes: Ctrl-C (or SIGTERM) stops every node with SIGTERM,
waits for each to exit, and only then returns, so no node is left behind.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

from consensus.crypto import PrivateKey, format_address

from .client import Client, RpcError
from .home import Config, Home
from .init import REPO_GENESIS, dev_genesis, peer_string, read_template
from .wallet import Keystore

DEMO_PASSWORD = "stepchain-demo"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Devnet:
    def __init__(self, base: Path, validators: int = 1):
        if not 1 <= validators <= 16:
            raise ValueError("--validators must be between 1 and 16")
        self.base = base
        self.n = validators
        self.env = dict(os.environ, STEPCHAIN_PASSWORD=os.environ.get("STEPCHAIN_PASSWORD", DEMO_PASSWORD))
        self.homes = [base / f"node{i}" for i in range(validators)]
        self.procs: list[subprocess.Popen] = []

    @property
    def urls(self) -> list[str]:
        return [Home(h).config().rpc_url for h in self.homes]

    def init(self, block_interval_ms: int = 1000, idle_interval_ms: int = 3000) -> None:
        """Homes for N validators sharing one genesis; node0's keystore holds the funded `dev` key."""
        if all(Home(h).exists() for h in self.homes):
            return  # an existing devnet: resume it
        self.base.mkdir(parents=True, exist_ok=True)
        keys = [PrivateKey.generate() for _ in self.homes]
        p2p = [f"127.0.0.1:{_free_port()}" for _ in self.homes]
        dev = Keystore(Home(self.homes[0]).keystore_dir).create("dev", self.env["STEPCHAIN_PASSWORD"])
        genesis = dev_genesis(read_template(REPO_GENESIS), keys, [dev["address"]])
        for i, (path, key) in enumerate(zip(self.homes, keys)):
            home = Home(path)
            home.path.mkdir(parents=True, exist_ok=True)
            home.genesis_path.write_text(json.dumps(genesis, indent=2) + "\n")
            home.write_node_key(key)
            seeds = [peer_string(k, a) for j, (k, a) in enumerate(zip(keys, p2p)) if j != i]
            home.write_config(Config(moniker=f"node{i}", rpc_listen=f"127.0.0.1:{_free_port()}",
                                     p2p_listen=p2p[i], seeds=seeds, block_interval_ms=block_interval_ms,
                                     idle_interval_ms=idle_interval_ms))

    def start(self) -> None:
        for home in self.homes:
            log = open(home.parent / f"{home.name}.log", "a")
            self.procs.append(subprocess.Popen([sys.executable, "-m", "node.cli", "node", "run", "--home", str(home)],
                                               stdout=log, stderr=subprocess.STDOUT, env=self.env,
                                               start_new_session=True))
        for url in self.urls:
            _wait_rpc(Client(url))

    def stop(self) -> list[int]:
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        codes = []
        for p in self.procs:
            try:
                codes.append(p.wait(20))
            except subprocess.TimeoutExpired:
                p.kill()
                codes.append(p.wait())
        self.procs.clear()
        return codes


def _wait_rpc(client: Client, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            client.status()
            return
        except RpcError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


@contextmanager
def _sigterm_as_interrupt():
    previous = signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def follow_blocks(client: Client, until: float | None = None, start: int = 1) -> int:
    """Print one line per finalized block until `until` (monotonic) or forever."""
    height = start
    while until is None or time.monotonic() < until:
        tip = client.status()["height"]
        while height <= tip:
            b = client.get(f"/block/{height}")
            print(f"  block {b['height']:>5}  txs {b['num_txs']:>4}  hash {b['hash'][:16]}  "
                  f"app {b['app_hash'][:16]}  proposer {b['proposer'][:14]}…", flush=True)
            height += 1
        time.sleep(0.2)
    return height


def run_devnet(home: str | None, validators: int, demo: bool) -> int:
    base = Path(home) if home else Path(tempfile.mkdtemp(prefix="stepchain-devnet-"))
    net = Devnet(base, validators)
    if demo:  # faster blocks, so the demo's job moves through its windows quickly
        net.init(block_interval_ms=500, idle_interval_ms=1000)
    else:
        net.init()
    with _sigterm_as_interrupt():
        net.start()
        try:
            for h, url in zip(net.homes, net.urls):
                cfg = Home(h).config()
                key = Home(h).node_key()
                print(f"{cfg.moniker}: rpc {url}  p2p {peer_string(key, cfg.p2p_listen)}  home {h}", flush=True)
            if demo:
                from .demo import run_demo
                run_demo(net)
            else:
                print("following blocks; Ctrl-C stops every node", flush=True)
                follow_blocks(Client(net.urls[0]))
        except KeyboardInterrupt:
            print("\nstopping…", flush=True)
        finally:
            codes = net.stop()
    print(f"all {len(codes)} node(s) stopped (exit codes {codes})", flush=True)
    return 0 if all(c == 0 for c in codes) else 1


__all__ = ["Devnet", "run_devnet", "follow_blocks", "format_address"]
