"""The shard lifecycle as one table: every status change is a named rule and one row.

    rule                 from                    to
    assign               unassigned              assigned
    miss_deadline        assigned                unassigned  (slashed)
    decline              assigned                unassigned  (not slashed)
    commit               assigned                committed
    draw_verifiers       committed               verifying
    challenge            committed, verifying,   disputed    (several may be open at once)
                         disputed
    fault_proven         disputed                unassigned  (the solver forfeits its collateral)
    cleared              disputed                verifying   (the last open challenge closed;
                                                              the window reopens in full)
    cleared_before_draw  disputed                committed   (as above, verifiers not drawn yet)
    redraw               verifying               committed   (the window closed with no
                                                              attestation: new verifiers)
    await_reveal         verifying               revealing   (at least one attestation; the
                                                              solver's forced-error secret is
                                                              still hidden)
    settle               verifying, revealing    passed      (attested, and the secret revealed
                                                              or its deadline missed)
    unplanted            revealing               unassigned  (the revealed forced interval is not
                                                              the planted change: the solver
                                                              forfeits its collateral)

`move` is the only place a shard's status changes, so an illegal transition fails here, in
one place, whatever rule asked for it.
"""
from __future__ import annotations

from .records import Shard, ShardStatus as S

TRANSITIONS: dict[str, tuple[frozenset, S]] = {
    "assign": (frozenset({S.UNASSIGNED}), S.ASSIGNED),
    "miss_deadline": (frozenset({S.ASSIGNED}), S.UNASSIGNED),
    "decline": (frozenset({S.ASSIGNED}), S.UNASSIGNED),
    "commit": (frozenset({S.ASSIGNED}), S.COMMITTED),
    "draw_verifiers": (frozenset({S.COMMITTED}), S.VERIFYING),
    "challenge": (frozenset({S.COMMITTED, S.VERIFYING, S.DISPUTED}), S.DISPUTED),
    "fault_proven": (frozenset({S.DISPUTED}), S.UNASSIGNED),
    "cleared": (frozenset({S.DISPUTED}), S.VERIFYING),
    "cleared_before_draw": (frozenset({S.DISPUTED}), S.COMMITTED),
    "redraw": (frozenset({S.VERIFYING}), S.COMMITTED),
    "await_reveal": (frozenset({S.VERIFYING}), S.REVEALING),
    "unplanted": (frozenset({S.REVEALING}), S.UNASSIGNED),
    "settle": (frozenset({S.VERIFYING, S.REVEALING}), S.PASSED),
}


class IllegalTransition(AssertionError):
    """A rule tried to move a shard from a status the table does not allow: a bug, not a tx
    error, so it is not a JobError and it halts the block instead of being skipped."""


def move(shard: Shard, rule: str) -> None:
    sources, target = TRANSITIONS[rule]
    if shard.status not in sources:
        raise IllegalTransition(f"rule {rule} cannot move a shard that is {shard.status.value}")
    shard.status = target
