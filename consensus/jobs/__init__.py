"""On-chain life of a training job: escrow, assignment, commits, verification, disputes, payouts.

The chain never runs torch. It records what solvers commit (a Merkle root over checkpoint
hashes every k steps), draws verifiers and intervals from the beacon after each commit,
collects attestations and challenges, counts validators' referee votes, and moves tokens.

    spec.py       what a job asks for and its budget
    records.py    the job record (typed, encodes to exactly the on-chain map)
    lifecycle.py  the shard status table: every transition is one named rule
    bonds.py      collateral locks and the hash-chain secrets that draw verifiers' intervals
    txs.py        the job txs (register secrets, submit, cancel, commit, decline, attest,
                  challenge, dispute vote, reveal, midpoint, answer)
    game.py       the bisection game that narrows an exact-profile dispute to one step
    reveal.py     forced errors: the solver's reveal, the jackpot, lazy verifiers' loss
    settle.py     outcomes: payouts, slashes, reopening a shard, closing a job
    curves.py     loss curves: each shard's declared losses and which points were verified
    schedule.py   end of block: assignment, verifier draws, deadlines
"""
from .bonds import K_POOL, free_stake, k_lock, k_secrets, locked, pool
from .errors import JobError
from .records import (K_ACTIVE_JOBS, MANIFEST, MAX_EVENTS, START, Challenge, ChallengeKind, Commit, Game, Job,
                      JobStatus, Selection, Shard, ShardStatus, k_escrow, k_job, k_load)
from .schedule import process_jobs
from .spec import LIMITS, METRICS, OPTIMIZERS, PROFILES, budget, check_spec, n_intervals, pool_fee
from .txs import TX_HANDLERS

__all__ = ["K_POOL", "pool", "Game", "free_stake", "k_lock", "k_secrets", "locked", "MANIFEST", "ChallengeKind", "Selection",
           "JobError", "K_ACTIVE_JOBS", "MAX_EVENTS", "Challenge", "Commit", "Job", "JobStatus", "Shard",
           "ShardStatus", "k_escrow", "k_job", "k_load", "process_jobs", "LIMITS", "METRICS", "OPTIMIZERS",
           "PROFILES", "budget", "pool_fee", "check_spec", "n_intervals", "START", "TX_HANDLERS"]
