"""Bisection games played with real training on a real chain (tests/jobworld.py), for the tests
of the verification game and benchmarks/dispute.py.

The job is the world's spirals MLP in an exact profile; its shard is really trained once
(`honest_leaves`); a `Party` recomputes one interval from its start leaf, step by step, as a
solver or challenger does; `play` commits (optionally forging the disputed interval's end),
challenges, plays the game with the strategies given, and has a referee judge it, counting the
training steps that judgement took.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from consensus import codec
from consensus.blobid import blob_id
from consensus.jobs import Job, k_job
from node.workers.common import JobContext, Judgement
from node.workers.referee import judge
from tests.chainfactory import challenge_body, commit_body
from tests.jobworld import (VERIFIERS, block, draw, game_body, open_game, solver_of, submit, tx, verifiers_of,
                            world)
from verifier.adversary import Published
from verifier import checkpoint, training


def record(c, jid) -> Job:
    return Job.from_map(codec.decode(c.view().get(k_job(jid))))


def new_job(k: int, **spec):
    """A world with one one-shard job of 50 intervals of k steps (the default minimum)."""
    c = world(verifiers=VERIFIERS)
    jid = submit(c, shards=1, steps=50 * k, k=k, verify_blocks=30, **spec)
    return c, jid


def commit_trained(c, jid, leaves_bytes: list[bytes]) -> list[bytes]:
    """The shard's solver commits these checkpoints (their blob ids are the leaves), and its
    verifiers are drawn; returns the leaves."""
    leaves = [blob_id(b) for b in leaves_bytes]
    declared = Published(tuple(leaves_bytes), None).declared_losses(record(c, jid).spec["k"])  # each leaf's own
    block(c, tx(c, solver_of(c, jid), "commit_shard", commit_body(jid, 0, 0, leaves, losses=declared)))
    draw(c)
    return leaves


def outsider(c, jid):
    """A staked verifier not drawn for the shard: a whistleblower, or a griefer."""
    return next(v for v in VERIFIERS if v not in verifiers_of(c, jid))


def honest_leaves(k: int, **spec) -> list[bytes]:
    """The job's shard trained honestly (the same on every chain `new_job` makes)."""
    c, jid = new_job(k, **spec)
    ctx = JobContext(record(c, jid), {}.get)
    return training.train_shard(ctx.work(0), ctx.expected_start())


class Party:
    """One side's view of an interval: the hash after each step, recomputed from a leaf."""

    def __init__(self, c, jid, interval: int, start_leaf: bytes):
        self.work = JobContext(record(c, jid), {}.get).work(0)
        self.first = interval * self.work.spec.k
        self.start = start_leaf
        self.hashes = [blob_id(start_leaf)] + training.step_hashes(self.work, start_leaf, self.work.spec.k)

    def at(self, step: int) -> bytes:
        return self.hashes[step - self.first]

    def state(self, step: int) -> bytes:
        if step == self.first:
            return self.start
        return training.run_interval(self.work, self.start, self.first, step - self.first)


def mid_of(game: dict) -> int:
    return (game["lo"] + game["hi"]) // 2


def honest_mid(game: dict, party: Party) -> bytes:
    return party.at(mid_of(game))


def honest_answer(game: dict, party: Party) -> bool:
    return party.at(mid_of(game)) == game["mid_hash"]


def forged(leaves: list[bytes], leaf: int) -> list[bytes]:
    """`leaves` with leaf `leaf`'s weights moved by 1e-3: an interval end no training gives."""
    end = checkpoint.decode(leaves[leaf])
    bumped = {n: t + 1e-3 for n, t in end.params.items()}
    return leaves[:leaf] + [checkpoint.encode(checkpoint.TrainState(bumped, end.opt, end.step, end.rng))] \
        + leaves[leaf + 1:]


@dataclass
class Played:
    chain: object
    job: bytes
    challenger: object
    opened: int          # the challenge's height
    narrowed: int        # the height the game was down to one step
    moves: int           # game txs
    judgement: Judgement
    referee_steps: int   # train_step calls the referee's judgement took
    record: Job          # the job as the referee judged it, the challenge still open
    blobs: dict          # what the referee could fetch: the leaves and the agreed state


def count_steps(fn: Callable[[], Judgement]) -> tuple[Judgement, int]:
    """fn's result and how many training steps it took (every step goes through Trainer.train_step)."""
    calls = []
    original = training.Trainer.train_step

    def counted(self, x, y):
        calls.append(1)
        return original(self, x, y)
    training.Trainer.train_step = counted
    try:
        return fn(), len(calls)
    finally:
        training.Trainer.train_step = original


def play(k: int, leaves_bytes: list[bytes], interval: int, solver_hash=honest_mid, answer=honest_answer,
         serve: Callable | None = None, **spec) -> Played:
    """Commit `leaves_bytes`, challenge `interval`, play the game with `solver_hash(game, party)`
    and `answer(game, party)` (each move in the next block), upload the agreed state (or what
    `serve(game, party)` gives) and judge the last step as a referee."""
    c, jid = new_job(k, **spec)
    leaves, solver = commit_trained(c, jid, leaves_bytes), solver_of(c, jid)
    challenger = outsider(c, jid)
    block(c, tx(c, challenger, "challenge", challenge_body(jid, 0, 0, interval, leaves)))
    opened = c.height
    party = Party(c, jid, interval, leaves_bytes[interval])
    for _ in range(64):
        game = open_game(c, jid, challenger)
        if game["hi"] - game["lo"] == 1:
            break
        block(c, tx(c, solver, "midpoint", game_body(c, jid, challenger, hash=solver_hash(game, party))))
        game = open_game(c, jid, challenger)
        block(c, tx(c, challenger, "answer", game_body(c, jid, challenger, agree=answer(game, party))))
    game = open_game(c, jid, challenger)
    blobs = {blob_id(b): b for b in leaves_bytes}
    agreed = party.state(game["lo"]) if serve is None else serve(game, party)
    blobs[blob_id(agreed)] = agreed
    judged_job = record(c, jid)
    ch = judged_job.shards[0].challenges[0]
    judged, steps = count_steps(lambda: judge(judged_job, 0, ch, c.height, blobs.get))
    return Played(c, jid, challenger, opened, c.height, game["moves"], judged, steps, judged_job, blobs)
