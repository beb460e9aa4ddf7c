"""Wire types: transactions, blocks, votes, commits and evidence, as frozen dataclasses.

Each type converts to and from a plain list (``to_obj`` / ``from_obj``) that the codec
encodes; ``from_obj`` checks every field's type and size, because its input comes from
the network. Signed types expose ``sign_bytes`` so that exactly one byte string is ever
signed for a given meaning.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Any

from . import codec, merkle
from .crypto import ADDRESS_LEN, PUBKEY_LEN, SIGNATURE_LEN, sha256

HASH_LEN = 32
MAX_TX_BYTES = 64 * 1024
# A block must reach every peer in one P2P frame and decode under the codec's size limit
# (both 4 MiB), wrapped in a proposal or next to its commit in a sync reply: 3 MiB leaves room.
MAX_BLOCK_BYTES = 3 * 1024 * 1024
PREVOTE, PRECOMMIT = "prevote", "precommit"


class DecodeError(ValueError):
    """A structurally invalid message: wrong shape, type or size."""


def _field(value: Any, kind: type, name: str, size: int | None = None) -> Any:
    if type(value) is not kind:
        raise DecodeError(f"{name}: expected {kind.__name__}, got {type(value).__name__}")
    if size is not None and len(value) != size:
        raise DecodeError(f"{name}: expected {size} bytes, got {len(value)}")
    if kind is int and value < 0:
        raise DecodeError(f"{name}: must not be negative")
    return value


def _fields(obj: Any, n: int, name: str) -> list:
    if type(obj) is not list or len(obj) != n:
        raise DecodeError(f"{name}: expected a list of {n} fields")
    return obj


@dataclass(frozen=True)
class Tx:
    chain_id: str
    kind: str
    sender: bytes  # ed25519 public key; the address is derived from it
    nonce: int
    fee: int
    body: dict
    signature: bytes = b""

    def sign_bytes(self) -> bytes:
        return codec.encode([self.chain_id, self.kind, self.sender, self.nonce, self.fee, self.body])

    def to_obj(self) -> list:
        return [self.chain_id, self.kind, self.sender, self.nonce, self.fee, self.body, self.signature]

    @cached_property
    def wire(self) -> bytes:
        return codec.encode(self.to_obj())

    @cached_property
    def hash(self) -> bytes:
        return sha256(self.wire)

    @classmethod
    def from_obj(cls, obj: Any) -> "Tx":
        f = _fields(obj, 7, "tx")
        return cls(
            chain_id=_field(f[0], str, "tx.chain_id"),
            kind=_field(f[1], str, "tx.kind"),
            sender=_field(f[2], bytes, "tx.sender", PUBKEY_LEN),
            nonce=_field(f[3], int, "tx.nonce"),
            fee=_field(f[4], int, "tx.fee"),
            body=_field(f[5], dict, "tx.body"),
            signature=_field(f[6], bytes, "tx.signature", SIGNATURE_LEN),
        )

    @classmethod
    def decode(cls, data: bytes) -> "Tx":
        if len(data) > MAX_TX_BYTES:
            raise DecodeError(f"tx of {len(data)} bytes exceeds the limit of {MAX_TX_BYTES}")
        tx = cls.from_obj(codec.decode(data, MAX_TX_BYTES))
        tx.__dict__["wire"] = bytes(data)  # canonical, so identical to re-encoding
        return tx


@dataclass(frozen=True)
class Vote:
    kind: str  # PREVOTE or PRECOMMIT
    height: int
    round: int
    block_hash: bytes  # b"" is a vote for nil
    validator: bytes  # address
    signature: bytes = b""

    def sign_bytes(self, chain_id: str) -> bytes:
        return codec.encode([chain_id, "vote", self.kind, self.height, self.round, self.block_hash])

    def to_obj(self) -> list:
        return [self.kind, self.height, self.round, self.block_hash, self.validator, self.signature]

    @classmethod
    def from_obj(cls, obj: Any) -> "Vote":
        f = _fields(obj, 6, "vote")
        kind = _field(f[0], str, "vote.kind")
        if kind not in (PREVOTE, PRECOMMIT):
            raise DecodeError(f"vote.kind: unknown {kind!r}")
        block_hash = _field(f[3], bytes, "vote.block_hash")
        if len(block_hash) not in (0, HASH_LEN):
            raise DecodeError("vote.block_hash: expected 0 or 32 bytes")
        return cls(kind, _field(f[1], int, "vote.height"), _field(f[2], int, "vote.round"), block_hash,
                   _field(f[4], bytes, "vote.validator", ADDRESS_LEN),
                   _field(f[5], bytes, "vote.signature", SIGNATURE_LEN))


@dataclass(frozen=True)
class Commit:
    """2/3+ precommits for one block: the proof that the block is final."""
    height: int
    round: int
    block_hash: bytes
    signatures: tuple[tuple[bytes, bytes], ...]  # (validator address, signature), sorted by address

    def votes(self) -> list[Vote]:
        return [Vote(PRECOMMIT, self.height, self.round, self.block_hash, v, s) for v, s in self.signatures]

    def to_obj(self) -> list:
        return [self.height, self.round, self.block_hash, [[v, s] for v, s in self.signatures]]

    @classmethod
    def from_obj(cls, obj: Any) -> "Commit":
        f = _fields(obj, 4, "commit")
        sigs = _field(f[3], list, "commit.signatures")
        pairs = tuple((_field(p[0], bytes, "commit.validator", ADDRESS_LEN),
                       _field(p[1], bytes, "commit.signature", SIGNATURE_LEN))
                      for p in (_fields(x, 2, "commit.signature") for x in sigs))
        return cls(_field(f[0], int, "commit.height"), _field(f[1], int, "commit.round"),
                   _field(f[2], bytes, "commit.block_hash", HASH_LEN), pairs)


@dataclass(frozen=True)
class DuplicateVoteEvidence:
    """Two signed votes by one validator for the same height, round and step but different blocks."""
    vote_a: Vote
    vote_b: Vote

    def to_obj(self) -> list:
        return [self.vote_a.to_obj(), self.vote_b.to_obj()]

    @classmethod
    def from_obj(cls, obj: Any) -> "DuplicateVoteEvidence":
        f = _fields(obj, 2, "evidence")
        return cls(Vote.from_obj(f[0]), Vote.from_obj(f[1]))

    @cached_property
    def hash(self) -> bytes:
        return sha256(codec.encode(self.to_obj()))


@dataclass(frozen=True)
class Header:
    chain_id: str
    height: int
    time_ms: int
    prev_hash: bytes
    txs_root: bytes
    evidence_root: bytes
    last_commit_hash: bytes
    app_hash: bytes  # state after this block's txs
    validators_hash: bytes
    proposer: bytes
    beacon: bytes
    beacon_sig: bytes  # proposer's signature over (chain_id, height, previous beacon)

    def to_obj(self) -> list:
        return [self.chain_id, self.height, self.time_ms, self.prev_hash, self.txs_root,
                self.evidence_root, self.last_commit_hash, self.app_hash, self.validators_hash,
                self.proposer, self.beacon, self.beacon_sig]

    @cached_property
    def hash(self) -> bytes:
        return sha256(codec.encode(self.to_obj()))

    @classmethod
    def from_obj(cls, obj: Any) -> "Header":
        f = _fields(obj, 12, "header")
        h = [_field(f[i], bytes, f"header.{name}", HASH_LEN)
             for i, name in ((3, "prev_hash"), (4, "txs_root"), (5, "evidence_root"), (6, "last_commit_hash"),
                            (7, "app_hash"), (8, "validators_hash"))]
        return cls(_field(f[0], str, "header.chain_id"), _field(f[1], int, "header.height"),
                   _field(f[2], int, "header.time_ms"), *h,
                   _field(f[9], bytes, "header.proposer", ADDRESS_LEN),
                   _field(f[10], bytes, "header.beacon", HASH_LEN),
                   _field(f[11], bytes, "header.beacon_sig", SIGNATURE_LEN))


def beacon_sign_bytes(chain_id: str, height: int, prev_beacon: bytes) -> bytes:
    return codec.encode([chain_id, "beacon", height, prev_beacon])


def next_beacon(prev_beacon: bytes, beacon_sig: bytes) -> bytes:
    return sha256(prev_beacon + beacon_sig)


def commit_hash(commit: "Commit | None") -> bytes:
    return sha256(codec.encode(commit.to_obj() if commit else None))


@dataclass(frozen=True)
class Block:
    header: Header
    txs: tuple[Tx, ...]
    last_commit: Commit | None
    evidence: tuple[DuplicateVoteEvidence, ...] = ()

    @property
    def hash(self) -> bytes:
        return self.header.hash

    @property
    def height(self) -> int:
        return self.header.height

    def to_obj(self) -> list:
        return [self.header.to_obj(), [t.to_obj() for t in self.txs],
                self.last_commit.to_obj() if self.last_commit else None,
                [e.to_obj() for e in self.evidence]]

    def encode(self) -> bytes:
        return codec.encode(self.to_obj())

    def size_error(self) -> str | None:
        """Why this block cannot travel (it would not encode, or is over MAX_BLOCK_BYTES), or None."""
        try:
            size = len(self.encode())
        except codec.CodecError as exc:
            return f"block does not encode: {exc}"
        return None if size <= MAX_BLOCK_BYTES else f"block of {size} bytes exceeds {MAX_BLOCK_BYTES}"

    @classmethod
    def from_obj(cls, obj: Any) -> "Block":
        f = _fields(obj, 4, "block")
        txs = tuple(Tx.from_obj(t) for t in _field(f[1], list, "block.txs"))
        commit = None if f[2] is None else Commit.from_obj(f[2])
        evidence = tuple(DuplicateVoteEvidence.from_obj(e) for e in _field(f[3], list, "block.evidence"))
        return cls(Header.from_obj(f[0]), txs, commit, evidence)

    @classmethod
    def decode(cls, data: bytes) -> "Block":
        return cls.from_obj(codec.decode(data))

    def body_roots_match(self) -> bool:
        """The header commits to this exact list of txs, evidence and last commit."""
        h = self.header
        return (h.txs_root == merkle.root([t.hash for t in self.txs])
                and h.evidence_root == merkle.root([e.hash for e in self.evidence])
                and h.last_commit_hash == commit_hash(self.last_commit))


@dataclass(frozen=True)
class Proposal:
    height: int
    round: int
    pol_round: int  # -1 when the proposer has no proof-of-lock for this block
    block: Block
    signature: bytes = b""

    def sign_bytes(self, chain_id: str) -> bytes:
        return codec.encode([chain_id, "proposal", self.height, self.round, self.pol_round, self.block.hash])

    def to_obj(self) -> list:
        return [self.height, self.round, self.pol_round, self.block.to_obj(), self.signature]

    @classmethod
    def from_obj(cls, obj: Any) -> "Proposal":
        f = _fields(obj, 5, "proposal")
        if type(f[2]) is not int or f[2] < -1:
            raise DecodeError("proposal.pol_round: expected an int >= -1")
        return cls(_field(f[0], int, "proposal.height"), _field(f[1], int, "proposal.round"), f[2],
                   Block.from_obj(f[3]), _field(f[4], bytes, "proposal.signature", SIGNATURE_LEN))
