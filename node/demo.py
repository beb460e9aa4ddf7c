"""`stepchain devnet --demo`: a scripted tour that drives the network as users would.

Each step runs the real CLI against the devnet and prints the command and its output.
Then a real training job runs end to end: two honest solvers, one dishonest solver (it
skips steps), a verifier and a whistleblower, all separate processes talking RPC to
different nodes. The cheater's dispute is a bisection game that ends in one referee step.
The demo's network plants a forced error in every shard (the genesis default is one in
five), so the whistleblower, which re-runs every interval, catches them and wins jackpots.
The demo ends with a summary of who was paid and who was slashed, the games and the
forced errors.
"""
from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from .client import Client
from .devnet import Devnet, follow_blocks

REPO = Path(__file__).resolve().parent.parent
JOB_SPEC = REPO / "examples" / "spirals.toml"
JOB_TIMEOUT_S = 420
DEMO_PARAMS = {"forced_error_ppm": 1_000_000}  # every shard carries a forced error, to show one
WORKERS = (  # (key, role, stake, extra CLI args)
    ("solver1", "solver", 1_000_000, []),
    ("solver2", "solver", 1_000_000, []),
    ("cheater", "solver", 4_000_000, ["--cheat", "skip-steps"]),
    ("verifier1", "verifier", 10_000_000, []),  # a drawn verifier locks 10x the reward
    ("verifier2", "verifier", 10_000_000, ["--whistleblower", "--check", "all"]),
)


def _run(net: Devnet, *args: str, show: bool = True) -> str:
    home = str(net.homes[0])
    if show:
        print(f"$ stepchain {' '.join(args)}", flush=True)
    proc = subprocess.run([sys.executable, "-m", "node.cli", *args, "--home", home], capture_output=True,
                          text=True, env=net.env)
    out = (proc.stdout + proc.stderr).strip()
    if show:
        print("  " + out.replace("\n", "\n  "), flush=True)
    if proc.returncode != 0:
        raise RuntimeError(f"demo step failed: stepchain {' '.join(args)}: {out}")
    return proc.stdout


def wallet_tour(net: Devnet) -> None:
    client = Client(net.urls[0])
    print("\n== a wallet, a transfer, stakes ==", flush=True)
    _run(net, "status")
    if "alice" not in _run(net, "wallet", "list"):
        _run(net, "wallet", "new", "alice")
    _run(net, "transfer", "--from", "dev", "--to", "alice", "--amount", "10000000")
    _run(net, "stake", "--from", "alice", "--role", "verifier", "--amount", "300000")
    _run(net, "unstake", "--from", "alice", "--role", "verifier", "--amount", "100000")
    _run(net, "balance", "alice")
    print("\n== blocks being finalized (3 s) ==", flush=True)
    tip = client.status()["height"]
    follow_blocks(client, until=time.monotonic() + 3, start=max(1, tip - 2))


def start_workers(net: Devnet) -> list[subprocess.Popen]:
    print("\n== solvers and verifiers stake and start ==", flush=True)
    names = _run(net, "wallet", "list", show=False)
    procs = []
    for i, (name, role, amount, extra) in enumerate(WORKERS):
        if name not in names:
            _run(net, "wallet", "new", name, show=False)
        _run(net, "transfer", "--from", "dev", "--to", name, "--amount", str(amount * 2), show=False)
        _run(net, "stake", "--from", name, "--role", role, "--amount", str(amount))
        url = net.urls[i % len(net.urls)]
        log = open(net.base / f"{name}.log", "a")
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "node.cli", role, "run", "--key", name, "--home", str(net.homes[0]),
             "--rpc", url, *extra], stdout=log, stderr=subprocess.STDOUT, env=net.env))
        print(f"  {name}: {role} {' '.join(extra)} via {url} (log {net.base / f'{name}.log'})", flush=True)
    return procs


def watch_job(net: Devnet, job_id: str) -> dict:
    client = Client(net.urls[0])
    seen, deadline = 0, time.monotonic() + JOB_TIMEOUT_S
    while True:
        job = client.get(f"/job/{job_id}")
        for h, kind, who, amount, note in job["events"][seen:]:
            print(f"  h{h:<5} {kind:<10} {_name(net, who):<10} {amount:>10}  {note}", flush=True)
        seen = len(job["events"])
        if job["status"] != "active":
            return job
        if time.monotonic() > deadline:
            raise RuntimeError(f"the job did not finish in {JOB_TIMEOUT_S}s; see the worker logs in {net.base}")
        time.sleep(1)


_NAMES: dict[str, str] = {}


def _name(net: Devnet, address: str | None) -> str:
    if not address:
        return "-"
    if not _NAMES:
        for row in json.loads(_run(net, "wallet", "list", "--json", show=False))["keys"]:
            _NAMES[row["address"]] = row["name"]
    return _NAMES.get(address, address[:10])


def summary(net: Devnet, job: dict, metric_line: str) -> None:
    paid: dict[str, int] = {}
    slashed: list[tuple[str, int, str]] = []
    for _h, kind, who, amount, note in job["events"]:
        if kind in ("paid", "rewarded"):
            paid[_name(net, who)] = paid.get(_name(net, who), 0) + amount
        elif kind == "slashed":
            slashed.append((_name(net, who), amount, note))
    print("\n== summary ==", flush=True)
    print(f"  job {job['id'][:16]}: {job['status']}, {job['spec']['rounds']} rounds x {job['spec']['shards']} shards, "
          f"model {job['spec']['model']}", flush=True)
    print(f"  {metric_line}", flush=True)
    print("  paid (job escrow, and slash shares to whoever proved a fault):", flush=True)
    for name, amount in sorted(paid.items()):
        print(f"    {name:<12} {amount:>10}", flush=True)
    print("  slashed:", flush=True)
    for name, amount, why in slashed or [("nobody", 0, "")]:
        print(f"    {name:<12} {amount:>10}  {why}", flush=True)
    games(net, job)
    forced_errors(net, job)


def games(net: Devnet, job: dict) -> None:
    """Each bisection game: its moves, the one step it ended on, and what the referees found."""
    print("  bisection games (a dispute narrowed to one step, then each referee runs that step):", flush=True)
    ended = [e for e in job["events"] if e[1] == "answer" and "one step left" in e[4]]
    moves = len([e for e in job["events"] if e[1] in ("answer", "midpoint")])
    for e in ended:
        print(f"    h{e[0]}: {_name(net, e[2])}'s challenge is down to {e[4].split(', ')[-1]}", flush=True)
    print(f"    {len(ended)} game(s), {moves} moves in all" if ended else "    none", flush=True)
    for line in _referee_lines(net)[:4]:
        print(f"    referee: {line}", flush=True)


def _referee_lines(net: Devnet) -> list[str]:
    lines = []
    for i in range(len(net.homes)):
        try:
            text = net.log_path(i).read_text()
        except OSError:
            continue
        lines += [f"node{i}: " + ln.split("stepchain.referee: ", 1)[1] for ln in text.splitlines()
                  if "stepchain.referee: dispute" in ln and "->" in ln]
    return lines


def forced_errors(net: Devnet, job: dict) -> None:
    print("  forced errors (planted by honest solvers; the first challenger wins the jackpot):", flush=True)
    revealed = [e for e in job["events"] if e[1] == "revealed" and "forced error" in e[4]]
    for e in revealed:
        print(f"    h{e[0]}: {_name(net, e[2])} revealed {e[4]}", flush=True)
    for e in [e for e in job["events"] if e[1] == "jackpot"]:
        print(f"    jackpot {e[3]} to {_name(net, e[2])} ({e[4]})", flush=True)
    if not revealed:
        print("    none", flush=True)


def wait_registered(net: Devnet, timeout_s: float = 120) -> None:
    """Until every worker has registered its secrets: a solver is assigned shards only then
    (its secrets decide each shard's forced error), so a late one would miss the job."""
    client, deadline = Client(net.urls[0]), time.monotonic() + timeout_s
    keys = json.loads(_run(net, "wallet", "list", "--json", show=False))["keys"]
    addrs = {row["name"]: row["address"] for row in keys}
    for name, role, _amount, _extra in WORKERS:
        while not client.account(addrs[name])["secrets"][role]:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{name} did not register its {role} secrets; see {net.base / f'{name}.log'}")
            time.sleep(0.5)


def job_tour(net: Devnet) -> None:
    procs = start_workers(net)
    try:
        wait_registered(net)
        print("\n== a training job ==", flush=True)
        out = json.loads(_run(net, "job", "submit", "--from", "dev", str(JOB_SPEC), "--json"))
        job = watch_job(net, out["job"])
        _run(net, "job", "status", out["job"])
        model = net.base / "model.pt"
        fetched = _run(net, "job", "fetch", out["job"], "--out", str(model))
        summary(net, job, fetched.strip().splitlines()[-1])
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


def run_demo(net: Devnet, keep: bool = False) -> None:
    wallet_tour(net)
    job_tour(net)
    if not keep:
        print("\ndemo done: stopping the network", flush=True)
