"""The job record: typed views that encode to exactly the on-chain map.

A job is stored as one codec map under ``job/<id>``. These dataclasses are the only way the
rules read and write it: `Job.load` parses the stored map once, the rules change fields, and
`Job.save` writes the map back (field names are the map's keys; enums are stored as their
string values). The RPC renders the same map, so workers parse it with `Job.from_map` too,
after turning hex back into bytes (`Job.from_json`).
"""
from __future__ import annotations

import dataclasses
import enum
import types
import typing
from dataclasses import dataclass, field

from ..ledger import View
from .errors import JobError

MAX_EVENTS = 200
K_ACTIVE_JOBS = b"jobs_active"
START = -1     # the challenge 'interval' that disputes a shard's first checkpoint
MANIFEST = -1  # the 'leaf' of an availability challenge that names the manifest


def k_job(job_id: bytes) -> bytes: return b"job/" + job_id
def k_escrow(job_id: bytes) -> bytes: return b"escrow/" + job_id
def k_load(addr: bytes) -> bytes: return b"load/" + addr


class JobStatus(enum.StrEnum):
    ACTIVE = "active"
    DONE = "done"
    CANCELLED = "cancelled"
    DIVERGED = "diverged"      # honest training blew up: the job ends where it became non-finite


class ChallengeKind(enum.StrEnum):
    COMPUTE = "compute"        # an interval (or, at -1, the start checkpoint) is wrong
    AVAILABLE = "available"    # a blob the shard's check needs is not served
    FORCED = "forced"          # opened by the chain: does the revealed forced-error interval end on
                               # exactly the planted change? (only then are its attesters slashed)
    UNPLANTED = "unplanted"    # a revealed forced interval does not end on the planted change: the
                               # solver passed off other work (a model of its choosing) as one


class ShardStatus(enum.StrEnum):
    UNASSIGNED = "unassigned"  # waiting for a solver
    ASSIGNED = "assigned"      # a solver trains it, until its commit deadline
    COMMITTED = "committed"    # a root is on chain; verifiers not drawn yet
    VERIFYING = "verifying"    # verifiers drawn; the window for attestations and challenges runs
    DISPUTED = "disputed"      # one or more challenges are open; validators referee them
    REVEALING = "revealing"    # the window closed with an attestation; the solver must reveal
                               # its forced-error secret before the shard is paid
    PASSED = "passed"          # settled and paid


class Record:
    """Dataclass <-> codec map, field by field (nested records, lists of them, enums)."""

    def to_map(self) -> dict:
        return {f.name: _encode(getattr(self, f.name)) for f in dataclasses.fields(self)}

    @classmethod
    def from_map(cls, raw: dict):
        hints = typing.get_type_hints(cls)
        if type(raw) is not dict or set(raw) != {f.name for f in dataclasses.fields(cls)}:
            raise JobError(f"malformed {cls.__name__} record")
        return cls(**{name: _decode(hints[name], value) for name, value in raw.items()})


def _encode(value):
    if isinstance(value, Record):
        return value.to_map()
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, list):
        return [_encode(x) for x in value]
    return value


def _decode(hint, value):
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in args if a is not type(None)]
        return None if value is None else _decode(inner[0], value)
    if origin is list and args and isinstance(args[0], type) and issubclass(args[0], Record):
        return [args[0].from_map(x) for x in value]
    if isinstance(hint, type) and issubclass(hint, Record):
        return hint.from_map(value)
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        return hint(value)
    return value


@dataclass
class Commit(Record):
    root: bytes
    leaves: int
    height: int
    manifest: bytes
    start: bytes
    final: bytes
    diverged_leaf: int     # the first non-finite leaf, declared by the solver; 0: none
    losses: list = field(default_factory=list)  # per interval: the float64 bits of its mean step
                           # loss, declared by the solver; its end leaf holds the same loss


@dataclass
class Game(Record):
    """A bisection game on one interval of an exact profile (consensus/jobs/game.py): the step
    range [lo, hi] halves with each pair of moves until it is one step."""
    lo: int                # a step whose state both parties agree on
    hi: int                # a later step whose state they disagree about
    lo_hash: bytes         # the blob id of the agreed checkpoint at lo
    hi_hash: bytes         # the solver's claimed checkpoint hash at hi
    mid_hash: bytes        # the solver's hash at (lo + hi) // 2; empty while the solver is to post it
    move_by: int           # the party whose turn it is loses if it has not moved by this height
    serve_by: int          # once one step is left: the agreed state must be served by this height
    moves: int = 0         # txs played so far

    @property
    def narrowed(self) -> bool:
        return self.hi - self.lo == 1

    @property
    def mid(self) -> int:
        return (self.lo + self.hi) // 2

    @property
    def solver_to_move(self) -> bool:
        return not self.narrowed and not self.mid_hash


@dataclass
class Challenge(Record):
    challenger: bytes
    kind: ChallengeKind
    interval: int          # COMPUTE: the interval, -1 for the start checkpoint; AVAILABLE: the
                           # leaf whose checkpoint is not served, -1 for the manifest
    start_leaf: bytes      # COMPUTE: the interval's two leaves; AVAILABLE: the missing blob twice
    end_leaf: bytes
    opened: int
    respond_by: int        # AVAILABLE: the solver must serve the blob by this height
    deadline: int          # no 2/3 decision by then: nobody is slashed, the bond is returned
    bond: int              # verifier stake locked while the challenge is open
    fee: int               # AVAILABLE: what the challenger pays if the blob is served in time
    votes: list = field(default_factory=list)   # [validator, fault]
    game: Game | None = None   # exact profiles: the bisection that narrows an interval to one step


@dataclass
class Selection(Record):
    """One verifier drawn for a shard: its hash-chain element and what it locked and checked."""
    verifier: bytes
    secret_index: int      # the element of its hash chain that draws its intervals
    locked: int            # verifier stake locked until the shard settles
    attested: bool = False
    intervals: list = field(default_factory=list)   # drawn from its secret when it attests
    attested_at: int = 0   # the height of the attestation (before a forced error was revealed?)


@dataclass
class Shard(Record):
    solver: bytes | None = None
    status: ShardStatus = ShardStatus.UNASSIGNED
    assigned_at: int = 0
    deadline: int = 0
    collateral: int = 0    # solver stake locked while the shard can be disputed
    late_fees: int = 0     # taken off the reward: blobs served only once a challenge demanded them
    commit: Commit | None = None
    beacon: bytes = b""    # of the block that drew the verifiers; with each secret, their intervals
    verifiers: list[Selection] = field(default_factory=list)
    window_end: int = 0
    challenges: list[Challenge] = field(default_factory=list)
    tried: list = field(default_factory=list)     # solvers that failed or declined this shard
    declined: list = field(default_factory=list)  # of those, the ones that declined
    silent: list = field(default_factory=list)    # verifiers drawn for this commit that never attested
    secret_index: int = 0  # the solver's secret reserved at assignment ...
    assign_beacon: bytes = b""  # ... and the assignment block's beacon: the forced-error draw
    revealed_at: int = 0   # the height the solver revealed that secret (0: not yet)
    forced: int = -1       # the revealed forced-error interval; -1: none (or not revealed yet)
    reveal_by: int = 0     # REVEALING: the solver must reveal by this height

    def selection(self, addr: bytes) -> Selection | None:
        return next((s for s in self.verifiers if s.verifier == addr), None)

    def open_challenge(self, addr: bytes) -> Challenge | None:
        return next((c for c in self.challenges if c.challenger == addr), None)

    def challenge_opened(self, addr: bytes, opened: int) -> Challenge | None:
        """The open challenge a tx names by its challenger and opening height."""
        ch = self.open_challenge(addr)
        return ch if ch is not None and ch.opened == opened else None


@dataclass
class Job(Record):
    id: bytes
    submitter: bytes
    spec: dict
    status: JobStatus
    round: int
    submitted_at: int
    shards: list[Shard]
    finals: list
    events: list
    jackpots_left: int = 0  # what this job's jackpots may still take from the pool: its pool fee

    @classmethod
    def load(cls, v: View, job_id: bytes) -> "Job":
        raw = v.read(k_job(job_id))
        if raw is None:
            raise JobError(f"no job {job_id.hex()}")
        return cls.from_map(raw)

    def save(self, v: View) -> None:
        v.write(k_job(self.id), self.to_map())

    def log(self, height: int, kind: str, who: bytes | None, amount: int, note: str) -> None:
        self.events = (self.events + [[height, kind, who, amount, note]])[-MAX_EVENTS:]
