"""Shared helper for end-to-end tests: real `stepchain` processes on 127.0.0.1, driven by the CLI.

In the spirit of Bitcoin Core's functional tests: every test that needs a node uses this,
never its own copy of process handling.

Every process started here is registered (``spawn``) in its own process group, and
``kill_started`` kills every one still running, with whatever it started: tests/conftest.py
calls it after each test, and it runs at exit for benchmarks and scripts, so a failing test
or a crashed benchmark never leaves a node behind.
"""
from __future__ import annotations

import atexit
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from node.client import Client, RpcError
from p2p.netaddr import free_local_port

PASSWORD = "test-password"
STEPCHAIN = [sys.executable, "-m", "node.cli"]
REPO = Path(__file__).resolve().parent.parent


_STARTED: list[subprocess.Popen] = []  # every process spawn() started, until kill_started() reaps it
_ROOTS: dict[str, int] = {}  # directory -> its registration mark: its processes die with the test (a devnet's nodes)


def spawn(argv: list[str], log_path: Path, extra_env: dict | None = None,
          owns: Path | None = None) -> subprocess.Popen:
    """Start a child in its own process group, output appended to log_path, and register it.
    `owns`: a directory; any process whose command line names it is killed with the child."""
    if owns is not None:
        _ROOTS.setdefault(str(Path(owns).resolve()), len(_STARTED))
    with open(log_path, "a") as log:
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=dict(env(), **(extra_env or {})),
                                cwd=REPO, start_new_session=True)
    _STARTED.append(proc)
    return proc


def kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL a process we started and its process group (whatever it started), then reap it."""
    if proc.poll() is None:  # not reaped yet, so its pid (the group's id) cannot have been reused
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        print(f"process {proc.pid} did not die after SIGKILL", file=sys.stderr)


def _pids_naming(roots) -> list[int]:
    """Our user's processes whose command line names one of `roots` (Linux /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if entry.stat().st_uid != os.getuid():
                continue
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if any(root in cmdline for root in roots):
            found.append(int(entry.name))
    return found


def started_mark() -> int:
    """A mark for kill_started: processes registered from now on."""
    return len(_STARTED)


def kill_started(since: int = 0) -> list[int]:
    """Kill every process registered since the mark that is still running (all by default),
    and every process whose command line names a directory registered since then; the pids
    that were still running."""
    alive = []
    while len(_STARTED) > since:
        proc = _STARTED.pop()
        if proc.poll() is None:
            alive.append(proc.pid)
        kill_group(proc)
    roots = {root for root, mark in _ROOTS.items() if mark >= since}
    if roots:
        for pid in _pids_naming(roots):
            try:
                os.kill(pid, signal.SIGKILL)
                alive.append(pid)
            except ProcessLookupError:
                pass
        for root in roots:
            del _ROOTS[root]
    return alive


atexit.register(kill_started)


def free_port() -> int:
    return free_local_port()


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
    """One node home and, while running, its process. `prefix` goes before the command (e.g.
    `ip netns exec NS` to run it on a tests/netlab.py host); `host` is where its RPC listens."""

    def __init__(self, home: Path, rpc_port: int, host: str = "127.0.0.1", prefix: tuple[str, ...] = ()):
        self.home = Path(home)
        self.rpc_port = rpc_port
        self.host = host
        self.prefix = tuple(prefix)
        self.proc: subprocess.Popen | None = None
        self.stop_seconds: float | None = None
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
        return f"http://{self.host}:{self.rpc_port}"

    @property
    def rpc(self) -> Client:
        return Client(self.url, timeout=30)

    def http(self, method: str, path: str, data: bytes | None = None,
             content_type: str = "application/json", timeout: float = 30) -> tuple[int, bytes]:
        """One raw HTTP request to the RPC, no client-side checks: (status, body), errors included."""
        req = urllib.request.Request(self.url + path, data=data, method=method,
                                     headers={"Content-Type": content_type} if data is not None else {})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                return resp.status, resp.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()

    def start(self, wait: bool = True, extra: tuple[str, ...] = ()) -> "NodeProcess":
        """`stepchain node run` (with `extra` arguments, e.g. --log-format json)."""
        self.proc = spawn([*self.prefix, *STEPCHAIN, "node", "run", "--home", str(self.home), *extra], self.log_path)
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

    def stop(self, timeout: float = 20, sig: int = signal.SIGTERM) -> int:
        """SIGTERM (or `sig`) and wait: a clean stop returns 0. The seconds from the signal to
        the exit are kept in `stop_seconds`. A node still running after `timeout` is killed
        and the test fails."""
        if self.proc is None:
            return 0
        started = time.monotonic()
        self.proc.send_signal(sig)
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            kill_group(self.proc)
            self.proc = None
            raise AssertionError(f"node did not stop within {timeout} s of signal {sig}:\n{self.log()}") from None
        self.stop_seconds = time.monotonic() - started
        self.proc = None
        return code

    def wait_exit(self, timeout: float = 30) -> int:
        """Wait for a node that should exit by itself; kill it (and fail) if it does not."""
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            kill_group(self.proc)
            raise AssertionError(f"node still running after {timeout} s:\n{self.log()}") from None
        finally:
            self.proc = None
        return code

    def kill(self) -> None:
        """SIGKILL: a crash, no chance to clean up."""
        if self.proc is not None:
            kill_group(self.proc)
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


def node_from_home(home: Path) -> NodeProcess:
    from node.home import Home, split_hostport
    host, port = split_hostport(Home(home).config().rpc_listen)
    return NodeProcess(Path(home), port, host)


def init_network(base: Path, validators: int, block_interval_ms: int = 300,
                 idle_interval_ms: int = 600) -> list[NodeProcess]:
    """Homes for a local network of validators sharing one genesis (as `stepchain devnet`
    makes them); node0's keystore holds the funded `dev` key."""
    from node.devnet import Devnet
    os.environ.setdefault("STEPCHAIN_PASSWORD", PASSWORD)
    net = Devnet(Path(base), validators)
    net.env["STEPCHAIN_PASSWORD"] = PASSWORD
    net.init(block_interval_ms=block_interval_ms, idle_interval_ms=idle_interval_ms)
    return [node_from_home(h) for h in net.homes]


def init_full_node(base: Path, name: str, genesis: Path, seeds: list[str]) -> NodeProcess:
    """A non-validator home that joins an existing network through `stepchain init --genesis --seeds`."""
    rpc_port = free_port()
    home = Path(base) / name
    run_cli("init", "--home", str(home), "--genesis", str(genesis), "--seeds", ",".join(seeds),
            "--rpc-port", str(rpc_port), "--p2p-port", str(free_port()), "--moniker", name)
    return NodeProcess(home, rpc_port)


def p2p_id(node: NodeProcess) -> str:
    from node.home import Home
    from node.init import peer_string
    home = Home(node.home)
    return peer_string(home.node_key(), home.config().p2p_listen)


def stop_all(nodes: list[NodeProcess], timeout: float = 20) -> list[int | None]:
    """Stop every node that is running, whatever happens to the others (a node that does not
    stop is killed by stop()); the exit codes, None for a node that had to be killed."""
    codes: list[int | None] = []
    for n in nodes:
        try:
            codes.append(n.stop(timeout))
        except AssertionError:
            codes.append(None)
    return codes


@contextlib.contextmanager
def running_network(base: Path, validators: int = 4, block_interval_ms: int = 200, idle_interval_ms: int = 400,
                    height: int = 2):
    """A local validator network, started and past `height`; every node is stopped (or killed)
    when the block ends, however it ends."""
    nodes = init_network(base, validators, block_interval_ms=block_interval_ms, idle_interval_ms=idle_interval_ms)
    try:
        for n in nodes:
            n.start()
        wait_all(nodes, height, timeout=60)
        yield nodes
    finally:
        stop_all(nodes)


def wait_all(nodes: list[NodeProcess], height: int, timeout: float = 60) -> None:
    for n in nodes:
        n.wait_height(height, timeout)


def block_hashes(node: NodeProcess, upto: int) -> list[tuple[str, str]]:
    """(block hash, app hash) for heights 1..upto."""
    out = []
    for h in range(1, upto + 1):
        b = node.rpc.get(f"/block/{h}")
        out.append((b["hash"], b["app_hash"]))
    return out


def set_genesis_params(nodes: list[NodeProcess], **params) -> None:
    """Change genesis parameters in every home of a network that has not started yet."""
    for n in nodes:
        path = n.home / "genesis.json"
        g = json.loads(path.read_text())
        g.setdefault("params", {}).update(params)
        path.write_text(json.dumps(g, indent=2))


def start_worker(node: NodeProcess, role: str, key: str, *extra: str, url: str | None = None) -> subprocess.Popen:
    """`stepchain solver|verifier run --key KEY` against a node, logging beside its home."""
    return spawn([*STEPCHAIN, role, "run", "--key", key, "--home", str(node.home), "--rpc", url or node.url,
                  *extra], node.home.parent / f"{role}-{key}.log")


def new_funded_key(node: NodeProcess, name: str, amount: int) -> str:
    """A new keystore key in node's home, funded from `dev`; returns its address."""
    addr = node.cli("wallet", "new", name)["address"]
    node.cli("transfer", "--from", "dev", "--to", addr, "--amount", str(amount))
    return addr


def pids_naming(path: Path) -> list[int]:
    """Our processes whose command line names `path` (e.g. the nodes of a devnet there)."""
    return _pids_naming([str(Path(path).resolve())])


class DevnetProcess:
    """`stepchain devnet --home BASE ARGS` as a child process, read through its log. Its nodes
    name BASE on their command lines, so kill_started kills them with it."""

    def __init__(self, base: Path, *args: str):
        self.base = Path(base).resolve()
        self.args = args
        self.log_path = self.base.parent / f"{self.base.name}.log"
        self.proc: subprocess.Popen | None = None

    def start(self) -> "DevnetProcess":
        self.proc = spawn([*STEPCHAIN, "devnet", "--home", str(self.base), *self.args], self.log_path,
                          owns=self.base)
        return self

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def wait_line(self, text: str, timeout: float) -> str:
        """The first line of its output that contains `text`; fails if it exits or times out first."""
        deadline = time.monotonic() + timeout
        while True:
            line = next((ln for ln in self.log().splitlines() if text in ln), None)
            if line is not None:
                return line
            if self.proc.poll() is not None:
                raise AssertionError(f"devnet exited ({self.proc.returncode}) before {text!r}:\n{self.log()[-5000:]}")
            if time.monotonic() > deadline:
                raise AssertionError(f"no {text!r} from the devnet within {timeout} s:\n{self.log()[-5000:]}")
            time.sleep(0.5)

    def interrupt(self, timeout: float = 60) -> int:
        """Ctrl-C, as a person would press it: the exit code (killed, and the test fails, if it hangs)."""
        self.proc.send_signal(signal.SIGINT)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            kill_group(self.proc)
            raise AssertionError(f"devnet did not stop within {timeout} s of Ctrl-C:\n{self.log()[-5000:]}") from None
