"""`stepchain devnet`: a local network of node processes on 127.0.0.1, and the `--demo` script.

The devnet owns its child processes: Ctrl-C (or SIGTERM) stops every node with SIGTERM,
waits for each to exit, and only then returns, so no node is left behind. A watcher thread
notices a node that exits on its own; the devnet then stops the others and fails with
``NodeExited``, naming the node, its exit code and the last line of its log.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from pathlib import Path

from consensus.crypto import PrivateKey, format_address
from p2p.netaddr import free_local_port

from .client import Client, RpcError
from .home import Config, Home
from .init import REPO_GENESIS, dev_genesis, peer_string, read_template
from .wallet import Keystore

DEMO_PASSWORD = "stepchain-demo"
STOP_TIMEOUT_S = 15
WATCH_S = 0.2


class NodeExited(RuntimeError):
    """A devnet node exited while the devnet was running it."""


def _free_port() -> int:
    return free_local_port()


class Devnet:
    def __init__(self, base: Path, validators: int = 1):
        if not 1 <= validators <= 16:
            raise ValueError("--validators must be between 1 and 16")
        self.base = base
        self.n = validators
        self.env = dict(os.environ, STEPCHAIN_PASSWORD=os.environ.get("STEPCHAIN_PASSWORD", DEMO_PASSWORD))
        self.homes = [base / f"node{i}" for i in range(validators)]
        self.procs: list[subprocess.Popen] = []
        self.failure: NodeExited | None = None
        self._stopping = False
        self._lock = threading.Lock()

    @property
    def urls(self) -> list[str]:
        return [Home(h).config().rpc_url for h in self.homes]

    def init(self, block_interval_ms: int = 1000, idle_interval_ms: int = 3000, params: dict | None = None) -> None:
        """Homes for N validators sharing one genesis (`params` override the template's);
        node0's keystore holds the funded `dev` key."""
        if all(Home(h).exists() for h in self.homes):
            return  # an existing devnet: resume it
        self.base.mkdir(parents=True, exist_ok=True)
        keys = [PrivateKey.generate() for _ in self.homes]
        p2p = [f"127.0.0.1:{_free_port()}" for _ in self.homes]
        dev = Keystore(Home(self.homes[0]).keystore_dir).create("dev", self.env["STEPCHAIN_PASSWORD"])
        template = read_template(REPO_GENESIS)
        template["params"] = {**template.get("params", {}), **(params or {})}
        genesis = dev_genesis(template, keys, [dev["address"]])
        for i, (path, key) in enumerate(zip(self.homes, keys)):
            home = Home(path)
            home.path.mkdir(parents=True, exist_ok=True)
            home.genesis_path.write_text(json.dumps(genesis, indent=2) + "\n")
            home.write_node_key(key)
            seeds = [peer_string(k, a) for j, (k, a) in enumerate(zip(keys, p2p)) if j != i]
            home.write_config(Config(moniker=f"node{i}", rpc_listen=f"127.0.0.1:{_free_port()}",
                                     p2p_listen=p2p[i], seeds=seeds, block_interval_ms=block_interval_ms,
                                     idle_interval_ms=idle_interval_ms))

    def log_path(self, i: int) -> Path:
        return self.homes[i].parent / f"{self.homes[i].name}.log"

    def start(self) -> None:
        """Start every node, and the watcher; wait for their RPC (a KeyboardInterrupt from the
        watcher ends the wait if a node dies meanwhile)."""
        for i, home in enumerate(self.homes):
            with open(self.log_path(i), "a") as log:
                self.procs.append(subprocess.Popen(
                    [sys.executable, "-m", "node.cli", "node", "run", "--home", str(home)],
                    stdout=log, stderr=subprocess.STDOUT, env=self.env, start_new_session=True))
        threading.Thread(target=self._watch, name="devnet-watch", daemon=True).start()
        for url in self.urls:
            _wait_rpc(Client(url))

    def _watch(self) -> None:
        """Until stop(): a node that exits on its own is recorded and interrupts the main thread
        (which may be waiting on anything: an RPC, a CLI command, a sleep)."""
        while True:
            time.sleep(WATCH_S)
            with self._lock:
                if self._stopping:
                    return
                if self._record_exit():
                    self._stopping = True
                    signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)
                    return

    def _record_exit(self) -> bool:
        for i, p in enumerate(self.procs):
            if p.poll() is not None and self.failure is None:
                self.failure = NodeExited(f"node{i} exited on its own with exit code {p.returncode}; "
                                          f"{_log_tail(self.log_path(i))}")
        return self.failure is not None

    def stop(self) -> list[int]:
        """SIGTERM every node still running and wait for all; a node that had already exited
        by itself is recorded in `failure` first."""
        with self._lock:
            if not self._stopping:
                self._record_exit()
            self._stopping = True
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        codes = []
        for p in self.procs:
            try:
                codes.append(p.wait(STOP_TIMEOUT_S))
            except subprocess.TimeoutExpired:
                p.kill()
                codes.append(p.wait())
        self.procs.clear()
        return codes

    def stop_despite_interrupts(self) -> list[int]:
        """stop(), carried on through a Ctrl-C or the watcher's interrupt arriving meanwhile."""
        while True:
            try:
                return self.stop()
            except KeyboardInterrupt:
                continue


def _log_tail(path: Path) -> str:
    """What a node's log says last: its last error line (if one is near the end) and its last line."""
    try:
        with open(path, "rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - 16384))
            lines = [ln.strip() for ln in f.read().decode(errors="replace").splitlines() if ln.strip()]
    except OSError as exc:
        return f"(cannot read {path}: {exc.strerror})"
    if not lines:
        return "(empty log)"
    errors = [ln for ln in lines if len(ln.split(" ", 3)) > 2 and ln.split(" ", 3)[2] in ("ERROR", "CRITICAL")]
    if errors and errors[-1] != lines[-1]:
        return f"last error: {errors[-1]}; last log line: {lines[-1]}"
    return f"last log line: {lines[-1]}"


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


def run_devnet(home: str | None, validators: int, demo: bool, keep: bool = False) -> int:
    """Run the devnet until Ctrl-C/SIGTERM (0 when every node stopped cleanly), or until a
    node exits by itself (raises NodeExited, after stopping the others). A demo stops the
    network when it is done, unless `keep`: then it stays up until Ctrl-C/SIGTERM."""
    base = Path(home) if home else Path(tempfile.mkdtemp(prefix="stepchain-devnet-"))
    net = Devnet(base, validators)
    if demo:  # faster blocks, so the demo's job moves through its windows quickly
        from .demo import DEMO_PARAMS
        net.init(block_interval_ms=500, idle_interval_ms=1000, params=DEMO_PARAMS)
    else:
        net.init()
    error: Exception | None = None
    with _sigterm_as_interrupt():
        try:
            _session(net, demo, keep)
        except KeyboardInterrupt:
            if net.failure is None:
                print("\nstopping…", flush=True)
        except Exception as exc:  # noqa: BLE001 - reported below, unless a dead node explains it
            error = exc
        finally:
            codes = net.stop_despite_interrupts()
    print(f"all {len(codes)} node(s) stopped (exit codes {codes})", flush=True)
    if net.failure is not None:
        raise net.failure
    if error is not None:
        raise error
    return 0 if all(c == 0 for c in codes) else 1


def _session(net: Devnet, demo: bool, keep: bool = False) -> None:
    net.start()
    for h, url in zip(net.homes, net.urls):
        cfg = Home(h).config()
        key = Home(h).node_key()
        print(f"{cfg.moniker}: rpc {url}  p2p {peer_string(key, cfg.p2p_listen)}  home {h}", flush=True)
    print(f"explorer: {net.urls[0]}/  (open it in a browser; every node serves one)", flush=True)
    if demo:
        from .demo import run_demo
        run_demo(net, keep)
    if demo and keep:
        print(f"demo done: the network stays up; explorer: {net.urls[0]}/  Ctrl-C stops every node", flush=True)
        follow_blocks(Client(net.urls[0]), start=Client(net.urls[0]).status()["height"] + 1)
    elif not demo:
        print("following blocks; Ctrl-C stops every node", flush=True)
        follow_blocks(Client(net.urls[0]))


__all__ = ["Devnet", "NodeExited", "run_devnet", "follow_blocks", "format_address"]
