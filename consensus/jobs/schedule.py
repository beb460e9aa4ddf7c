"""End of block: everything driven by height and the beacon (assignment, draws, deadlines)."""
from __future__ import annotations

from .. import codec, staking
from ..ledger import View, get_params
from ..sampling import sample_intervals, weighted_sample
from . import settle
from .lifecycle import move
from .records import K_ACTIVE_JOBS, Job, ShardStatus, k_job, k_load
from .spec import n_intervals


def assign_solver(v: View, job: Job, index: int, height: int, beacon: bytes) -> None:
    """Stake-weighted draw among solvers with free capacity, preferring ones without a shard
    of this job's round and never one that already failed this shard."""
    params, shard = get_params(v), job.shards[index]
    busy = {s.solver for s in job.shards if s.solver is not None}
    free = [(a, w) for a, w in staking.candidates(v, "solver")
            if w >= params["min_solver_stake"] and a not in shard.tried
            and v.read(k_load(a), 0) < params["solver_capacity"]]
    pool = [(a, w) for a, w in free if a not in busy] or free
    chosen = weighted_sample(pool, 1, beacon, job.id, job.round, index, "solver", len(shard.tried))
    if not chosen:
        return
    solver = chosen[0]
    v.write(k_load(solver), v.read(k_load(solver), 0) + 1)
    shard.solver, shard.assigned_at, shard.deadline = solver, height, height + job.spec["commit_blocks"]
    move(shard, "assign")
    job.log(height, "assigned", solver, 0, f"shard {index}")


def select_verifiers(v: View, job: Job, index: int, height: int, beacon: bytes) -> None:
    """Drawn from the beacon of a block after the commit: the solver could not know them."""
    params, shard = get_params(v), job.shards[index]
    pool = [(a, w) for a, w in staking.candidates(v, "verifier")
            if w >= params["min_verifier_stake"] and a != shard.solver]
    label = (job.id, job.round, index, shard.commit.root)
    verifiers = weighted_sample(pool, params["verifiers_per_shard"], beacon, *label, "verifiers")
    if not verifiers:
        return  # wait for a verifier to stake
    # The last interval is always among them: its end is what the next round (or the final
    # model) is built from, so a forged final checkpoint must never slip through unsampled.
    last = n_intervals(job.spec) - 1
    drawn = sample_intervals(last, params["samples_per_shard"] - 1, beacon, *label, "intervals")
    shard.verifiers, shard.intervals = verifiers, sorted(drawn + [last])
    shard.window_end = height + job.spec["verify_blocks"]
    move(shard, "draw_verifiers")


def step_shard(v: View, job: Job, index: int, height: int, beacon: bytes) -> None:
    shard = job.shards[index]
    if shard.status == ShardStatus.ASSIGNED and height > shard.deadline:
        cut, _ = settle.slash_to(v, shard.solver, "solver", get_params(v)["missed_deadline_slash_ppm"], None)
        job.log(height, "slashed", shard.solver, cut, f"solver missed the deadline of shard {index}")
        settle.reopen_shard(v, shard, "miss_deadline")
    status = shard.status
    if status == ShardStatus.UNASSIGNED:
        assign_solver(v, job, index, height, beacon)
    elif status == ShardStatus.COMMITTED and height > shard.commit.height:
        select_verifiers(v, job, index, height, beacon)
    elif status == ShardStatus.VERIFYING and height > shard.window_end:
        settle.settle_shard(v, job, index, height)
    elif status == ShardStatus.DISPUTED and height > shard.challenge.deadline:
        settle.expire_dispute(v, job, index, height)


def process_jobs(v: View, height: int, beacon: bytes) -> None:
    for job_id in v.read(K_ACTIVE_JOBS, []):
        job = Job.load(v, job_id)
        before = v.get(k_job(job_id))
        for index in range(len(job.shards)):
            step_shard(v, job, index, height, beacon)
        if all(s.status == ShardStatus.PASSED for s in job.shards):
            settle.finish_round(v, job, height)
        if codec.encode(job.to_map()) != before:
            job.save(v)
