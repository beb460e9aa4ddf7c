"""A validator network on tests/netlab.py hosts, with load and a height monitor: what the
chaos scenarios (tests/chaos.py) run on.

``ChaosNet`` runs one validator per lab host. All P2P traffic goes through the lab's link
proxy: each node advertises its proxy address (``p2p_external``) and has the others' proxy
addresses as seeds, so PEX spreads only those. RPC listens on the host's address for the
harness. ``LoadGen`` offers pre-signed transfers at a fixed rate over the live nodes' RPC and
``HeightMonitor`` polls every node's height, so finality and recovery are measured from
outside, as a user sees them; the safety verdict comes from the stores (tests/safety.py).
"""
from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from benchmarks.network_throughput import fund_all
from benchmarks.tx_throughput import presign
from consensus.crypto import PrivateKey
from node.client import Client, RpcError
from node.home import Home
from node.init import peer_string
from tests.netlab import Lab, LinkSpec
from tests.nodes import NodeProcess, init_network

P2P_PORT, RPC_PORT = 26656, 26657
POLL_S = 0.05
IMPAIRED = LinkSpec(rate_mbit=100, delay_ms=50, jitter_ms=10, loss=0.01, rto_ms=200)


@dataclass(frozen=True)
class NetConfig:
    validators: int = 4
    link: LinkSpec = IMPAIRED
    block_interval_ms: int = 1000
    idle_interval_ms: int = 1000
    clock_offsets_ms: tuple[tuple[int, int], ...] = ()  # (validator index, offset)
    seed: int = 1


@dataclass(frozen=True)
class LoadPlan:
    """`rate` tx/s for up to `seconds`; a sender's next nonce comes `nonce_gap_s` later, so one
    slow tx rarely holds up the next of its sender."""
    rate: int
    seconds: float
    nonce_gap_s: float = 10.0

    @property
    def total(self) -> int:
        return int(self.rate * self.seconds)

    @property
    def senders(self) -> int:
        return max(1, min(self.total, int(self.rate * self.nonce_gap_s)))

    @property
    def per_sender(self) -> int:
        return -(-self.total // self.senders)


def process_cpu_s(pid: int) -> float:
    """CPU seconds (user + system) a live process has used; 0 when it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def machine_busy_s() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine since boot, all cores."""
    vals = [int(x) for x in Path("/proc/stat").read_text().split("\n")[0].split()[1:]]
    idle = vals[3] + (vals[4] if len(vals) > 4 else 0)
    tck = os.sysconf("SC_CLK_TCK")
    return (sum(vals) - idle) / tck, sum(vals) / tck


@contextlib.contextmanager
def shielded():
    """Ctrl-C, SIGTERM and alarms wait while cleanup runs (main thread only), so cleanup always
    finishes; they are delivered once it has."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    pending: list[int] = []
    sigs = (signal.SIGINT, signal.SIGTERM, signal.SIGALRM)
    old = {s: signal.signal(s, lambda signum, frame: pending.append(signum)) for s in sigs}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)
        for s in pending:
            signal.raise_signal(s)


class HeightMonitor(threading.Thread):
    """Polls every node's /status; remembers when each node first reported each height."""

    def __init__(self, nodes: list[NodeProcess]):
        super().__init__(daemon=True)
        self.urls = [n.url for n in nodes]
        self.reached: list[dict[int, float]] = [{} for _ in nodes]
        self.last = [0] * len(nodes)
        self.mempool: list[int | None] = [None] * len(nodes)
        self.stop_flag = threading.Event()
        self.lock = threading.Lock()

    def run(self) -> None:
        clients = [Client(u, timeout=2) for u in self.urls]
        while not self.stop_flag.is_set():
            for i, c in enumerate(clients):
                try:
                    s = c.status()
                except RpcError:
                    self.mempool[i] = None
                    continue
                self._record(i, s["height"], time.monotonic())
                self.mempool[i] = s["mempool_size"]
            self.stop_flag.wait(POLL_S)

    def _record(self, i: int, height: int, t: float) -> None:
        with self.lock:
            for h in range(self.last[i] + 1, height + 1):
                self.reached[i][h] = t
            self.last[i] = max(self.last[i], height)

    def stop(self) -> None:
        self.stop_flag.set()
        if self.is_alive():
            self.join(10)

    def height_at(self, i: int, t: float) -> int:
        with self.lock:
            return max((h for h, at in self.reached[i].items() if at <= t), default=0)

    def first_seen(self, h: int) -> float | None:
        """When the first node reported height h: the block was final from then on."""
        with self.lock:
            times = [r[h] for r in self.reached if h in r]
        return min(times) if times else None

    def all_reached(self, h: int, nodes) -> float | None:
        with self.lock:
            times = [self.reached[i].get(h) for i in nodes]
        return None if not times or None in times else max(times)


class LoadGen(threading.Thread):
    """Offers txs in ticks of 0.1 s, each batch to the next live node (a client fails over)."""

    def __init__(self, net: "ChaosNet", txs: list[str], rate: int, tick: float = 0.1):
        super().__init__(daemon=True)
        self.net, self.txs, self.tick = net, txs, tick
        self.per_tick = max(1, round(rate * tick))
        self.submitted: dict[str, float] = {}
        self.rejected = self.unsent = 0
        self.errors: list[str] = []
        self.stop_flag = threading.Event()
        self.started_at = self.ended_at = 0.0
        self._next = 0

    def run(self) -> None:
        self.started_at = time.monotonic()
        for k, i in enumerate(range(0, len(self.txs), self.per_tick)):
            if self.stop_flag.wait(max(0.0, self.started_at + k * self.tick - time.monotonic())):
                break
            self._submit(self.txs[i:i + self.per_tick])
        self.ended_at = time.monotonic()

    def _submit(self, batch: list[str]) -> None:
        n = len(self.net.nodes)
        for _ in range(n):
            with self.net.up_lock:
                i, self._next = self._next % n, self._next + 1
                if not self.net.up[i]:
                    continue
                t = time.monotonic()
                try:
                    res = Client(self.net.nodes[i].url, timeout=10).post("/broadcast_txs", {"txs": batch})
                except RpcError as exc:
                    self.errors.append(f"node{i}: {exc}"[:200])
                    continue
            for r in res["results"]:
                if "hash" in r:
                    self.submitted[r["hash"]] = t
                else:
                    self.rejected += 1
            return
        self.unsent += len(batch)

    def stop(self) -> None:
        self.stop_flag.set()
        if self.is_alive():
            self.join(30)


class ChaosNet:
    """Validators on lab hosts, their load and their monitor; everything stopped on exit."""

    def __init__(self, base: Path, cfg: NetConfig = NetConfig(), load: LoadPlan | None = None):
        self.base, self.cfg, self.plan = Path(base), cfg, load
        self.nodes: list[NodeProcess] = []
        self.up: list[bool] = []
        self.up_lock = threading.Lock()
        self.events: list[dict] = []
        self.monitor: HeightMonitor | None = None
        self.load: LoadGen | None = None
        self.txs: list[str] = []
        self.cpu_dead: list[float] = []  # CPU seconds of node processes that were killed
        self._stack = contextlib.ExitStack()

    def __enter__(self) -> "ChaosNet":
        try:
            self._open()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        with shielded():
            self._stack.close()

    def _open(self) -> None:
        cfg = self.cfg
        self.lab = self._stack.enter_context(Lab(cfg.validators, cfg.link, forward=(P2P_PORT,), seed=cfg.seed))
        self.nodes = init_network(self.base, cfg.validators, cfg.block_interval_ms, cfg.idle_interval_ms)
        keys = [PrivateKey.generate() for _ in range(self.plan.senders)] if self.plan else []
        if keys:
            fund_all(self.nodes, keys)
        self._configure()
        self._stack.callback(self.stop_nodes)
        for n in self.nodes:
            n.start(wait=False)
        for n in self.nodes:
            n.wait_rpc(60)
        self.up = [True] * len(self.nodes)
        self.cpu_dead = [0.0] * len(self.nodes)
        self.chain_id = self.nodes[0].rpc.status()["chain_id"]
        self._wait_mesh()
        self.monitor = HeightMonitor(self.nodes)
        self.monitor.start()
        self._stack.callback(self.monitor.stop)
        if keys:
            self.txs = presign(keys, self.plan.per_sender, self.chain_id)[:self.plan.total]
        self.t0 = time.monotonic()
        self.wall0 = time.time()

    def _configure(self) -> None:
        """Addresses for the lab: listen on the host, advertise the proxy, seed the proxies."""
        offsets = dict(self.cfg.clock_offsets_ms)
        keys = [Home(n.home).node_key() for n in self.nodes]
        for i, (n, host) in enumerate(zip(self.nodes, self.lab.hosts)):
            home = Home(n.home)
            c = home.config()
            c.p2p_listen, c.rpc_listen = f"{host.ip}:{P2P_PORT}", f"{host.ip}:{RPC_PORT}"
            c.p2p_external = self.lab.addr(i, P2P_PORT)
            c.seeds = [peer_string(k, self.lab.addr(j, P2P_PORT)) for j, k in enumerate(keys) if j != i]
            c.clock_offset_ms = offsets.get(i, 0)
            home.write_config(c)
            n.host, n.rpc_port, n.prefix = host.ip, RPC_PORT, host.prefix

    def _wait_mesh(self, timeout: float = 60) -> None:
        """Every node has every other as a peer, known only by its proxy address."""
        proxies = {self.lab.addr(i, P2P_PORT) for i in range(len(self.nodes))}
        deadline = time.monotonic() + timeout
        while True:
            peers = [n.rpc.get("/peers")["peers"] for n in self.nodes]
            if all(len(p) == len(self.nodes) - 1 for p in peers):
                direct = [p["listen"] for ps in peers for p in ps if p["listen"] not in proxies]
                if direct:
                    raise AssertionError(f"peers known by a non-proxy address: {direct}")
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"mesh incomplete after {timeout}s: {[len(p) for p in peers]} peers")
            time.sleep(0.2)

    # -- actions --------------------------------------------------------------------------

    def mark(self, kind: str, expect: list[int], t: float | None = None, **detail) -> dict:
        ev = {"event": kind, "t": time.monotonic() if t is None else t, "expect": expect, **detail}
        self.events.append(ev)
        return ev

    def start_load(self) -> None:
        self.load = LoadGen(self, self.txs, self.plan.rate)
        self._busy0 = machine_busy_s()
        self.load.start()
        self._stack.callback(self.load.stop)

    def busy_under_load(self) -> float:
        """How busy the whole machine was (all cores, % of them) while the load ran."""
        (b0, t0), (b1, t1) = self._busy0, machine_busy_s()
        return round(100 * (b1 - b0) / max(1e-9, t1 - t0), 1)

    def stop_load(self) -> None:
        if self.load is not None:
            self.load.stop()

    def kill(self, i: int) -> None:
        """kill -9 validator i (clients move to other nodes first, as a load balancer would)."""
        with self.up_lock:
            self.up[i] = False
        time.sleep(0.3)  # what it accepted last has left for its peers
        self.cpu_dead[i] += process_cpu_s(self.nodes[i].proc.pid)
        self.nodes[i].kill()
        self.mark("kill", [j for j in range(len(self.nodes)) if self.up[j]], node=i)

    def restart(self, i: int) -> None:
        t = time.monotonic()
        self.nodes[i].start(wait=False)
        self.nodes[i].wait_rpc(60)
        self.mark("restart", list(range(len(self.nodes))), t=t, node=i)
        with self.up_lock:
            self.up[i] = True

    def partition(self, groups: list[list[int]], mode: str = "blackhole") -> None:
        n = len(self.nodes)
        quorum = [g for g in groups if 3 * len(g) > 2 * n]  # equal stakes: 2/3+ of the hosts
        self.lab.partition(groups, mode)
        self.mark("partition", quorum[0] if quorum else [], groups=groups, mode=mode)

    def heal(self) -> None:
        self.lab.heal()
        self.mark("heal", list(range(len(self.nodes))))

    def live(self) -> list[int]:
        return [i for i, u in enumerate(self.up) if u]

    def wait_progress(self, timeout: float, nodes: list[int] | None = None) -> float | None:
        """Seconds until every given node (default: the live ones) is past today's top height."""
        nodes = self.live() if nodes is None else nodes
        start = time.monotonic()
        target = max(self.monitor.last) + 1
        while time.monotonic() - start < timeout:
            at = self.monitor.all_reached(target, nodes)
            if at is not None:
                return at - start
            time.sleep(POLL_S)
        return None

    def drain(self, timeout: float) -> bool:
        """Wait until every live node's mempool is empty and all are at one height."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            live = self.live()
            pools = [self.monitor.mempool[i] for i in live]
            if all(p == 0 for p in pools) and len({self.monitor.last[i] for i in live}) == 1:
                return True
            time.sleep(0.2)
        return False

    def cpu(self) -> dict:
        """CPU seconds used so far by each node (restarts included) and by the link proxy."""
        nodes = [d + (process_cpu_s(n.proc.pid) if n.proc else 0.0) for d, n in zip(self.cpu_dead, self.nodes)]
        return {"nodes_s": [round(x, 1) for x in nodes], "proxy_s": round(process_cpu_s(self.lab.proxy.pid), 1)}

    def stop_nodes(self) -> list[int | None]:
        """SIGTERM every running node (SIGKILL if it hangs); their exit codes."""
        codes = []
        for n in self.nodes:
            try:
                codes.append(n.stop(timeout=20))
            except subprocess.TimeoutExpired:
                n.kill()
                codes.append(None)
        return codes
