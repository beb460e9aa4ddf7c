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

from consensus.crypto import format_address

from .client import Client, RpcError

DEMO_PASSWORD = "stepchain-demo"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stepchain(*args: str, env: dict) -> dict:
    proc = subprocess.run([sys.executable, "-m", "node.cli", *args, "--json"], capture_output=True,
                          text=True, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"stepchain {' '.join(args)}: {proc.stderr.strip()}")
    return json.loads(proc.stdout)


class Devnet:
    def __init__(self, base: Path, validators: int = 1):
        if validators != 1:
            raise ValueError("this build runs single-validator devnets only (--validators 1)")
        self.base = base
        self.env = dict(os.environ, STEPCHAIN_PASSWORD=os.environ.get("STEPCHAIN_PASSWORD", DEMO_PASSWORD))
        self.homes: list[Path] = []
        self.procs: list[subprocess.Popen] = []
        self.urls: list[str] = []

    def init(self) -> None:
        home = self.base / "node0"
        if not (home / "config.toml").exists():
            rpc = _free_port()
            _stepchain("init", "--home", str(home), "--dev", "--rpc-port", str(rpc),
                       "--p2p-port", str(_free_port()), "--moniker", "node0", env=self.env)
        cfg = (home / "config.toml").read_text()
        rpc_listen = next(line.split("=")[1].strip().strip('"') for line in cfg.splitlines()
                          if line.startswith("rpc_listen"))
        self.homes.append(home)
        self.urls.append(f"http://{rpc_listen}")

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
    net.init()
    with _sigterm_as_interrupt():
        net.start()
        try:
            for i, (h, url) in enumerate(zip(net.homes, net.urls)):
                print(f"node{i}: home {h}  rpc {url}", flush=True)
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
