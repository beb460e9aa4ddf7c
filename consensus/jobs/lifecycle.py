"""The shard lifecycle as one table: every status change is a named rule and one row.

    rule                 from                    to
    assign               unassigned              assigned
    miss_deadline        assigned                unassigned
    commit               assigned                committed
    draw_verifiers       committed               verifying
    challenge            committed, verifying    disputed
    fraud_proven         disputed                unassigned
    cleared              disputed                verifying   (verifiers already drawn)
    cleared_before_draw  disputed                committed
    settle               verifying               passed

`move` is the only place a shard's status changes, so an illegal transition fails here, in
one place, whatever rule asked for it.
"""
from __future__ import annotations

from .errors import JobError
from .records import Shard, ShardStatus as S

TRANSITIONS: dict[str, tuple[frozenset, S]] = {
    "assign": (frozenset({S.UNASSIGNED}), S.ASSIGNED),
    "miss_deadline": (frozenset({S.ASSIGNED}), S.UNASSIGNED),
    "commit": (frozenset({S.ASSIGNED}), S.COMMITTED),
    "draw_verifiers": (frozenset({S.COMMITTED}), S.VERIFYING),
    "challenge": (frozenset({S.COMMITTED, S.VERIFYING}), S.DISPUTED),
    "fraud_proven": (frozenset({S.DISPUTED}), S.UNASSIGNED),
    "cleared": (frozenset({S.DISPUTED}), S.VERIFYING),
    "cleared_before_draw": (frozenset({S.DISPUTED}), S.COMMITTED),
    "settle": (frozenset({S.VERIFYING}), S.PASSED),
}


class IllegalTransition(AssertionError):
    """A rule tried to move a shard from a status the table does not allow: a bug, not a tx
    error, so it is not a JobError and it halts the block instead of being skipped."""


def allowed(rule: str) -> frozenset:
    return TRANSITIONS[rule][0]


def require(shard: Shard, rule: str) -> None:
    """A tx's precondition: the shard is in a status the rule starts from (else JobError)."""
    if shard.status not in allowed(rule):
        want = " or ".join(sorted(s.value for s in allowed(rule)))
        raise JobError(f"shard is {shard.status.value}, not {want}")


def move(shard: Shard, rule: str) -> None:
    sources, target = TRANSITIONS[rule]
    if shard.status not in sources:
        raise IllegalTransition(f"rule {rule} cannot move a shard that is {shard.status.value}")
    shard.status = target
