"""Typed access to chain state, layered so that a failed tx leaves no trace.

State is a flat key → canonical-bytes map. A ``View`` records writes over a parent
(committed state or another view); ``commit()`` pushes them into the parent, and a view
that is simply dropped changes nothing. That is how a tx is all-or-nothing and how a block
produces one write-set for the store.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Protocol

from . import codec


class Readable(Protocol):
    def get(self, key: bytes) -> bytes | None: ...


class View:
    __slots__ = ("parent", "writes")

    def __init__(self, parent: "Readable | Mapping[bytes, bytes]"):
        self.parent = parent
        self.writes: dict[bytes, bytes | None] = {}

    def get(self, key: bytes) -> bytes | None:
        if key in self.writes:
            return self.writes[key]
        return self.parent.get(key)

    def put(self, key: bytes, value: bytes | None) -> None:
        self.writes[key] = value

    def commit(self) -> None:
        if not isinstance(self.parent, View):
            raise TypeError("only a nested view can be committed into its parent")
        self.parent.writes.update(self.writes)

    def read(self, key: bytes, default=None):
        raw = self.get(key)
        return default if raw is None else codec.decode(raw)

    def write(self, key: bytes, value) -> None:
        self.put(key, None if value is None else codec.encode(value))


def write_set_hash(writes: Mapping[bytes, bytes | None]) -> bytes:
    from .crypto import sha256
    return sha256(codec.encode([[k, writes[k]] for k in sorted(writes)]))


# -- keys ----------------------------------------------------------------------------------

def k_account(addr: bytes) -> bytes: return b"acct/" + addr
def k_pubkey(addr: bytes) -> bytes: return b"pubkey/" + addr
def k_stake(addr: bytes, role: str) -> bytes: return b"stake/" + addr + b"/" + role.encode()
def k_unbonding(addr: bytes) -> bytes: return b"unbond/" + addr
def k_unbonding_due(height: int) -> bytes: return b"unbond_due/" + height.to_bytes(8, "big")
def k_jail(addr: bytes) -> bytes: return b"jail/" + addr
def k_liveness(addr: bytes) -> bytes: return b"missed/" + addr


K_PARAMS = b"params"
K_CHAIN = b"chain"            # [height, beacon, time_ms] of the last applied block
K_SUPPLY = b"supply"          # tokens created at genesis
K_BURNED = b"burned"          # fees and burned slashes
K_VALSET = b"valset"          # validators that sign the next block
K_LAST_VALSET = b"last_valset"  # validators that signed the last block
K_VALSET_PENDING = b"valset_pending"  # [[effective_height, valset], ...]
def k_candidates(role: str) -> bytes: return b"candidates/" + role.encode()  # sorted, stake > 0


K_CANDIDATES = k_candidates("validator")
K_VALSET_DIRTY = b"valset_dirty"  # set during a block when stakes or jails changed


# -- typed accessors -----------------------------------------------------------------------

@dataclass(frozen=True)
class Account:
    balance: int = 0
    nonce: int = 0


def get_account(v: View, addr: bytes) -> Account:
    raw = v.read(k_account(addr))
    return Account(*raw) if raw else Account()


def set_account(v: View, addr: bytes, acct: Account) -> None:
    v.write(k_account(addr), [acct.balance, acct.nonce])


def add_balance(v: View, addr: bytes, amount: int) -> None:
    a = get_account(v, addr)
    set_account(v, addr, Account(a.balance + amount, a.nonce))


def get_stake(v: View, addr: bytes, role: str) -> int:
    return v.read(k_stake(addr, role), 0)


def set_stake(v: View, addr: bytes, role: str, amount: int) -> None:
    v.write(k_stake(addr, role), amount if amount else None)


def get_params(v: View) -> dict[str, int]:
    return v.read(K_PARAMS)


def get_chain(v: View) -> tuple[int, bytes, int]:
    height, beacon, time_ms = v.read(K_CHAIN)
    return height, beacon, time_ms


def add_burned(v: View, amount: int) -> None:
    v.write(K_BURNED, v.read(K_BURNED, 0) + amount)


@dataclass(frozen=True)
class Validator:
    address: bytes
    pubkey: bytes
    power: int


def get_valset(v: View, key: bytes = K_VALSET) -> list[Validator]:
    return [Validator(a, p, w) for a, p, w in v.read(key, [])]


def encode_valset(vals: list[Validator]) -> list:
    return [[x.address, x.pubkey, x.power] for x in vals]
