"""The nouns of the compute path: which shard of which round, and the work done on it.

Solvers, verifiers, referees and the adversary all need the same handful of things to
recompute a piece of training (the job's spec, its data, the job id, the round, the shard and
how many shards there are, the device); these two values carry them together, so that no
call site can pass the round where the shard belongs.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from .data import Dataset

if TYPE_CHECKING:  # training imports this module; the annotation is only a name here
    from .training import TrainSpec


@dataclass(frozen=True)
class RoundShard:
    """A shard of a job round: shard `index` of `count` in round `round` of job `job_id`.

    It fixes the shard's items (data.shard_indices) and its batch order (data.order_seed).
    """
    job_id: bytes
    round: int
    index: int
    count: int


@dataclass(frozen=True)
class ShardWork:
    """The work on a shard: the job's training settings and data, the shard, and the device to
    compute on ("cpu", "cuda", "cuda:1"; exact profiles always run on the CPU)."""
    spec: TrainSpec
    dataset: Dataset
    shard: RoundShard
    device: str = "cpu"

    @property
    def intervals(self) -> int:
        """Checkpoint intervals in the shard: leaves 0..intervals, interval i from leaf i to i+1."""
        return self.spec.steps // self.spec.k

    def with_spec(self, spec: TrainSpec) -> ShardWork:
        return replace(self, spec=spec)

    def with_round(self, round_: int) -> ShardWork:
        return replace(self, shard=replace(self.shard, round=round_))
