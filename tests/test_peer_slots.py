"""Peer slots under attack, with real node processes and real handshakes from the test process
(p2p.transport): node keys cost nothing, so an attacker brings as many as it likes.

* sybils (fresh keys, each from its own loopback IP and /16) hold every inbound slot of the
  other validators; a restarted validator still gets back in (a slot is evicted for it),
  catches up, and the chain keeps committing;
* thousands of TCP connections that never finish a handshake cost the node at most its
  half-open cap, and a restarting validator connects through them;
* a seed that floods peer exchange with thousands of fake addresses, and inbound sybils that
  push more, leave the address book small and the node dialing at a bounded pace.
"""
from __future__ import annotations

import asyncio
import time

import pytest

from consensus.crypto import PrivateKey, format_address, parse_address
from consensus.genesis import load as load_genesis
from p2p.peerpolicy import PeerLimits
from p2p.transport import TransportError, exchange_hello, handshake, make_hello
from tests.nodes import running_network, NodeProcess, block_hashes, p2p_id, wait_all

pytestmark = pytest.mark.slow

LIMITS = PeerLimits()  # what the nodes run with
FAKE_LISTEN = "127.0.0.1:1"  # nothing listens there: a node's dials to it fail at once


# -- the network ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def net(tmp_path_factory):
    with running_network(tmp_path_factory.mktemp("slots")) as nodes:
        yield nodes


def view(node) -> dict:
    return node.rpc.get("/peers")


def ident(node) -> str:
    return p2p_id(node).partition("@")[0]


async def call(fn, *args, **kw):
    """A blocking helper (RPC, process start) off the event loop, so sybils keep reading."""
    return await asyncio.to_thread(fn, *args, **kw)


async def until(check, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while True:
        got = await call(check)
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.2)


_next_ip = iter(range(1, 250 * 250))


def fresh_ip() -> str:
    """A loopback source address in a /16 of its own (127.X.Y.1), as a well-funded attacker has."""
    n = next(_next_ip)
    return f"127.{1 + n % 250}.{n // 250}.1"


# -- attackers ----------------------------------------------------------------------------------

class Sybil:
    """A well-behaved-looking peer with a fresh key: real handshake, a correct hello, pongs by
    return, and otherwise it reads and discards whatever the node sends, holding its slot
    until the node closes it."""

    def __init__(self, node: NodeProcess, source_ip: str):
        pid, _, addr = p2p_id(node).partition("@")
        self.node_id = parse_address(pid)
        self.host, _, port = addr.rpartition(":")
        self.port = int(port)
        self.source_ip = source_ip
        self.genesis = load_genesis(node.home / "genesis.json")
        self.key = PrivateKey.generate()
        self.name = format_address(self.key.address)
        self.session = None
        self.closed = asyncio.Event()
        self.task: asyncio.Task | None = None

    async def join(self) -> "Sybil":
        reader, writer = await asyncio.open_connection(self.host, self.port, local_addr=(self.source_ip, 0))
        try:
            self.session = await handshake(reader, writer, self.key, True, expect_peer=self.node_id)
            await exchange_hello(self.session, make_hello(self.genesis.chain_id, self.genesis.hash, 0, FAKE_LISTEN))
        except (TransportError, OSError):
            writer.close()
            self.closed.set()
            return self
        self.task = asyncio.get_running_loop().create_task(self._drain())
        return self

    async def send(self, kind: str, payload) -> None:
        await self.session.send([kind, payload])

    async def _drain(self) -> None:
        try:
            while True:
                msg = await self.session.recv()
                if msg[0] == "ping":  # answered at once: the attacker's latency looks as good as any
                    await self.send("pong", msg[1])
        except (TransportError, OSError):
            self.closed.set()

    def close(self) -> None:
        if self.task is not None:
            self.task.cancel()
        if self.session is not None:
            self.session.close()


@pytest.fixture
async def crowd():
    sybils: list[Sybil] = []
    yield sybils
    for s in sybils:
        s.close()


def inbound_ids(node) -> set[str]:
    return {p["id"] for p in view(node)["peers"] if p["direction"] == "in"}


async def fill_inbound(node, crowd: list[Sybil], validators: set[str]) -> set[str]:
    """Sybils until every inbound slot of `node` is held by a sybil or a validator."""
    for _ in range(3 * LIMITS.max_inbound):
        held = await call(inbound_ids, node)
        if len(held) >= LIMITS.max_inbound:
            break
        crowd.append(await Sybil(node, fresh_ip()).join())
        await asyncio.sleep(0.05)
    held = await call(inbound_ids, node)
    sybils = {s.name for s in crowd if not s.closed.is_set()}
    assert len(held) == LIMITS.max_inbound and held <= sybils | validators, (len(held), held - sybils - validators)
    return held & sybils


async def restart_and_rejoin(net, restarted) -> None:
    """Kill `restarted`, let the others go on, start it again: it must reconnect and catch up."""
    others = [n for n in net if n is not restarted]
    await call(restarted.kill)
    me = ident(restarted)
    await until(lambda: all(me not in {p["id"] for p in view(n)["peers"]} for n in others), 15,
                "the others noticing the crash")
    h = max(await call(lambda: [n.rpc.status()["height"] for n in others]))
    await call(wait_all, others, h + 2, 60)  # 3 of 4 keep committing
    await call(restarted.start)
    tip = max(await call(lambda: [n.rpc.status()["height"] for n in others]))
    await call(restarted.wait_height, tip, 30)
    everyone = {ident(n) for n in net}
    await until(lambda: everyone - {me} <= {p["id"] for p in view(restarted)["peers"]}, 20,
                "the restarted validator connected to all others")
    await until(lambda: all(me in {p["id"] for p in view(n)["peers"]} for n in others), 20,
                "every other validator connected to the restarted one")


def came_in(node, restarted) -> bool:
    """Whether `restarted` holds an inbound slot at `node`: it got in by its own dial."""
    return any(p["id"] == ident(restarted) and p["direction"] == "in" for p in view(node)["peers"])


async def agree(net) -> None:
    top = max(await call(lambda: [n.rpc.status()["height"] for n in net]))
    await call(wait_all, net, top + 2, 60)
    upto = min(await call(lambda: [n.rpc.status()["height"] for n in net]))
    reference = await call(block_hashes, net[0], upto)
    for n in net[1:]:
        assert await call(block_hashes, n, upto) == reference


# -- (a) sybils in every inbound slot ---------------------------------------------------------------

async def test_a_restarted_validator_rejoins_while_sybils_hold_every_inbound_slot(net, crowd):
    validators = {ident(n) for n in net}
    others, restarted = net[:3], net[3]
    for n in others:
        await fill_inbound(n, crowd, validators)
    await call(restarted.kill)
    for n in others:  # whatever slots the crashed validator held, sybils take them too
        await until(lambda n=n: ident(restarted) not in {p["id"] for p in view(n)["peers"]}, 15, "crash noticed")
        held = await fill_inbound(n, crowd, validators)
        assert len(held) >= LIMITS.max_inbound - 3
    restarted.proc = None
    await restart_and_rejoin(net, restarted)
    inbound_at = 0
    for n in others:
        v = await call(view, n)
        assert v["inbound"] <= LIMITS.max_inbound, v  # a sybil made room, the limit held
        inbound_at += await call(came_in, n, restarted)
        assert not validators & set(v["banned"])
    assert inbound_at >= 1, "the restarted validator only got back through the others' own dials"
    assert sum(s.closed.is_set() for s in crowd) >= inbound_at  # sybils were evicted for it
    # the attacker keeps connecting fresh keys: every one of them takes some sybil's slot, never a
    # validator's (on 127.0.0.1 the validators share a /16, the restarted one is the youngest)
    for n in others:
        for _ in range(LIMITS.max_inbound):
            crowd.append(await Sybil(n, fresh_ip()).join())
    for n in net:
        peers = {p["id"] for p in (await call(view, n))["peers"]}
        assert validators - {ident(n)} <= peers, n.home.name
    short = {v[:14] for v in validators}
    for n in others:
        evictions = [ln for ln in n.log_path.read_text().splitlines() if "disconnected: evicted" in ln]
        assert evictions and not [ln for ln in evictions if any(f"peer {v} " in ln for v in short)]
    await agree(net)


# -- (c) half-open connections ------------------------------------------------------------------------

class HalfOpenFlood:
    """TCP connections that never send a byte; each reopens shortly after the node closes it,
    so the node's half-open table stays full for as long as the flood runs."""

    def __init__(self, node: NodeProcess, ips: list[str], reopen_after: float = 0.5):
        _, _, addr = p2p_id(node).partition("@")
        host, _, port = addr.rpartition(":")
        self.target = (host, int(port))
        self.ips, self.reopen_after = ips, reopen_after
        self.closed_by_node = 0
        self.tasks: list[asyncio.Task] = []

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self.tasks = [loop.create_task(self._hold(ip)) for ip in self.ips]

    async def _hold(self, ip: str) -> None:
        while True:
            try:
                reader, writer = await asyncio.open_connection(*self.target, local_addr=(ip, 0))
            except OSError:
                await asyncio.sleep(self.reopen_after)
                continue
            try:
                while await reader.read(4096):
                    pass  # the node's handshake frame: never answered
            except OSError:
                pass
            finally:
                writer.close()
            self.closed_by_node += 1
            await asyncio.sleep(self.reopen_after)

    async def stop(self) -> None:
        for t in self.tasks:
            t.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)


async def test_half_open_connections_beyond_the_cap_do_not_keep_a_validator_out(net):
    others, restarted = net[:3], net[3]
    per_node = 3 * LIMITS.max_half_open
    # a share from 127.0.0.1, the address the validators themselves connect from
    ips = ["127.0.0.1"] * (2 * LIMITS.max_half_open_per_ip)
    ips += [fresh_ip() for _ in range(per_node - len(ips))]
    floods = [HalfOpenFlood(n, ips) for n in others]
    try:
        for f in floods:
            f.start()
        # the node keeps at most its cap and closes the rest at once (not after a timeout)
        await until(lambda: all(f.closed_by_node >= per_node - LIMITS.max_half_open for f in floods), 5,
                    "the nodes closing the half-open sockets beyond their cap")
        for n in others:
            assert (await call(view, n))["half_open"] <= LIMITS.max_half_open
        await restart_and_rejoin(net, restarted)
        inbound_at = 0
        for n in others:
            assert (await call(view, n))["half_open"] <= LIMITS.max_half_open
            inbound_at += await call(came_in, n, restarted)
        assert inbound_at >= 1, "the restarted validator's own dials never got through"
    finally:
        for f in floods:
            await f.stop()
    await until(lambda: all(view(n)["half_open"] == 0 for n in others), 5, "the half-open table emptying")
    await agree(net)


# -- (b) peer exchange flood ------------------------------------------------------------------------

class DialCounter:
    """Listeners the fake addresses point at: each connection is one dial by the node."""

    def __init__(self):
        self.dials = 0
        self.servers: list[asyncio.AbstractServer] = []

    async def start(self, count: int) -> list[int]:
        for _ in range(count):
            self.servers.append(await asyncio.start_server(self._count, "127.0.0.1", 0))
        return [s.sockets[0].getsockname()[1] for s in self.servers]

    async def _count(self, reader, writer) -> None:
        self.dials += 1
        writer.close()

    def close(self) -> None:
        for s in self.servers:
            s.close()


def fakes(count: int, ports: list[int]) -> list[str]:
    return [f"{format_address(PrivateKey.generate().address)}@127.0.0.1:{ports[i % len(ports)]}"
            for i in range(count)]


class FloodingSeed:
    """A seed the node dials: it answers the node's one PEX request properly, then pushes
    unsolicited and oversized PEX messages until the node bans it."""

    def __init__(self, ports: list[int]):
        self.key = PrivateKey.generate()
        self.ports = ports
        self.sent = 0
        self.answered_at: float | None = None
        self.server: asyncio.AbstractServer | None = None

    async def start(self) -> str:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return f"{format_address(self.key.address)}@127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def _serve(self, reader, writer) -> None:
        try:
            session = await handshake(reader, writer, self.key, False)
            kind, theirs = await session.recv()
            await session.send(["hello", make_hello(theirs["chain_id"], theirs["genesis_hash"], 0, FAKE_LISTEN)])
            for _ in range(100):  # the node asks the peers it dialed for addresses
                kind, _payload = await asyncio.wait_for(session.recv(), 10)
                if kind == "pex_req":
                    break
            await session.send(["pex", fakes(32, self.ports)])
            self.sent += 32
            self.answered_at = time.monotonic()
            for batch in [32] * 3 + [1000] * 20:  # unsolicited, then oversized
                await session.send(["pex", fakes(batch, self.ports)])
                self.sent += batch
                await asyncio.sleep(0.05)
            while True:
                await session.recv()
        except (TransportError, OSError, asyncio.TimeoutError, ValueError):
            pass
        finally:
            writer.close()


async def test_a_pex_flood_leaves_the_book_bounded_and_the_dialing_paced(tmp_path, crowd):
    counter = DialCounter()
    ports = await counter.start(4)
    seed = FloodingSeed(ports)
    seed_addr = await seed.start()
    node = NodeProcess.init_dev(tmp_path)
    cfg = node.home / "config.toml"
    cfg.write_text(cfg.read_text().replace("seeds = []", f'seeds = ["{seed_addr}"]'))
    try:
        await call(node.start)
        await until(lambda: seed.answered_at is not None, 10, "the node asking its seed for addresses")
        for _ in range(10):  # inbound sybils push thousands more, unasked
            s = await Sybil(node, fresh_ip()).join()
            crowd.append(s)
            await s.send("pex", fakes(1000, ports))
        start_height = (await call(node.rpc.status))["height"]
        await until(lambda: format_address(seed.key.address) in view(node)["banned"], 10, "the seed banned")
        await asyncio.sleep(4.0)
        elapsed = time.monotonic() - seed.answered_at
        v = await call(view, node)
        book = v["addrbook"]["new"] + v["addrbook"]["tried"]
        assert seed.sent >= 3000  # thousands of addresses from the seed, 10,000 more from the sybils
        # what the book may hold: the one answered request, plus one self-declared address per sybil
        assert book <= 32 + len(crowd), v["addrbook"]
        print("book", v["addrbook"], "dials", counter.dials, "in", round(elapsed, 1), "s")
        assert 2 <= counter.dials <= elapsed / LIMITS.dial_interval + 2, (counter.dials, elapsed)
        assert (await call(node.rpc.status))["height"] > start_height  # and it kept making blocks
    finally:
        if node.proc is not None:
            await call(node.stop)
        seed.server.close()
        counter.close()
