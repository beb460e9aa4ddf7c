"""Framed, authenticated, encrypted TCP sessions.

Every frame is a 4-byte big-endian length and a body. The handshake frames are plain:
each side sends an ephemeral X25519 key and its ed25519 node key, then its signature over
the transcript (both ephemeral keys and both node keys, in initiator/responder order), so
each side proves it holds its node key and a man in the middle cannot splice sessions.
After that every body is sealed with SecretBox, one key per direction derived from the
X25519 secret and the transcript, and a counter nonce, so a replayed, dropped or reordered
frame fails to open. The first sealed message each way is a hello; a mismatch of chain,
genesis or protocol closes the session with a reason that both sides log.
"""
from __future__ import annotations

import asyncio
import ctypes
import struct

import nacl.bindings
import nacl.exceptions
import nacl.public
import nacl.secret
try:  # libsodium itself, to seal into and open from our own buffers (pynacl's cffi module)
    from nacl._sodium import ffi, lib
except ImportError:  # a pynacl without it: its public API, a few copies a frame slower
    ffi = lib = None

from consensus import codec
from consensus.crypto import PrivateKey, address_of, sha256, verify

PROTOCOL_VERSION = 2  # 2: blobs fetched by leaf lists and chunk ranges (p2p/blobfetch.py)
DEFAULT_FRAME_LIMIT = 4 * 1024 * 1024
HANDSHAKE_FRAME_LIMIT = 1024
HANDSHAKE_TIMEOUT = 10.0


class TransportError(Exception):
    """The session cannot continue: bad frame, bad crypto, closed, or refused hello."""


class HandshakeError(TransportError):
    pass


class FrameTooLarge(TransportError):
    pass


async def read_frame(reader: asyncio.StreamReader, limit: int) -> bytes:
    try:
        header = await reader.readexactly(4)
        (length,) = struct.unpack(">I", header)
        if length > limit:
            raise FrameTooLarge(f"frame of {length} bytes exceeds the limit of {limit}")
        return await reader.readexactly(length)
    except (asyncio.IncompleteReadError, ConnectionError) as exc:
        raise TransportError(f"connection closed ({type(exc).__name__})") from None


def write_frame(writer: asyncio.StreamWriter, body: bytes) -> None:
    writer.write(struct.pack(">I", len(body)) + body)


def _nonce(counter: int) -> bytes:
    return counter.to_bytes(nacl.secret.SecretBox.NONCE_SIZE, "big")


MAC = nacl.secret.SecretBox.MACBYTES


def keep_frame_buffers() -> None:
    """Let freed frame-sized buffers be reused instead of going back to the kernel.

    glibc returns every freed buffer of about 1 MiB to the kernel (it is mmapped, or the heap
    top is trimmed), so each 1 MiB frame cost some 800 page faults on the receiving side, a
    fifth of its CPU while a blob arrived. Buffers under 16 MiB now come from the heap, and up
    to 64 MiB of it stays mapped. Process-wide; a no-op without glibc's mallopt."""
    try:
        libc = ctypes.CDLL(None)
        libc.mallopt(-1, 64 << 20)  # M_TRIM_THRESHOLD
        libc.mallopt(-3, 16 << 20)  # M_MMAP_THRESHOLD
    except (OSError, AttributeError):
        pass


def seal_frame(key: bytes, body: bytes, nonce: bytes) -> bytearray:
    """A whole frame, length and SecretBox box (MAC then ciphertext), sealed in one buffer.
    The same bytes as SecretBox(key).encrypt(body, nonce).ciphertext behind a length, without
    its copies (output, nonce prefix, frame concatenation: three per 1 MiB blob chunk)."""
    if lib is None:
        return bytearray(struct.pack(">I", MAC + len(body)) + nacl.secret.SecretBox(key).encrypt(
            bytes(body), nonce).ciphertext)
    frame = bytearray(4 + MAC + len(body))
    struct.pack_into(">I", frame, 0, MAC + len(body))
    if lib.crypto_secretbox_easy(ffi.from_buffer("unsigned char[]", frame) + 4, body, len(body), nonce, key):
        raise TransportError("sealing failed")
    return frame


def open_box(key: bytes, sealed: bytes, nonce: bytes) -> bytearray | None:
    """The plaintext of a sealed body, or None if it fails authentication."""
    if len(sealed) < MAC:
        return None
    if lib is None:
        try:
            return bytearray(nacl.secret.SecretBox(key).decrypt(bytes(sealed), nonce))
        except nacl.exceptions.CryptoError:
            return None
    out = bytearray(len(sealed) - MAC)
    rc = lib.crypto_secretbox_open_easy(ffi.from_buffer("unsigned char[]", out), sealed, len(sealed), nonce, key)
    return out if rc == 0 else None


class Session:
    """An established session: send/recv canonical values, sealed per direction."""

    def __init__(self, reader, writer, peer_pubkey: bytes, send_key: bytes, recv_key: bytes,
                 initiator: bool, frame_limit: int):
        self.reader, self.writer = reader, writer
        self.peer_pubkey = peer_pubkey
        self.peer_id = address_of(peer_pubkey)
        self.initiator = initiator
        self.frame_limit = frame_limit
        self._send_key, self._recv_key = send_key, recv_key
        self._send_n = self._recv_n = 0
        self._send_lock = asyncio.Lock()

    @property
    def remote(self) -> str:
        peer = self.writer.get_extra_info("peername")
        return f"{peer[0]}:{peer[1]}" if peer else "?"

    async def send(self, value) -> None:
        body = codec.encode(value)
        if len(body) + nacl.secret.SecretBox.MACBYTES > self.frame_limit:
            raise FrameTooLarge(f"refusing to send a {len(body)}-byte message")
        async with self._send_lock:
            frame = seal_frame(self._send_key, body, _nonce(self._send_n))
            self._send_n += 1
            self.writer.write(frame)
            await self.writer.drain()

    async def recv(self):
        sealed = await read_frame(self.reader, self.frame_limit)
        body = open_box(self._recv_key, sealed, _nonce(self._recv_n))
        if body is None:
            raise TransportError("frame failed authentication")
        self._recv_n += 1
        try:
            return codec.decode(body, self.frame_limit)
        except codec.CodecError as exc:
            raise TransportError(f"malformed message: {exc}") from None

    def close(self) -> None:
        if not self.writer.is_closing():
            self.writer.close()


async def _exchange(reader, writer, value) -> object:
    write_frame(writer, codec.encode(value))
    await writer.drain()
    try:
        return codec.decode(await read_frame(reader, HANDSHAKE_FRAME_LIMIT), HANDSHAKE_FRAME_LIMIT)
    except codec.CodecError as exc:
        raise HandshakeError(f"malformed handshake: {exc}") from None


async def _handshake(reader, writer, node_key: PrivateKey, initiator: bool,
                     expect_peer: bytes | None, frame_limit: int) -> Session:
    eph = nacl.public.PrivateKey.generate()
    mine = [bytes(eph.public_key), node_key.pubkey]
    theirs = await _exchange(reader, writer, mine)
    if (type(theirs) is not list or len(theirs) != 2
            or not all(type(x) is bytes and len(x) == 32 for x in theirs)):
        raise HandshakeError("malformed handshake keys")
    if theirs[1] == node_key.pubkey:
        raise HandshakeError("connected to ourselves")
    if expect_peer is not None and address_of(theirs[1]) != expect_peer:
        raise HandshakeError("peer's node key does not match the expected id")
    first, second = (mine, theirs) if initiator else (theirs, mine)
    transcript = sha256(b"stepchain-handshake/1" + first[0] + second[0] + first[1] + second[1])
    my_role, their_role = (b"I", b"R") if initiator else (b"R", b"I")
    their_sig = await _exchange(reader, writer, node_key.sign(transcript + my_role))
    if type(their_sig) is not bytes or not verify(theirs[1], transcript + their_role, their_sig):
        raise HandshakeError("peer's transcript signature is invalid")
    shared = nacl.bindings.crypto_scalarmult(bytes(eph), theirs[0])
    k_i2r, k_r2i = sha256(b"i2r" + shared + transcript), sha256(b"r2i" + shared + transcript)
    send_key, recv_key = (k_i2r, k_r2i) if initiator else (k_r2i, k_i2r)
    return Session(reader, writer, theirs[1], send_key, recv_key, initiator, frame_limit)


async def handshake(reader, writer, node_key: PrivateKey, initiator: bool, expect_peer: bytes | None = None,
                    frame_limit: int = DEFAULT_FRAME_LIMIT, timeout: float = HANDSHAKE_TIMEOUT) -> Session:
    try:
        return await asyncio.wait_for(_handshake(reader, writer, node_key, initiator, expect_peer, frame_limit),
                                      timeout)
    except asyncio.TimeoutError:
        raise HandshakeError("handshake timed out") from None
    except TransportError as exc:
        raise HandshakeError(str(exc)) from None


def make_hello(chain_id: str, genesis_hash: bytes, height: int, listen: str) -> dict:
    return {"chain_id": chain_id, "genesis_hash": genesis_hash, "version": PROTOCOL_VERSION,
            "height": height, "listen": listen}


def hello_mismatch(mine: dict, theirs) -> str | None:
    """Why a peer's hello is unacceptable, or None."""
    if type(theirs) is not dict:
        return "malformed hello"
    if theirs.get("version") != mine["version"]:
        return f"protocol version {theirs.get('version')!r}, expected {mine['version']}"
    if theirs.get("chain_id") != mine["chain_id"]:
        return f"chain_id {theirs.get('chain_id')!r}, expected {mine['chain_id']!r}"
    if theirs.get("genesis_hash") != mine["genesis_hash"]:
        return "genesis hash differs"
    if type(theirs.get("height")) is not int or type(theirs.get("listen")) is not str:
        return "malformed hello"
    return None


async def exchange_hello(session: Session, hello: dict) -> dict:
    """Send our hello, read theirs; on mismatch tell the peer why and raise."""
    await session.send(["hello", hello])
    msg = await asyncio.wait_for(session.recv(), HANDSHAKE_TIMEOUT)
    if type(msg) is list and len(msg) == 2 and msg[0] == "disconnect":
        raise HandshakeError(f"peer refused us: {msg[1]}")
    if type(msg) is not list or len(msg) != 2 or msg[0] != "hello":
        raise HandshakeError("expected a hello")
    why = hello_mismatch(hello, msg[1])
    if why:
        try:
            await session.send(["disconnect", why])
        except (TransportError, ConnectionError):
            pass
        raise HandshakeError(f"hello mismatch: {why}")
    return msg[1]
