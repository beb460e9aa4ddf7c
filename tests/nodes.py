"""Shared helper for end-to-end tests: real `stepchain` processes on 127.0.0.1, driven by the CLI.

In the spirit of Bitcoin Core's functional tests: every test that needs a node uses this,
never its own copy of process handling.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from node.client import Client, RpcError

PASSWORD = "test-password"
STEPCHAIN = [sys.executable, "-m", "node.cli"]
REPO = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def env() -> dict:
    e = dict(os.environ, STEPCHAIN_PASSWORD=PASSWORD, PYTHONUNBUFFERED="1")
    e["PYTHONPATH"] = str(REPO) + os.pathsep + e.get("PYTHONPATH", "")
    return e


def run_cli(*args: str, check: bool = True, input: str | None = None, extra_env: dict | None = None,
            timeout: float = 120) -> subprocess.CompletedProcess:
    proc = subprocess.run([*STEPCHAIN, *args], capture_output=True, text=True, input=input,
                          env=dict(env(), **(extra_env or {})), timeout=timeout, cwd=REPO)
    if check and proc.returncode != 0:
        raise AssertionError(f"stepchain {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr}")
    return proc


class NodeProcess:
    """One node home and, while running, its process."""

    def __init__(self, home: Path, rpc_port: int):
        self.home = Path(home)
        self.rpc_port = rpc_port
        self.proc: subprocess.Popen | None = None
        self.log_path = self.home.parent / f"{self.home.name}.log"

    @classmethod
    def init_dev(cls, base: Path, name: str = "node0", block_interval_ms: int = 200,
                 idle_interval_ms: int = 500) -> "NodeProcess":
        rpc_port = free_port()
        home = Path(base) / name
        run_cli("init", "--home", str(home), "--dev", "--rpc-port", str(rpc_port), "--p2p-port", str(free_port()))
        cfg = home / "config.toml"
        text = cfg.read_text()
        text = text.replace("block_interval_ms = 1000", f"block_interval_ms = {block_interval_ms}")
        text = text.replace("idle_interval_ms = 3000", f"idle_interval_ms = {idle_interval_ms}")
        cfg.write_text(text)
        return cls(home, rpc_port)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.rpc_port}"

    @property
    def rpc(self) -> Client:
        return Client(self.url, timeout=30)

    def start(self, wait: bool = True) -> "NodeProcess":
        log = open(self.log_path, "a")
        self.proc = subprocess.Popen([*STEPCHAIN, "node", "run", "--home", str(self.home)], stdout=log,
                                     stderr=subprocess.STDOUT, env=env(), cwd=REPO)
        log.close()
        if wait:
            self.wait_rpc()
        return self

    def wait_rpc(self, timeout: float = 30) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"node exited with {self.proc.returncode}:\n{self.log()}")
            try:
                return self.rpc.status()
            except RpcError:
                if time.monotonic() > deadline:
                    raise AssertionError(f"node RPC did not come up:\n{self.log()}") from None
                time.sleep(0.1)

    def wait_height(self, height: int, timeout: float = 60) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            status = self.rpc.status()
            if status["height"] >= height:
                return status
            if time.monotonic() > deadline:
                raise AssertionError(f"height {height} not reached (at {status['height']}):\n{self.log()}")
            time.sleep(0.1)

    def stop(self, timeout: float = 20) -> int:
        """SIGTERM and wait: a clean stop returns 0."""
        if self.proc is None:
            return 0
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout)
        self.proc = None
        return code

    def kill(self) -> None:
        """SIGKILL: a crash, no chance to clean up."""
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(10)
            self.proc = None

    def cli(self, *args: str, check: bool = True, json_out: bool = True, **kw):
        """Run `stepchain ARGS --home HOME [--json]`; parse JSON output when asked."""
        full = [*args, "--home", str(self.home)] + (["--json"] if json_out else [])
        proc = run_cli(*full, check=check, **kw)
        if json_out and check:
            return json.loads(proc.stdout)
        return proc

    def log(self) -> str:
        return self.log_path.read_text()[-5000:] if self.log_path.exists() else ""
