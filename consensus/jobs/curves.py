"""Loss curves: what each shard of a round declared, and which of those points were checked.

A commit declares each interval's mean loss (the float64 bits its end leaf holds), so a point
of the curve is exactly as trustworthy as its interval: it is *verified* once the shard has
passed and a verifier that did not attest the forced error recomputed that interval (an exact
profile: the leaf's bytes, loss included; `tolerance`: within the bound). The forced interval
is never a verified point: its end is wrong on purpose; nor is one whose end is at or past a
declared divergence: no profile compares the loss a non-finite leaf holds (past it only the
step and rng are checked, and `tolerance` only asks that the diverging interval diverge).
"Verified" is an attestation backed by collateral, not a proof: the chain cannot tell a
verifier that computed from one that did not, except on a forced error, which is what makes
skipping the work a losing bet (docs/PROTOCOL.md). When a round closes, its curves are kept
under their own key (the job record stays small; a closed round's shards are gone).
"""
from __future__ import annotations

from ..ledger import View
from .records import Job, Shard, ShardStatus


def k_curve(job_id: bytes, round_: int) -> bytes:
    return b"curve/" + job_id + round_.to_bytes(4, "big")


def verified_intervals(shard: Shard) -> list[int]:
    """The intervals a verifier recomputed in a shard that passed (none before it passes)."""
    from .settle import lazy  # settle records curves: imported here, not at the top
    if shard.status != ShardStatus.PASSED:
        return []
    checked = set()
    for sel in shard.verifiers:
        if sel.attested and not lazy(shard, sel):
            checked.update(sel.intervals)
    checked.discard(shard.forced)
    diverged = shard.commit.diverged_leaf if shard.commit is not None else 0
    return sorted(j for j in checked if not diverged or j + 1 < diverged)


def shard_curve(shard: Shard) -> list:
    """[solver, declared losses (float64 bits per interval), verified intervals, start leaf]:
    the start of a passed shard was checked to be the average of the previous round's finals,
    so it names the model that round made."""
    return [shard.solver, list(shard.commit.losses), verified_intervals(shard), shard.commit.start]


def record_round(v: View, job: Job) -> None:
    """Keep the closing round's curves (every shard of it has a commit)."""
    v.write(k_curve(job.id, job.round), [shard_curve(s) for s in job.shards if s.commit is not None])


def round_curves(v: View, job: Job, round_: int) -> list:
    """A round's curves: the kept ones once it closed, else the live shards' (None: no commit)."""
    kept = v.read(k_curve(job.id, round_))
    if kept is None and round_ == job.round:
        return [shard_curve(s) if s.commit is not None else None for s in job.shards]
    return kept or []
