"""`stepchain devnet --demo`: a short scripted tour that drives the network as a user would.

Each step runs the real CLI against the devnet and prints the command and its output.
"""
from __future__ import annotations

import subprocess
import sys
import time

from .client import Client
from .devnet import Devnet, follow_blocks


def _run(net: Devnet, *args: str) -> str:
    home = str(net.homes[0])
    print(f"$ stepchain {' '.join(args)}", flush=True)
    proc = subprocess.run([sys.executable, "-m", "node.cli", *args, "--home", home], capture_output=True,
                          text=True, env=net.env)
    out = (proc.stdout + proc.stderr).strip()
    print("  " + out.replace("\n", "\n  "), flush=True)
    if proc.returncode != 0:
        raise RuntimeError(f"demo step failed: stepchain {' '.join(args)}")
    return proc.stdout


def run_demo(net: Devnet) -> None:
    client = Client(net.urls[0])
    print("\n== a wallet, a transfer, stakes ==", flush=True)
    _run(net, "status")
    if "alice" not in _run(net, "wallet", "list"):
        _run(net, "wallet", "new", "alice")
    _run(net, "transfer", "--from", "dev", "--to", "alice", "--amount", "1000000")
    _run(net, "stake", "--from", "alice", "--role", "solver", "--amount", "300000")
    _run(net, "stake", "--from", "alice", "--role", "verifier", "--amount", "200000")
    _run(net, "unstake", "--from", "alice", "--role", "solver", "--amount", "100000")
    _run(net, "balance", "alice")
    print("\n== blocks being produced (5 s) ==", flush=True)
    tip = client.status()["height"]
    follow_blocks(client, until=time.monotonic() + 5, start=max(1, tip - 2))
    _run(net, "status")
    print("\ndemo done: stopping the network", flush=True)
