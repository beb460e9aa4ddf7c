"""ed25519 keys (pynacl), addresses and hashes.

An address is the first 20 bytes of sha256(pubkey), shown as ``sc1`` + 40 hex digits.
ed25519 signatures are deterministic, which the beacon relies on: a proposer can withhold
its signature but cannot grind for a different one.
"""
from __future__ import annotations

import hashlib

import nacl.bindings
import nacl.exceptions
import nacl.signing

ADDRESS_PREFIX = "sc1"
ADDRESS_LEN = 20
PUBKEY_LEN = 32
SIGNATURE_LEN = 64


def sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def address_of(pubkey: bytes) -> bytes:
    return sha256(pubkey)[:ADDRESS_LEN]


def format_address(addr: bytes) -> str:
    return ADDRESS_PREFIX + addr.hex()


def parse_address(text: str) -> bytes:
    """Parse ``sc1<hex>``; raise ValueError with a message a user can act on."""
    if not text.startswith(ADDRESS_PREFIX):
        raise ValueError(f"not an address: {text!r} (addresses look like sc1 followed by 40 hex digits)")
    try:
        raw = bytes.fromhex(text[len(ADDRESS_PREFIX):])
    except ValueError:
        raise ValueError(f"not an address: {text!r} (bad hex)") from None
    if len(raw) != ADDRESS_LEN:
        raise ValueError(f"not an address: {text!r} (expected 40 hex digits)")
    return raw


class PrivateKey:
    """An ed25519 signing key. Its repr never shows the secret."""

    __slots__ = ("_sk", "pubkey", "address")

    def __init__(self, seed: bytes):
        if len(seed) != 32:
            raise ValueError("an ed25519 seed is 32 bytes")
        self._sk = nacl.signing.SigningKey(seed)
        self.pubkey: bytes = bytes(self._sk.verify_key)
        self.address: bytes = address_of(self.pubkey)

    @classmethod
    def generate(cls) -> "PrivateKey":
        return cls(bytes(nacl.signing.SigningKey.generate()))

    def seed(self) -> bytes:
        return bytes(self._sk)

    def sign(self, message: bytes) -> bytes:
        return self._sk.sign(message).signature

    def __repr__(self) -> str:
        return f"PrivateKey({format_address(self.address)})"


def verify(pubkey: bytes, message: bytes, signature: bytes) -> bool:
    """True when signature is pubkey's ed25519 signature of message."""
    if len(pubkey) != PUBKEY_LEN or len(signature) != SIGNATURE_LEN:
        return False
    try:
        nacl.bindings.crypto_sign_open(signature + message, pubkey)
        return True
    except (nacl.exceptions.BadSignatureError, ValueError, TypeError):
        return False
