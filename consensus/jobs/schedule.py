"""End of block: everything driven by height and the beacon (assignment, draws, deadlines)."""
from __future__ import annotations

from .. import codec, staking
from ..ledger import View, get_params
from ..sampling import weighted_sample
from . import bonds, game, reveal, settle
from .lifecycle import move
from .records import K_ACTIVE_JOBS, Job, JobStatus, Selection, ShardStatus, k_job, k_load


def assign_solver(v: View, job: Job, index: int, height: int, beacon: bytes) -> None:
    """Stake-weighted draw among solvers with free capacity, registered secrets left (one
    decides the shard's forced error) and enough free stake for the collateral, preferring
    ones without a shard of this job's round and never one that
    already failed or declined this shard. A shard every staked solver declined cancels the
    job: nobody can run it."""
    params, shard = get_params(v), job.shards[index]
    collateral = bonds.solver_collateral(params, job.spec)
    staked = [(a, w) for a, w in staking.candidates(v, "solver") if w >= params["min_solver_stake"]]
    if staked and all(a in shard.declined for a, _ in staked):
        settle.close_job(v, job, height, JobStatus.CANCELLED,
                         f"every staked solver declined shard {index}; unused escrow refunded")
        return
    busy = {s.solver for s in job.shards if s.solver is not None}
    free = [(a, w) for a, w in staked
            if a not in shard.tried and bonds.free_stake(v, a, "solver") >= collateral
            and v.read(k_load(a), 0) < params["solver_capacity"] and bonds.has_secrets(v, a, "solver")]
    pool = [(a, w) for a, w in free if a not in busy] or free
    chosen = weighted_sample(pool, 1, beacon, job.id, job.round, index, "solver", len(shard.tried))
    if not chosen:
        return
    solver = chosen[0]
    v.write(k_load(solver), v.read(k_load(solver), 0) + 1)
    bonds.lock(v, solver, "solver", collateral)
    shard.solver, shard.collateral = solver, collateral
    shard.secret_index, shard.assign_beacon = bonds.reserve(v, solver, "solver"), beacon  # its forced error
    shard.assigned_at, shard.deadline = height, height + job.spec["commit_blocks"]
    move(shard, "assign")
    job.log(height, "assigned", solver, collateral, f"shard {index}; collateral locked")


def select_verifiers(v: View, job: Job, index: int, height: int, beacon: bytes) -> None:
    """Drawn from the beacon `draw_delay_blocks` after the commit, among verifiers with a hash
    chain and enough free stake for the collateral. Each reserves its next secret: its
    intervals come from that secret, so verifiers of one shard check different intervals."""
    params, shard = get_params(v), job.shards[index]
    need = bonds.attest_collateral(params, job.spec)
    pool = bonds.verifier_pool(v, params, job.spec, shard)
    label = (job.id, job.round, index, shard.commit.root)
    drawn = weighted_sample(pool, params["verifiers_per_shard"], beacon, *label, "verifiers")
    if not drawn:
        return  # wait for a verifier to stake
    for addr in drawn:
        bonds.lock(v, addr, "verifier", need)
        shard.verifiers.append(Selection(addr, bonds.reserve(v, addr, "verifier"), need))
    shard.beacon, shard.window_end = beacon, height + job.spec["verify_blocks"]
    move(shard, "draw_verifiers")


def step_shard(v: View, job: Job, index: int, height: int, beacon: bytes) -> None:
    params, shard = get_params(v), job.shards[index]
    if shard.status == ShardStatus.ASSIGNED and height > shard.deadline:
        cut = staking.slash(v, shard.solver, "solver", params["missed_deadline_slash_ppm"])
        job.log(height, "slashed", shard.solver, cut, f"solver missed the deadline of shard {index}")
        settle.reopen_shard(v, shard, "miss_deadline")
    game.expire_moves(v, job, index, height)
    for ch in [c for c in shard.challenges if height > c.deadline]:
        settle.challenge_expired(v, job, index, ch, height)
    if shard.status == ShardStatus.REVEALING and not shard.revealed_at and height > shard.reveal_by:
        reveal.reveal_missed(v, job, index, height)
    status = shard.status
    if status == ShardStatus.UNASSIGNED:
        assign_solver(v, job, index, height, beacon)
    elif status == ShardStatus.COMMITTED and height >= shard.commit.height + params["draw_delay_blocks"]:
        select_verifiers(v, job, index, height, beacon)
    elif status == ShardStatus.VERIFYING and height > shard.window_end:
        settle.close_window(v, job, index, height)


def process_jobs(v: View, height: int, beacon: bytes) -> None:
    for job_id in v.read(K_ACTIVE_JOBS, []):
        job = Job.load(v, job_id)
        before = v.get(k_job(job_id))
        for index in range(len(job.shards)):
            if job.status == JobStatus.ACTIVE:
                step_shard(v, job, index, height, beacon)
        if job.status == JobStatus.ACTIVE and all(s.status == ShardStatus.PASSED for s in job.shards):
            settle.finish_round(v, job, height)
        if codec.encode(job.to_map()) != before:
            job.save(v)
