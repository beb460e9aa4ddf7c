"""Dishonest solvers, for demonstrations and tests: each returns the checkpoints a cheater
would publish. The protocol must catch every one of them."""
from __future__ import annotations

import dataclasses

import torch

from .checkpoint import TrainState, decode, encode
from .data import Dataset
from .training import TrainSpec, train_shard

STRATEGIES = ("skip-steps", "forge-final", "wrong-order", "wrong-lr", "stale", "withhold")


def _retimed(raw: bytes, step: int) -> bytes:
    state = decode(raw)
    state.step = step
    return encode(state)


def cheat(strategy: str, spec: TrainSpec, data: Dataset, job_id: bytes, round_: int, shard: int, shards: int,
          start: TrainState, device: str = "cpu") -> list[bytes]:
    args = (data, job_id, round_, shard, shards)
    if strategy == "skip-steps":  # trains k-1 steps per interval but labels them as k
        short = dataclasses.replace(spec, k=spec.k - 1 if spec.k > 1 else 1,
                                    steps=(spec.k - 1 if spec.k > 1 else 1) * (spec.steps // spec.k))
        ckpts = train_shard(short, *args, start, device)
        return [_retimed(c, i * spec.k) for i, c in enumerate(ckpts)]
    if strategy == "wrong-lr":
        return train_shard(dataclasses.replace(spec, lr_ppm=spec.lr_ppm * 3), *args, start, device)
    if strategy == "wrong-order":
        return train_shard(spec, data, job_id + b"x", round_, shard, shards, start, device)
    honest = train_shard(spec, *args, start, device)
    if strategy == "forge-final":
        forged = decode(honest[-1])
        forged.params = {n: t + 0.01 * torch.ones_like(t) for n, t in forged.params.items()}
        return honest[:-1] + [encode(forged)]
    if strategy == "stale":  # claims progress but replays the start checkpoint in the second half
        half = len(honest) // 2
        return honest[:half] + [_retimed(honest[0], i * spec.k) for i in range(half, len(honest))]
    if strategy == "withhold":  # honest checkpoints, but the solver will not serve them
        return honest
    raise ValueError(f"unknown cheat {strategy!r}: one of {', '.join(STRATEGIES)}")
