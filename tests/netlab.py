"""A network lab for tests and benchmarks: hosts in Linux network namespaces, shaped links.

``Lab(n)`` makes n hosts, each a network namespace with one veth link to a bridge in the
root namespace (10.213.N.0/24: the bridge is .1, host i is .10+i). Bridge ports are isolated,
so hosts reach only the root namespace: the harness (RPC) and the link proxy
(tests/linkproxy.py), which forwards every host-to-host connection and there applies
partitions and, where the kernel has no netem, delay, jitter and loss. With netem, those come
from netem on each host's outgoing link instead (the probe decides, never an assumption).
Bandwidth is shaped with tbf on both ends of each veth (host uplink and downlink).

Everything a lab makes is named from a per-process prefix (namespaces ``sclab-PID-K-hI``,
links ``sclXXXXXX...`` with ifalias ``sclab-PID-K``) and removed on exit, also when the body
raised; entering a lab first sweeps what crashed earlier runs left behind (owner pid gone).
Needs root and iproute2.
"""
from __future__ import annotations

import fcntl
import ipaddress
import itertools
import json
import os
import re
import secrets
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

PREFIX = "sclab"
SUBNET_BASE = "10.213"
LOCK_PATH = os.path.join("/run" if os.path.isdir("/run") else tempfile.gettempdir(), "stepchain-netlab.lock")
PROXY = Path(__file__).resolve().parent / "linkproxy.py"
_NS_RE = re.compile(rf"^{PREFIX}-(\d+)-\d+-")
_LINK_RE = re.compile(r"^scl[0-9a-f]{6}(b|v\d+)$")
_counter = itertools.count()
_probe_cache: dict[str, object] = {}


class LabError(RuntimeError):
    pass


def sh(*args: str, check: bool = True, timeout: float = 15) -> subprocess.CompletedProcess:
    """Run one iproute2 command; LabError with its stderr when it fails and `check`."""
    proc = subprocess.run(list(args), capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise LabError(f"{' '.join(args)}: {proc.stderr.strip() or proc.returncode}")
    return proc


def unavailable() -> str | None:
    """Why a lab cannot run on this machine, or None when it can."""
    if "reason" not in _probe_cache:
        _probe_cache["reason"] = _probe_reason()
    return _probe_cache["reason"]


def _probe_reason() -> str | None:
    if os.geteuid() != 0:
        return "the network lab needs root (network namespaces)"
    if not shutil.which("ip") or not shutil.which("tc"):
        return "the network lab needs iproute2 (`ip` and `tc`)"
    name = f"{PREFIX}-{os.getpid()}-{next(_counter)}-probe"
    if sh("ip", "netns", "add", name, check=False).returncode != 0:
        return "cannot create network namespaces here (`ip netns add` failed)"
    sh("ip", "netns", "del", name, check=False)
    return None


def netem_available() -> bool:
    """Whether `tc qdisc add ... netem` works: tried on a scratch veth in a scratch namespace."""
    if "netem" not in _probe_cache:
        name = f"{PREFIX}-{os.getpid()}-{next(_counter)}-probe"
        sh("ip", "netns", "add", name)
        try:
            sh("ip", "-n", name, "link", "add", "pa", "type", "veth", "peer", "name", "pb")
            _probe_cache["netem"] = sh("ip", "netns", "exec", name, "tc", "qdisc", "add", "dev", "pa", "root",
                                       "netem", "delay", "1ms", check=False).returncode == 0
        finally:
            sh("ip", "netns", "del", name, check=False)
    return bool(_probe_cache["netem"])


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


def _kill_netns_procs(name: str, timeout: float = 5.0) -> None:
    """SIGKILL whatever runs in a namespace (it would keep the namespace and its links alive)."""
    deadline = time.monotonic() + timeout
    while True:
        pids = [int(p) for p in sh("ip", "netns", "pids", name, check=False).stdout.split()]
        if not pids:
            return
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if time.monotonic() > deadline:
            raise LabError(f"processes {pids} in {name} do not die")
        time.sleep(0.05)


def netns_names() -> list[str]:
    out = sh("ip", "netns", "list", check=False).stdout.split("\n")
    return [line.split()[0] for line in out if line.strip()]


def lab_links() -> dict[str, str]:
    """Links in the root namespace named like a lab's: name -> ifalias ('' if none)."""
    found = {}
    for path in Path("/sys/class/net").iterdir():
        if _LINK_RE.match(path.name):
            try:
                found[path.name] = (path / "ifalias").read_text().strip()
            except OSError:
                found[path.name] = ""
    return found


def sweep_stale() -> list[str]:
    """Remove namespaces and links left by lab processes that no longer exist."""
    removed = []
    for name in netns_names():
        m = _NS_RE.match(name)
        if m and not _alive(int(m.group(1))):
            _kill_netns_procs(name)
            sh("ip", "netns", "del", name, check=False)
            removed.append(name)
    for name, alias in lab_links().items():
        m = _NS_RE.match(alias + "-")
        if not m or not _alive(int(m.group(1))):
            sh("ip", "link", "del", name, check=False)
            removed.append(name)
    return removed


def _free_subnet() -> int:
    """A third octet N such that 10.213.N.0/24 overlaps no address or route on this machine."""
    used = []
    for cmd in (("ip", "-4", "-o", "addr", "show"), ("ip", "-4", "route", "show", "table", "all")):
        for token in sh(*cmd, check=False).stdout.split():
            try:
                used.append(ipaddress.ip_network(token, strict=False))
            except ValueError:
                pass
    start = os.getpid() % 256
    for k in range(256):
        n = (start + k) % 256
        net = ipaddress.ip_network(f"{SUBNET_BASE}.{n}.0/24")
        if not any(net.overlaps(u) for u in used if u.prefixlen > 0):
            return n
    raise LabError(f"no free {SUBNET_BASE}.N.0/24 subnet")


@dataclass(frozen=True)
class LinkSpec:
    """Every host's link: bandwidth each way, and the one-way impairment between two hosts."""
    rate_mbit: float = 100.0
    delay_ms: float = 0.0
    jitter_ms: float = 0.0
    loss: float = 0.0  # share of segments lost (netem) / of segments costing one RTO stall (proxy)
    rto_ms: float = 200.0
    netem: bool | None = None  # None: use netem where the kernel has it

    def __post_init__(self):
        if not (self.rate_mbit > 0 and 0 <= self.jitter_ms <= self.delay_ms and 0 <= self.loss < 1):
            raise ValueError(f"bad link spec {self}")


@dataclass(frozen=True)
class Host:
    index: int
    netns: str
    ip: str

    @property
    def prefix(self) -> tuple[str, ...]:
        """Put before a command to run it on this host."""
        return ("ip", "netns", "exec", self.netns)


class Lab:
    """Context manager: hosts, links, shaping and the link proxy; all removed on exit."""

    def __init__(self, hosts: int, link: LinkSpec = LinkSpec(), forward: tuple[int, ...] = (), seed: int = 1):
        if not 1 <= hosts <= 200:
            raise ValueError("a lab has 1 to 200 hosts")
        self.n, self.link, self.forward, self.seed = hosts, link, tuple(forward), seed
        self.tag = f"{PREFIX}-{os.getpid()}-{next(_counter)}"
        self.short = "scl" + secrets.token_hex(3)
        self.bridge = self.short + "b"
        self.hosts: list[Host] = []
        self.bridge_ip = ""
        self.uses_netem = False
        self.proxy: subprocess.Popen | None = None
        self._addrs: dict[tuple[int, int], str] = {}
        self._lock = threading.Lock()
        self._made_bridge = False

    # -- lifecycle ------------------------------------------------------------------------

    def __enter__(self) -> "Lab":
        reason = unavailable()
        if reason:
            raise LabError(reason)
        try:
            sweep_stale()
            self.uses_netem = netem_available() if self.link.netem is None else self.link.netem
            self._make_bridge()
            for i in range(self.n):
                self._make_host(i)
            self._start_proxy()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close(raise_leftovers=exc_type is None)

    def close(self, raise_leftovers: bool = False) -> None:
        """Stop the proxy, kill what runs in our hosts, delete namespaces and links. Every step
        runs even when an earlier one failed; what is left is reported (and raised if asked)."""
        errors = []
        steps = [self._stop_proxy] + [lambda n=n: self._remove_netns(n)
                                      for n in netns_names() if n.startswith(self.tag + "-")]
        steps += [lambda n=n: sh("ip", "link", "del", n, check=False)
                  for n, alias in lab_links().items() if n.startswith(self.short) or alias == self.tag]
        for step in steps:
            try:
                step()
            except (LabError, OSError, subprocess.SubprocessError) as exc:
                errors.append(str(exc))
        left = self.leftovers()
        if (left or errors) and raise_leftovers:
            raise LabError(f"lab cleanup left {left}: {errors}")

    def _stop_proxy(self) -> None:
        if self.proxy is None:
            return
        if self.proxy.poll() is None:
            self.proxy.terminate()
            try:
                self.proxy.wait(5)
            except subprocess.TimeoutExpired:
                self.proxy.kill()
                self.proxy.wait(5)
        for f in (self.proxy.stdin, self.proxy.stdout):
            try:
                f.close()
            except OSError:
                pass

    @staticmethod
    def _remove_netns(name: str) -> None:
        _kill_netns_procs(name)
        sh("ip", "netns", "del", name)

    def leftovers(self) -> list[str]:
        """What of this lab still exists (empty after close)."""
        left = [n for n in netns_names() if n.startswith(self.tag + "-")]
        left += [n for n, alias in lab_links().items() if n.startswith(self.short) or alias == self.tag]
        if self.proxy is not None and self.proxy.poll() is None:
            left.append(f"proxy pid {self.proxy.pid}")
        return left

    # -- building -------------------------------------------------------------------------

    def _make_bridge(self) -> None:
        with open(LOCK_PATH, "w") as lock:  # two labs must not pick the same subnet
            fcntl.flock(lock, fcntl.LOCK_EX)
            self.subnet = _free_subnet()
            sh("ip", "link", "add", self.bridge, "type", "bridge")
            sh("ip", "link", "set", "dev", self.bridge, "alias", self.tag)
            self.bridge_ip = f"{SUBNET_BASE}.{self.subnet}.1"
            sh("ip", "addr", "add", f"{self.bridge_ip}/24", "dev", self.bridge)
            sh("ip", "link", "set", self.bridge, "up")

    def _make_host(self, i: int) -> None:
        ns, veth = f"{self.tag}-h{i}", f"{self.short}v{i}"
        sh("ip", "netns", "add", ns)
        sh("ip", "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", ns)
        sh("ip", "link", "set", "dev", veth, "alias", self.tag)
        sh("ip", "link", "set", veth, "master", self.bridge)
        sh("ip", "link", "set", "dev", veth, "type", "bridge_slave", "isolated", "on")
        sh("ip", "link", "set", veth, "up")
        host = Host(i, ns, f"{SUBNET_BASE}.{self.subnet}.{10 + i}")
        sh("ip", "-n", ns, "addr", "add", f"{host.ip}/24", "dev", "eth0")
        sh("ip", "-n", ns, "link", "set", "lo", "up")
        sh("ip", "-n", ns, "link", "set", "eth0", "up")
        self._shape(veth, ())  # toward the host: its downlink
        self._shape("eth0", host.prefix, netem=self.uses_netem)  # from the host: its uplink
        self.hosts.append(host)

    def _shape(self, dev: str, prefix: tuple[str, ...], netem: bool = False) -> None:
        tbf = ["tbf", "rate", f"{self.link.rate_mbit}mbit", "burst", "64kb", "latency", "100ms"]
        if not netem:
            sh(*prefix, "tc", "qdisc", "add", "dev", dev, "root", *tbf)
            return
        sp = self.link
        sh(*prefix, "tc", "qdisc", "add", "dev", dev, "root", "handle", "1:", "netem", "limit", "100000",
           "delay", f"{sp.delay_ms}ms", f"{sp.jitter_ms}ms", "loss", f"{sp.loss * 100}%")
        sh(*prefix, "tc", "qdisc", "add", "dev", dev, "parent", "1:1", "handle", "10:", *tbf)

    def _start_proxy(self) -> None:
        sp = self.link
        imp = {"rto_ms": sp.rto_ms}
        if not self.uses_netem:
            imp.update(delay_ms=sp.delay_ms, jitter_ms=sp.jitter_ms, loss=sp.loss)
        links = [{"host": h.index, "target": f"{h.ip}:{p}"} for h in self.hosts for p in self.forward]
        cfg = {"bind": self.bridge_ip, "hosts": {h.ip: h.index for h in self.hosts}, "links": links,
               "impairment": imp, "seed": self.seed}
        self.proxy = subprocess.Popen([sys.executable, str(PROXY)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                      text=True)
        ready = self._ask(cfg)
        if not ready.get("ready"):
            raise LabError(f"link proxy did not start: {ready}")
        for link, port in zip(links, ready["ports"]):
            self._addrs[(link["host"], int(link["target"].rpartition(":")[2]))] = f"{self.bridge_ip}:{port}"

    # -- using ----------------------------------------------------------------------------

    def addr(self, host: int, port: int) -> str:
        """HOST:PORT that other hosts dial to reach `port` on `host` (through the proxy)."""
        return self._addrs[(host, port)]

    def _ask(self, msg: dict, timeout: float = 15.0) -> dict:
        with self._lock:
            if self.proxy is None or self.proxy.poll() is not None:
                raise LabError("the link proxy is not running")
            self.proxy.stdin.write(json.dumps(msg) + "\n")
            self.proxy.stdin.flush()
            ready, _, _ = select.select([self.proxy.stdout], [], [], timeout)
            line = self.proxy.stdout.readline() if ready else ""
        if not line:
            raise LabError("the link proxy did not answer")
        return json.loads(line)

    def command(self, msg: dict) -> dict:
        reply = self._ask(msg)
        if not reply.get("ok"):
            raise LabError(f"link proxy refused {msg}: {reply.get('error')}")
        return reply

    def partition(self, groups: list[list[int]], mode: str = "blackhole") -> dict:
        """Cut the hosts into groups that cannot reach each other ("blackhole": links go dark,
        connections stay; "cut": connections across groups are reset and refused)."""
        return self.command({"cmd": "partition", "groups": groups, "mode": mode})

    def heal(self) -> dict:
        return self.command({"cmd": "heal"})

    def stats(self) -> dict:
        return self.command({"cmd": "stats"})["stats"]

    def describe(self) -> dict:
        sp = self.link
        return {"hosts": self.n, "rate_mbit": sp.rate_mbit, "delay_ms": sp.delay_ms, "jitter_ms": sp.jitter_ms,
                "loss": sp.loss, "impairment_by": "netem" if self.uses_netem else "linkproxy",
                "netem_in_kernel": netem_available()}
