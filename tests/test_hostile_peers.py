"""A real 4-validator network, and an attacker in the test process that connects to node0's P2P
port with p2p.transport and misbehaves: another chain, garbage, an oversized frame, a flood of
badly signed txs, malformed messages. node0 must refuse, penalize or ban the attacker's key,
and the honest network must keep finalizing the same blocks throughout."""
from __future__ import annotations

import asyncio
import os
import struct
import time

import pytest

from consensus import codec
from consensus.crypto import PrivateKey, format_address, parse_address
from consensus.types import Tx
from node.home import Home
from node.wallet import Keystore
from p2p import transport
from p2p.transport import PROTOCOL_VERSION, Session, TransportError, handshake
from tests.nodes import running_network, block_hashes, p2p_id, wait_all

pytestmark = pytest.mark.slow

ATTACKER_LISTEN = "127.0.0.1:1"  # nothing listens there: node0's redials fail at once


# -- the network ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def net(tmp_path_factory):
    with running_network(tmp_path_factory.mktemp("hostile")) as nodes:
        yield nodes


def peers(node) -> dict:
    return node.rpc.get("/peers")


def banned(node) -> list[str]:
    return peers(node)["banned"]


def connected(node) -> dict[str, dict]:
    return {p["id"]: p for p in peers(node)["peers"]}


async def eventually(check, timeout: float = 10.0, what: str = "condition"):
    """Poll a (blocking, quick) check until it returns something truthy."""
    deadline = time.monotonic() + timeout
    while True:
        got = check()
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.1)


# -- the attacker -----------------------------------------------------------------------------

class Attacker:
    """A P2P client of one node, with its own fresh node key."""

    def __init__(self, node):
        self.node = node
        ident, _, addr = p2p_id(node).partition("@")
        self.node_id = parse_address(ident)
        self.host, _, port = addr.rpartition(":")
        self.port = int(port)
        self.key = PrivateKey.generate()
        self.name = format_address(self.key.address)
        self.reader = self.writer = None
        self.session: Session | None = None
        self.their_hello: dict | None = None

    async def connect(self):
        self.reader, self.writer = await asyncio.open_connection(self.host, self.port)

    async def handshake(self) -> Session:
        await self.connect()
        self.session = await handshake(self.reader, self.writer, self.key, True, expect_peer=self.node_id)
        return self.session

    async def join(self, **hello_overrides) -> dict:
        """Handshake, read the node's hello, answer with ours (the node's chain unless overridden)."""
        await self.handshake()
        msg = await asyncio.wait_for(self.session.recv(), 10)
        assert msg[0] == "hello", msg
        self.their_hello = msg[1]
        mine = {"chain_id": msg[1]["chain_id"], "genesis_hash": msg[1]["genesis_hash"],
                "version": PROTOCOL_VERSION, "height": 0, "listen": ATTACKER_LISTEN}
        mine.update(hello_overrides)
        await self.session.send(["hello", mine])
        return msg[1]

    async def drain_until_closed(self, timeout: float = 10.0) -> list:
        """Read (and keep) whatever the node sends until it closes the connection."""
        got = []
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"node did not close the connection; it sent {got[-5:]}")
            try:
                got.append(await asyncio.wait_for(self.session.recv(), left))
            except TransportError as exc:
                assert "closed" in str(exc), exc
                return got
            except asyncio.TimeoutError:
                continue

    async def raw_closed(self, timeout: float = 10.0) -> bool:
        """Before any session: True once the node has closed the socket (EOF or reset)."""
        try:
            while True:
                data = await asyncio.wait_for(self.reader.read(65536), timeout)
                if not data:
                    return True
        except ConnectionError:
            return True

    def close(self):
        if self.writer is not None and not self.writer.is_closing():
            self.writer.close()


@pytest.fixture
async def attacker(net):
    made = []

    def make(node=None):
        a = Attacker(node or net[0])
        made.append(a)
        return a

    yield make
    for a in made:
        a.close()


def bad_signature_txs(node, chain_id: str, count: int) -> list:
    """Transfers from the funded dev account (nonce, fee and funds all fine) with random signatures,
    so the mempool gets as far as the signature check and blames the sender of the message."""
    dev = Keystore(Home(node.home).keystore_dir).load_doc("dev")
    sender = bytes.fromhex(dev["pubkey"])
    to = PrivateKey.generate().address
    return [Tx(chain_id, "transfer", sender, 0, 10, {"to": to, "amount": 1 + i}, os.urandom(64)).to_obj()
            for i in range(count)]


def node_log(node) -> str:
    return node.log_path.read_text()


# -- attacks ------------------------------------------------------------------------------------

async def test_the_attacker_can_join_like_any_peer(net, attacker):
    """Baseline for the attacks below: a well-behaved client is accepted and listed."""
    a = attacker()
    their = await a.join()
    assert "-dev-" in their["chain_id"] and type(their["genesis_hash"]) is bytes
    info = await eventually(lambda: connected(net[0]).get(a.name), what="attacker listed as a peer")
    assert info["score"] == 0 and info["listen"] == ATTACKER_LISTEN
    assert a.name not in banned(net[0])


async def test_wrong_chain_id_is_refused_and_logged(net, attacker):
    a = attacker()
    await a.join(chain_id="evilchain")
    got = await a.drain_until_closed()
    disconnects = [m for m in got if m[0] == "disconnect"]
    assert disconnects, got
    assert "chain_id" in disconnects[0][1] and "evilchain" in disconnects[0][1]
    await eventually(lambda: "evilchain" in node_log(net[0]), what="node0 logging the mismatch")
    line = next(ln for ln in node_log(net[0]).splitlines() if "evilchain" in ln)
    assert "chain_id" in line and "mismatch" in line
    assert a.name not in connected(net[0])


async def test_wrong_genesis_is_refused(net, attacker):
    a = attacker()
    await a.join(genesis_hash=b"\x00" * 32)
    got = await a.drain_until_closed()
    assert any(m[0] == "disconnect" and "genesis" in m[1] for m in got), got
    assert a.name not in connected(net[0])


async def test_garbage_instead_of_a_handshake_is_closed(net, attacker):
    a = attacker()
    await a.connect()
    a.writer.write(b"GET / HTTP/1.1\r\nHost: stepchain\r\n\r\n" + os.urandom(2000))
    await a.writer.drain()
    assert await a.raw_closed()
    for body in (os.urandom(40),    # a frame, but not a key pair
                 b"\x81\x90\x00"):    # msgpack that makes the decoder raise TypeError
        a2 = attacker()
        await a2.connect()
        a2.writer.write(struct.pack(">I", len(body)) + body)
        await a2.writer.drain()
        assert await a2.raw_closed()


async def test_oversized_frame_closes_and_bans(net, attacker):
    a = attacker()
    await a.join()
    await eventually(lambda: a.name in connected(net[0]), what="attacker connected")
    a.writer.write(struct.pack(">I", 64 * 1024 * 1024))  # and no body: the header alone is enough
    await a.writer.drain()
    await a.drain_until_closed()
    await eventually(lambda: a.name in banned(net[0]), what="attacker banned")
    assert a.name not in connected(net[0])
    # a banned key is turned away even with a perfect handshake
    again = Attacker(net[0])
    again.key, again.name = a.key, a.name
    try:
        await again.handshake()
        with pytest.raises(TransportError, match="closed"):
            await asyncio.wait_for(again.session.recv(), 10)
    finally:
        again.close()
    assert a.name not in connected(net[0])


async def test_flood_of_badly_signed_txs_bans(net, attacker):
    a = attacker()
    their = await a.join()
    await eventually(lambda: a.name in connected(net[0]), what="attacker connected")
    # one bad tx per message: each message costs 20 points, so the ban comes after a few of them
    for _ in range(30):
        try:
            await a.session.send(["txs", bad_signature_txs(net[0], their["chain_id"], 1)])
        except (TransportError, ConnectionError):
            break
        await asyncio.sleep(0.02)
    await a.drain_until_closed()
    await eventually(lambda: a.name in banned(net[0]), what="attacker banned")
    assert a.name not in connected(net[0])
    assert "bad signature" in node_log(net[0])


async def test_malformed_message_is_penalized_then_banned(net, attacker):
    a = attacker()
    await a.join()
    await eventually(lambda: a.name in connected(net[0]), what="attacker connected")
    await a.session.send(["proposal", 5])
    info = await eventually(lambda: (connected(net[0]).get(a.name) or {}).get("score"),
                            what="attacker penalized")
    assert info >= 40  # MALFORMED is 50; old offences fade by 5 every 10 s
    assert a.name not in banned(net[0])  # one malformed message is not yet a ban
    await eventually(lambda: "malformed proposal" in node_log(net[0]), what="node0 logging it")
    # a second, different malformed message pushes it over the ban threshold
    await a.session.send(["vote", "not a vote"])
    await a.drain_until_closed()
    await eventually(lambda: a.name in banned(net[0]), what="attacker banned")


async def test_message_that_is_not_kind_payload_bans_at_once(net, attacker):
    a = attacker()
    await a.join()
    await eventually(lambda: a.name in connected(net[0]), what="attacker connected")
    await a.session.send({"not": "a message"})
    await a.drain_until_closed()
    await eventually(lambda: a.name in banned(net[0]), what="attacker banned")


async def test_unknown_message_kind_is_penalized(net, attacker):
    a = attacker()
    await a.join()
    await eventually(lambda: a.name in connected(net[0]), what="attacker connected")
    await a.session.send(["launch_missiles", None])
    score = await eventually(lambda: (connected(net[0]).get(a.name) or {}).get("score"), what="penalty")
    assert 0 < score < 100


async def test_body_that_breaks_the_decoder_drops_the_peer(net, attacker, monkeypatch):
    a = attacker()
    await a.join()
    await eventually(lambda: a.name in connected(net[0]), what="attacker connected")

    class RawCodec:  # lets the attacker's session seal arbitrary bytes
        CodecError, decode = codec.CodecError, staticmethod(codec.decode)

        @staticmethod
        def encode(value):
            return b"\x81\x90\x00" if value == "RAW" else codec.encode(value)

    monkeypatch.setattr(transport, "codec", RawCodec)
    await a.session.send("RAW")
    monkeypatch.undo()
    await eventually(lambda: a.name not in connected(net[0]), timeout=5, what="attacker dropped")


# -- and the honest network never noticed ----------------------------------------------------------

def test_honest_network_keeps_finalizing_and_stops_cleanly(net):
    start = max(n.rpc.status()["height"] for n in net)
    wait_all(net, start + 3, timeout=60)
    upto = min(n.rpc.status()["height"] for n in net)
    assert upto >= start + 3
    reference = block_hashes(net[0], upto)
    for n in net[1:]:
        assert block_hashes(n, upto) == reference, n.log()
    honest = {p2p_id(n).partition("@")[0] for n in net}
    for n in net:
        view = peers(n)
        assert not honest & set(view["banned"]), (n.home.name, view)
        others = honest - {p2p_id(n).partition("@")[0]}
        assert others <= {p["id"] for p in view["peers"]}, (n.home.name, view)
    codes = [n.stop() for n in net]
    assert codes == [0, 0, 0, 0], [n.log() for n in net]
