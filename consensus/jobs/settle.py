"""Outcomes: who is paid, who is slashed, and what happens to the shard and the job."""
from __future__ import annotations

from .. import staking
from ..ledger import View, add_balance, add_burned, get_params, get_valset
from .lifecycle import move
from .records import K_ACTIVE_JOBS, Job, JobStatus, Shard, ShardStatus, k_escrow, k_load


def slash_to(v: View, offender: bytes, role: str, ppm: int, winner: bytes | None) -> tuple[int, int]:
    """Slash `offender`; a share goes to `winner`, the rest stays burned. (cut, share)"""
    cut = staking.slash(v, offender, role, ppm)
    share = cut * get_params(v)["winner_share_ppm"] // staking.PPM if winner else 0
    if share:
        add_balance(v, winner, share)
        add_burned(v, -share)
    return cut, share


def release_solver(v: View, shard: Shard) -> None:
    if shard.solver is not None:
        v.write(k_load(shard.solver), max(0, v.read(k_load(shard.solver), 0) - 1) or None)


def reopen_shard(v: View, shard: Shard, rule: str) -> None:
    """The shard goes back to the pool; its failed solver will not get it again."""
    release_solver(v, shard)
    move(shard, rule)
    tried = shard.tried + ([shard.solver] if shard.solver else [])
    shard.__dict__.update(Shard(tried=tried).__dict__)


def awaits_verifiers(shard: Shard, height: int) -> bool:
    """Committed, and at least one draw of verifiers has already found none staked."""
    return shard.status == ShardStatus.COMMITTED and height > shard.commit.height + 1


def resolve_dispute(v: View, job: Job, index: int, fault: bool, height: int) -> None:
    shard = job.shards[index]
    ch, params = shard.challenge, get_params(v)
    if fault:
        cut, share = slash_to(v, shard.solver, "solver", params["solver_slash_ppm"], ch.challenger)
        job.log(height, "slashed", shard.solver, cut, f"solver: fraud proven on shard {index}")
        job.log(height, "rewarded", ch.challenger, share, f"challenger proved shard {index} faulty")
        for lazy in shard.attested:
            c, _ = slash_to(v, lazy, "verifier", params["verifier_slash_ppm"], None)
            job.log(height, "slashed", lazy, c, f"verifier attested a faulty shard {index}")
        reopen_shard(v, shard, "fraud_proven")
    else:
        cut, share = slash_to(v, ch.challenger, "verifier", params["verifier_slash_ppm"], shard.solver)
        job.log(height, "slashed", ch.challenger, cut, f"challenger: wrong about shard {index}")
        job.log(height, "rewarded", shard.solver, share, f"solver cleared on shard {index}")
        shard.challenge = None
        # challenged before verifiers were drawn: draw them now, the full window still applies
        move(shard, "cleared" if shard.verifiers else "cleared_before_draw")
        shard.window_end = max(shard.window_end, height + 1)


def expire_dispute(v: View, job: Job, index: int, height: int) -> None:
    """Referees ran out of time: the side with more voted power wins; a tie clears the solver."""
    vals = {x.address: x.power for x in get_valset(v)}
    votes = job.shards[index].challenge.votes
    fault = sum(vals.get(a, 0) for a, f in votes if f) > sum(vals.get(a, 0) for a, f in votes if not f)
    resolve_dispute(v, job, index, fault, height)


def pay(v: View, job: Job, to: bytes, amount: int, height: int, note: str) -> None:
    escrow = v.read(k_escrow(job.id), 0)
    amount = min(amount, escrow)
    if amount:
        v.write(k_escrow(job.id), escrow - amount)
        add_balance(v, to, amount)
        job.log(height, "paid", to, amount, note)


def settle_shard(v: View, job: Job, index: int, height: int) -> None:
    shard, spec = job.shards[index], job.spec
    pay(v, job, shard.solver, spec["reward_per_shard"], height, f"solver, shard {index} passed")
    for verifier in shard.attested:
        pay(v, job, verifier, spec["verification_fee"] * (len(shard.intervals) + 1), height,
            f"verifier, shard {index}")
    release_solver(v, shard)
    move(shard, "settle")


def finish_round(v: View, job: Job, height: int) -> None:
    job.finals.append([s.commit.final for s in job.shards])
    if job.round + 1 < job.spec["rounds"]:
        job.round += 1
        job.shards = [Shard() for _ in job.shards]
        job.log(height, "round", None, 0, f"round {job.round} opens")
        return
    close_job(v, job, height, JobStatus.DONE, "job complete; unused escrow refunded")


def close_job(v: View, job: Job, height: int, status: JobStatus, note: str) -> None:
    """The job leaves the active list and what is left of its escrow goes back to the submitter."""
    job.status = status
    refund = v.read(k_escrow(job.id), 0)
    v.write(k_escrow(job.id), None)
    add_balance(v, job.submitter, refund)
    job.log(height, status.value, job.submitter, refund, note)
    v.write(K_ACTIVE_JOBS, [j for j in v.read(K_ACTIVE_JOBS, []) if j != job.id] or None)
