"""Every tx kind's body, field by field: what a tx may carry at all, before any state is read.

A tx that breaks its schema can never execute, so a node refuses it at the door (and blames
the peer that relayed it) and a validator refuses a block that holds one. The schema is the
whole shape: exact field names, exact types, lengths and ranges, and for a job spec the
registry's argument types. Nothing free-form, so a body is at most a few levels deep and
small, whatever its sender wanted.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping

from .crypto import ADDRESS_LEN
from .genesis import ROLES
from .hashchain import MAX_LENGTH as MAX_CHAIN

HASH_LEN = 32
MAX_AMOUNT = 2**63 - 1   # supply is below 2**63, so no honest amount is larger
MAX_INTERVALS = 256      # a job's leaves less one (consensus/jobs/spec.py LIMITS)
MAX_PROOF = 32           # Merkle proof length: far above log2 of any leaf count a job allows


class SchemaError(ValueError):
    """A tx body that no state could make valid."""


@dataclass(frozen=True)
class Bytes:
    size: int

    def check(self, name: str, value: Any) -> None:
        if type(value) is not bytes or len(value) != self.size:
            raise SchemaError(f"{name} must be {self.size} bytes")


@dataclass(frozen=True)
class Int:
    lo: int = 0
    hi: int = MAX_AMOUNT

    def check(self, name: str, value: Any) -> None:
        if type(value) is not int or not self.lo <= value <= self.hi:
            raise SchemaError(f"{name} must be an integer in [{self.lo}, {self.hi}]")


@dataclass(frozen=True)
class OneOf:
    options: tuple[str, ...]

    def check(self, name: str, value: Any) -> None:
        if type(value) is not str or value not in self.options:
            raise SchemaError(f"{name} must be one of {', '.join(self.options)}")


@dataclass(frozen=True)
class Bool:
    def check(self, name: str, value: Any) -> None:
        if type(value) is not bool:
            raise SchemaError(f"{name} must be true or false")


@dataclass(frozen=True)
class Hashes:
    """A Merkle proof: a short list of 32-byte hashes."""
    max_len: int = MAX_PROOF

    def check(self, name: str, value: Any) -> None:
        if type(value) is not list or len(value) > self.max_len \
                or not all(type(h) is bytes and len(h) == HASH_LEN for h in value):
            raise SchemaError(f"{name} must be a list of at most {self.max_len} 32-byte hashes")


@dataclass(frozen=True)
class Words:
    """A list of unsigned 64-bit values (a commit's losses: float64 bits the chain never reads
    as floats)."""
    max_len: int

    def check(self, name: str, value: Any) -> None:
        if type(value) is not list or len(value) > self.max_len \
                or not all(type(x) is int and 0 <= x < 1 << 64 for x in value):
            raise SchemaError(f"{name} must be a list of at most {self.max_len} unsigned 64-bit integers")


@dataclass(frozen=True)
class JobSpec:
    def check(self, name: str, value: Any) -> None:
        from .jobs import JobError, check_spec
        try:
            check_spec(value)
        except JobError as exc:
            raise SchemaError(str(exc)) from None


Schema = Mapping[str, Any]  # field name -> one of the checkers above

ADDRESS, HASH, AMOUNT, INDEX = Bytes(ADDRESS_LEN), Bytes(HASH_LEN), Int(1), Int(0, 2**32)
SHARD = {"job": HASH, "round": INDEX, "shard": INDEX}
COMMIT = {**SHARD, "root": HASH, "leaves": INDEX, "manifest": HASH, "start": HASH, "start_proof": Hashes(),
          "final": HASH, "final_proof": Hashes(), "diverged_leaf": INDEX,
          "losses": Words(MAX_INTERVALS)}
CHALLENGE_START = {**SHARD, "interval": Int(-1, -1)}  # disputes the start checkpoint: no leaves
CHALLENGE = {**SHARD, "interval": INDEX, "start_leaf": HASH, "start_proof": Hashes(),
             "end_leaf": HASH, "end_proof": Hashes()}


CHALLENGE_AVAILABLE = {**SHARD, "unavailable": HASH, "leaf": Int(-1, 2**32), "proof": Hashes()}
CHALLENGE_UNPLANTED = {**CHALLENGE, "unplanted": Bool()}  # a revealed forced interval is not the planted change


def _challenge(body: dict) -> Schema:
    if "unavailable" in body:
        return CHALLENGE_AVAILABLE
    if "unplanted" in body:
        return CHALLENGE_UNPLANTED
    return CHALLENGE_START if body.get("interval") == -1 else CHALLENGE


SCHEMAS: dict[str, Schema | Callable[[dict], Schema]] = {
    "transfer": {"to": ADDRESS, "amount": AMOUNT},
    "stake": {"role": OneOf(ROLES), "amount": AMOUNT},
    "unstake": {"role": OneOf(ROLES), "amount": AMOUNT},
    "unjail": {},
    "submit_job": {"spec": JobSpec()},
    "register_secrets": {"role": OneOf(("solver", "verifier")), "tip": HASH, "length": Int(1, MAX_CHAIN)},
    "commit_shard": COMMIT,
    "decline": SHARD,
    "attest": {**SHARD, "secret": HASH},
    "challenge": _challenge,
    "dispute_vote": {**SHARD, "challenger": ADDRESS, "opened": INDEX, "fault": Bool()},
    "cancel_job": {"job": HASH},
    "reveal": {**SHARD, "secret": HASH, "proof": Hashes()},
    "midpoint": {**SHARD, "challenger": ADDRESS, "opened": INDEX, "hash": HASH},
    "answer": {**SHARD, "challenger": ADDRESS, "opened": INDEX, "agree": Bool()},
}


def check_body(kind: str, body: Any) -> None:
    """Raise SchemaError unless body has exactly the fields of its kind, each well-formed."""
    schema = SCHEMAS.get(kind)
    if schema is None:
        raise SchemaError(f"unknown tx kind {kind!r}")
    if type(body) is not dict:
        raise SchemaError(f"{kind} body must be a map")
    if callable(schema):
        schema = schema(body)
    names = set(schema)
    if set(body) != names:
        unknown = sorted(map(str, set(body) - names))
        missing = sorted(names - set(body))
        raise SchemaError(f"{kind} takes exactly the fields {', '.join(sorted(names)) or '(none)'}"
                          + (f"; unknown: {', '.join(unknown)}" if unknown else "")
                          + (f"; missing: {', '.join(missing)}" if missing else ""))
    for name in sorted(names):
        schema[name].check(f"{kind}.{name}", body[name])
