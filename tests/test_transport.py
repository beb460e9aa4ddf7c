"""p2p.transport over a real 127.0.0.1 TCP socket: handshake, hello, sealed frames, and the
ways a peer can get them wrong (a wrong key, garbage, oversized, tampered or replayed frames,
another chain). Everything runs in-process on one event loop; no node is started."""
from __future__ import annotations

import asyncio
import os
import struct

import pytest

from consensus import codec
from consensus.crypto import PrivateKey, address_of, sha256
from p2p import transport
from p2p.transport import (HANDSHAKE_FRAME_LIMIT, PROTOCOL_VERSION, FrameTooLarge, HandshakeError, Session,
                           TransportError, exchange_hello, handshake, make_hello, read_frame, write_frame)

GENESIS = sha256(b"genesis")
STEP = 5.0  # seconds any single step may take before the test calls it hung


# -- plumbing -------------------------------------------------------------------------------

class Link:
    """One TCP connection on 127.0.0.1: the client's and the server's stream pair."""

    def __init__(self, server, client, accepted):
        self.server = server
        self.client_r, self.client_w = client
        self.server_r, self.server_w = accepted

    def close(self):
        for w in (self.client_w, self.server_w):
            if not w.is_closing():
                w.close()
        self.server.close()


async def open_link() -> Link:
    accepted: asyncio.Queue = asyncio.Queue()

    async def on_conn(reader, writer):
        await accepted.put((reader, writer))

    server = await asyncio.start_server(on_conn, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    client = await asyncio.open_connection("127.0.0.1", port)
    return Link(server, client, await asyncio.wait_for(accepted.get(), STEP))


@pytest.fixture
async def link():
    lk = await open_link()
    yield lk
    lk.close()


def hello(chain_id="testchain", genesis=GENESIS, height=0, listen="127.0.0.1:1"):
    return make_hello(chain_id, genesis, height, listen)


async def both(a, b):
    """Run two coroutines concurrently; return their results or exceptions."""
    return await asyncio.wait_for(asyncio.gather(a, b, return_exceptions=True), STEP * 2)


async def sessions(link: Link, client_key: PrivateKey, server_key: PrivateKey, **kw) -> tuple[Session, Session]:
    c, s = await both(handshake(link.client_r, link.client_w, client_key, True, **kw),
                      handshake(link.server_r, link.server_w, server_key, False))
    assert isinstance(c, Session), c
    assert isinstance(s, Session), s
    return c, s


class Recorder:
    """Stands in for a session's writer: keeps each frame instead of putting it on the wire."""

    def __init__(self):
        self.data = b""

    def write(self, data: bytes) -> None:
        self.data += data

    async def drain(self) -> None:
        pass

    def is_closing(self) -> bool:
        return False

    def frames(self) -> list[bytes]:
        out, buf = [], self.data
        while buf:
            (n,) = struct.unpack(">I", buf[:4])
            out.append(buf[:4 + n])
            buf = buf[4 + n:]
        return out


async def sealed_frames(session: Session, *values) -> list[bytes]:
    """The exact bytes (header included) that session.send would put on the wire for values."""
    real, session.writer = session.writer, Recorder()
    try:
        for v in values:
            await session.send(v)
        return session.writer.frames()
    finally:
        session.writer = real


async def recv(session: Session):
    return await asyncio.wait_for(session.recv(), STEP)


# -- a working session ------------------------------------------------------------------------

async def test_handshake_hello_and_messages_both_ways(link):
    a, b = PrivateKey.generate(), PrivateKey.generate()
    ca, sb = await sessions(link, a, b, expect_peer=b.address)
    assert ca.initiator and not sb.initiator
    # each side learned the other's node key and id
    assert ca.peer_pubkey == b.pubkey and ca.peer_id == b.address == address_of(b.pubkey)
    assert sb.peer_pubkey == a.pubkey and sb.peer_id == a.address

    ha, hb = hello(height=3, listen="127.0.0.1:1111"), hello(height=7, listen="127.0.0.1:2222")
    got_by_a, got_by_b = await both(exchange_hello(ca, ha), exchange_hello(sb, hb))
    assert got_by_a == hb and got_by_b == ha

    # several messages each way, interleaved, arrive intact and in order
    for i in range(5):
        await ca.send(["ping", i])
        await sb.send(["pong", {"n": i, "blob": os.urandom(100)}])
    for i in range(5):
        assert await recv(sb) == ["ping", i]
        msg = await recv(ca)
        assert msg[0] == "pong" and msg[1]["n"] == i and len(msg[1]["blob"]) == 100
    big = os.urandom(1024 * 1024)
    await sb.send(["blob", big])
    assert await recv(ca) == ["blob", big]


async def test_frames_are_encrypted_on_the_wire(link):
    a, b = PrivateKey.generate(), PrivateKey.generate()
    ca, sb = await sessions(link, a, b)
    secret = b"plaintext-marker-" * 4
    (frame,) = await sealed_frames(ca, ["x", secret])
    assert secret not in frame and codec.encode(["x", secret]) not in frame
    link.client_w.write(frame)
    assert await recv(sb) == ["x", secret]


async def test_expect_peer_match_is_accepted_and_mismatch_fails(link):
    a, b, c = PrivateKey.generate(), PrivateKey.generate(), PrivateKey.generate()

    async def initiator():
        try:
            return await handshake(link.client_r, link.client_w, a, True, expect_peer=c.address)
        finally:
            link.client_w.close()  # what a caller does when the handshake fails

    got_a, got_b = await both(initiator(), handshake(link.server_r, link.server_w, b, False, timeout=STEP))
    assert isinstance(got_a, HandshakeError) and "expected id" in str(got_a)
    # the initiator gave up before signing, so the responder cannot complete either
    assert isinstance(got_b, HandshakeError), got_b


async def test_connecting_to_ourselves_is_refused(link):
    k = PrivateKey.generate()
    got = await both(handshake(link.client_r, link.client_w, k, True),
                     handshake(link.server_r, link.server_w, k, False))
    for g in got:
        assert isinstance(g, HandshakeError) and "ourselves" in str(g)


# -- a peer that cheats in the handshake -------------------------------------------------------

async def fake_peer_handshake(reader, writer, *, claimed_pubkey: bytes, signer: PrivateKey,
                              initiator: bool, role: bytes | None = None) -> None:
    """Follow the handshake frames, claiming `claimed_pubkey` but signing the transcript with
    `signer` (and with `role`, normally the fake's own role letter)."""
    import nacl.public
    eph = nacl.public.PrivateKey.generate()
    mine = [bytes(eph.public_key), claimed_pubkey]
    write_frame(writer, codec.encode(mine))
    await writer.drain()
    theirs = codec.decode(await read_frame(reader, HANDSHAKE_FRAME_LIMIT))
    first, second = (mine, theirs) if initiator else (theirs, mine)
    transcript = sha256(b"stepchain-handshake/1" + first[0] + second[0] + first[1] + second[1])
    role = role if role is not None else (b"I" if initiator else b"R")
    write_frame(writer, codec.encode(signer.sign(transcript + role)))
    await writer.drain()
    await read_frame(reader, HANDSHAKE_FRAME_LIMIT)  # their signature


async def test_fake_peer_following_the_protocol_is_accepted(link):
    """Sanity check of the fake below: with the right key and role it gets through."""
    victim, fake = PrivateKey.generate(), PrivateKey.generate()
    _, s = await both(fake_peer_handshake(link.client_r, link.client_w, claimed_pubkey=fake.pubkey,
                                          signer=fake, initiator=True),
                      handshake(link.server_r, link.server_w, victim, False))
    assert isinstance(s, Session) and s.peer_id == fake.address


@pytest.mark.parametrize("fake_initiates", [True, False])
async def test_peer_signing_with_the_wrong_key_is_refused(link, fake_initiates):
    """An impostor claims B's node key (which it lacks) and signs with its own key."""
    victim, b, impostor = PrivateKey.generate(), PrivateKey.generate(), PrivateKey.generate()
    if fake_initiates:
        fake_rw, victim_rw = (link.client_r, link.client_w), (link.server_r, link.server_w)
    else:
        fake_rw, victim_rw = (link.server_r, link.server_w), (link.client_r, link.client_w)
    _, got = await both(fake_peer_handshake(*fake_rw, claimed_pubkey=b.pubkey, signer=impostor,
                                            initiator=fake_initiates),
                        handshake(*victim_rw, victim, not fake_initiates,
                                  expect_peer=None if fake_initiates else b.address))
    assert isinstance(got, HandshakeError), got
    assert "signature is invalid" in str(got)


async def test_reflected_signature_with_the_wrong_role_is_refused(link):
    """Right key, but the signature is for the other role (a reflection attack's shape)."""
    victim, fake = PrivateKey.generate(), PrivateKey.generate()
    _, got = await both(fake_peer_handshake(link.client_r, link.client_w, claimed_pubkey=fake.pubkey,
                                            signer=fake, initiator=True, role=b"R"),
                        handshake(link.server_r, link.server_w, victim, False))
    assert isinstance(got, HandshakeError) and "signature is invalid" in str(got)


# -- garbage, truncation, silence -----------------------------------------------------------------

@pytest.mark.parametrize("garbage", [
    b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",                        # length header reads as ~1.2 GB
    struct.pack(">I", 5) + b"\xc1\xc1\xc1\xc1\xc1",                # a frame, but not msgpack
    struct.pack(">I", 3) + codec.encode([1, 2])[:3],              # msgpack, but not the key pair
    struct.pack(">I", 2) + b"\x92\x01",                            # truncated msgpack
    struct.pack(">I", len(codec.encode([b"x" * 32, b"y" * 31]))) + codec.encode([b"x" * 32, b"y" * 31]),
], ids=["http", "not-msgpack", "wrong-shape", "truncated", "short-key"])
async def test_garbage_instead_of_a_handshake_is_a_handshake_error(link, garbage):
    link.client_w.write(garbage)
    await link.client_w.drain()
    with pytest.raises(HandshakeError):
        await handshake(link.server_r, link.server_w, PrivateKey.generate(), False, timeout=STEP)


async def test_oversized_handshake_frame_is_refused_without_reading_it(link):
    link.client_w.write(struct.pack(">I", HANDSHAKE_FRAME_LIMIT + 1))  # and never the body
    await link.client_w.drain()
    with pytest.raises(HandshakeError, match="exceeds the limit"):
        await handshake(link.server_r, link.server_w, PrivateKey.generate(), False, timeout=STEP)


async def test_peer_closing_mid_handshake_is_a_handshake_error(link):
    link.client_w.write(struct.pack(">I", 100) + b"\x00" * 10)
    link.client_w.close()
    with pytest.raises(HandshakeError, match="closed"):
        await handshake(link.server_r, link.server_w, PrivateKey.generate(), False, timeout=STEP)


async def test_silent_peer_times_out(link):
    with pytest.raises(HandshakeError, match="timed out"):
        await handshake(link.server_r, link.server_w, PrivateKey.generate(), False, timeout=0.3)


@pytest.mark.parametrize("body", [b"\x81\x90\x00", b"\x91" * 900 + b"\xc0"], ids=["unhashable-key", "deep"])
async def test_handshake_frame_that_breaks_the_decoder_is_a_handshake_error(link, body):
    link.client_w.write(struct.pack(">I", len(body)) + body)
    await link.client_w.drain()
    with pytest.raises(HandshakeError):
        await handshake(link.server_r, link.server_w, PrivateKey.generate(), False, timeout=STEP)


# -- sealed frames: size, tampering, replay, reordering --------------------------------------------

async def test_oversized_frame_header_fails_before_the_body_is_read(link):
    a, b = PrivateKey.generate(), PrivateKey.generate()
    ca, sb = await sessions(link, a, b)
    link.client_w.write(struct.pack(">I", sb.frame_limit + 1))  # no body follows: must not wait for it
    await link.client_w.drain()
    with pytest.raises(FrameTooLarge, match="exceeds the limit"):
        await recv(sb)
    assert issubclass(FrameTooLarge, TransportError)


async def test_custom_frame_limit_applies_to_sealed_frames(link):
    a, b = PrivateKey.generate(), PrivateKey.generate()
    c, s = await both(handshake(link.client_r, link.client_w, a, True, frame_limit=4096),
                      handshake(link.server_r, link.server_w, b, False, frame_limit=1024))
    # the sender refuses to emit a frame over its own limit
    with pytest.raises(FrameTooLarge):
        await c.send(["x", b"\x00" * 5000])
    # a frame under the sender's limit but over the receiver's is refused by the receiver
    await s.send(["ok", 1])
    assert await recv(c) == ["ok", 1]
    c_frames = await sealed_frames(c, ["x", b"\x00" * 2000])
    link.client_w.write(c_frames[0])
    with pytest.raises(FrameTooLarge):
        await recv(s)


async def test_tampered_frame_fails_authentication(link):
    a, b = PrivateKey.generate(), PrivateKey.generate()
    ca, sb = await sessions(link, a, b)
    (frame,) = await sealed_frames(ca, ["txs", [b"payload"]])
    tampered = bytearray(frame)
    tampered[len(frame) // 2 + 2] ^= 0x01  # a byte inside the sealed body
    link.client_w.write(bytes(tampered))
    with pytest.raises(TransportError, match="failed authentication"):
        await recv(sb)


async def test_truncated_sealed_frame_fails_authentication(link):
    a, b = PrivateKey.generate(), PrivateKey.generate()
    ca, sb = await sessions(link, a, b)
    (frame,) = await sealed_frames(ca, ["x", 1])
    body = frame[4:-1]
    link.client_w.write(struct.pack(">I", len(body)) + body)
    with pytest.raises(TransportError, match="failed authentication"):
        await recv(sb)


async def test_replayed_frame_fails(link):
    a, b = PrivateKey.generate(), PrivateKey.generate()
    ca, sb = await sessions(link, a, b)
    (frame,) = await sealed_frames(ca, ["vote", 1])
    link.client_w.write(frame + frame)  # the same sealed bytes twice
    assert await recv(sb) == ["vote", 1]
    with pytest.raises(TransportError, match="failed authentication"):
        await recv(sb)


async def test_reordered_frames_fail(link):
    a, b = PrivateKey.generate(), PrivateKey.generate()
    ca, sb = await sessions(link, a, b)
    first, second = await sealed_frames(ca, ["n", 1], ["n", 2])
    link.client_w.write(second + first)
    with pytest.raises(TransportError, match="failed authentication"):
        await recv(sb)


async def test_dropped_frame_fails(link):
    a, b = PrivateKey.generate(), PrivateKey.generate()
    ca, sb = await sessions(link, a, b)
    _first, second = await sealed_frames(ca, ["n", 1], ["n", 2])
    link.client_w.write(second)
    with pytest.raises(TransportError, match="failed authentication"):
        await recv(sb)


async def test_frame_reflected_back_to_its_sender_fails(link):
    """Each direction has its own key: echoing a client's frame back at it does not open."""
    a, b = PrivateKey.generate(), PrivateKey.generate()
    ca, sb = await sessions(link, a, b)
    (frame,) = await sealed_frames(ca, ["n", 1])
    link.server_w.write(frame)
    with pytest.raises(TransportError, match="failed authentication"):
        await recv(ca)


async def test_frame_from_another_session_fails(link):
    """A frame recorded on one session does not open on another between the same keys."""
    a, b = PrivateKey.generate(), PrivateKey.generate()
    other = await open_link()
    try:
        c1, _ = await sessions(other, a, b)
        (frame,) = await sealed_frames(c1, ["n", 1])
    finally:
        other.close()
    _c2, s2 = await sessions(link, a, b)
    link.client_w.write(frame)
    with pytest.raises(TransportError, match="failed authentication"):
        await recv(s2)


class _RawCodec:
    """Stand-in for transport's codec module that can put arbitrary bytes in a sealed body."""

    def __init__(self, raw: bytes):
        self.raw = raw
        self.CodecError = codec.CodecError
        self.decode = codec.decode

    def encode(self, value):
        return self.raw if value == "RAW" else codec.encode(value)


async def test_sealed_body_that_is_not_canonical_msgpack_is_a_transport_error(link, monkeypatch):
    a, b = PrivateKey.generate(), PrivateKey.generate()
    ca, sb = await sessions(link, a, b)
    monkeypatch.setattr(transport, "codec", _RawCodec(b"\xc1garbage"))
    await ca.send("RAW")
    with pytest.raises(TransportError, match="malformed message"):
        await recv(sb)


@pytest.mark.parametrize("body", [b"\x81\x90\x00", b"\x91" * 900 + b"\xc0"], ids=["unhashable-key", "deep"])
async def test_sealed_body_that_breaks_the_decoder_is_a_transport_error(link, monkeypatch, body):
    a, b = PrivateKey.generate(), PrivateKey.generate()
    ca, sb = await sessions(link, a, b)
    monkeypatch.setattr(transport, "codec", _RawCodec(body))
    await ca.send("RAW")
    with pytest.raises(TransportError):
        await recv(sb)


# -- hello --------------------------------------------------------------------------------------

@pytest.mark.parametrize("field,theirs,expect", [
    ("chain_id", hello(chain_id="otherchain"), "chain_id"),
    ("genesis", hello(genesis=sha256(b"other genesis")), "genesis hash differs"),
])
async def test_hello_mismatch_fails_on_both_sides_naming_it(link, field, theirs, expect):
    a, b = PrivateKey.generate(), PrivateKey.generate()
    ca, sb = await sessions(link, a, b)
    got_a, got_b = await both(exchange_hello(ca, hello()), exchange_hello(sb, theirs))
    for g in (got_a, got_b):
        assert isinstance(g, HandshakeError), g
        assert "hello mismatch" in str(g) and expect in str(g)
    if field == "chain_id":
        assert "'otherchain'" in str(got_a) and "'testchain'" in str(got_a)
        assert "'testchain'" in str(got_b) and "'otherchain'" in str(got_b)
    # each side also told the other why: a disconnect naming the mismatch follows the hello
    for s in (ca, sb):
        msg = await recv(s)
        assert msg[0] == "disconnect" and expect in msg[1]


async def test_protocol_version_mismatch_is_named_on_both_sides(link):
    """A peer speaking another protocol version: we refuse it naming the version, and it is told
    why (its own build, with its own PROTOCOL_VERSION, would refuse us as well)."""
    a, b = PrivateKey.generate(), PrivateKey.generate()
    ca, sb = await sessions(link, a, b)
    future = dict(hello(), version=PROTOCOL_VERSION + 1)
    got_a, _ = await both(exchange_hello(ca, hello()), exchange_hello(sb, future))
    assert isinstance(got_a, HandshakeError) and "protocol version" in str(got_a)
    # the newer peer receives the refusal and its reason
    seen = []
    while True:
        msg = await recv(sb)
        seen.append(msg)
        if msg[0] == "disconnect":
            break
    assert "protocol version" in seen[-1][1], seen


async def test_peer_refusing_us_is_reported(link):
    a, b = PrivateKey.generate(), PrivateKey.generate()
    ca, sb = await sessions(link, a, b)
    await sb.send(["disconnect", "too many peers"])
    with pytest.raises(HandshakeError, match="peer refused us: too many peers"):
        await asyncio.wait_for(exchange_hello(ca, hello()), STEP)


@pytest.mark.parametrize("first", [["ping", 1], "hello", ["hello"], ["hello", "nope"],
                                   ["hello", {"chain_id": "testchain", "genesis_hash": GENESIS,
                                              "version": PROTOCOL_VERSION}]],
                         ids=["not-hello", "bare", "short", "not-a-dict", "missing-fields"])
async def test_malformed_hello_is_refused(link, first):
    a, b = PrivateKey.generate(), PrivateKey.generate()
    ca, sb = await sessions(link, a, b)
    await sb.send(first)
    with pytest.raises(HandshakeError):
        await asyncio.wait_for(exchange_hello(ca, hello()), STEP)


def test_frames_sealed_without_pynacls_private_module_are_the_same_bytes(monkeypatch):
    """The fast path seals into our own buffer through libsodium's cffi module; a pynacl
    without it falls back to the public SecretBox, with the same frames and the same refusals."""
    import os

    from p2p import transport
    key, nonce, body = os.urandom(32), bytes(24), os.urandom(5000)
    fast = transport.seal_frame(key, body, nonce)
    monkeypatch.setattr(transport, "lib", None)
    assert transport.seal_frame(key, body, nonce) == fast
    sealed = bytes(fast[4:])
    assert transport.open_box(key, sealed, nonce) == body
    assert transport.open_box(key, sealed[:-1] + bytes([sealed[-1] ^ 1]), nonce) is None
