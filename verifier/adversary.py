"""Dishonest solvers, for demonstrations and tests: the checkpoints a cheater would publish.

Each strategy takes the honest inputs of a shard and returns a full list of leaves, so it
can be committed like honest work. The protocol must catch every one:

    skip-steps   trains half of each interval's steps, labels them as k    (every interval bad)
    forge-final  honest, but the final checkpoint's weights are noise      (last interval bad)
    wrong-order  trains on the next round's data order                      (every interval bad)
    wrong-lr     trains with twice the learning rate                        (every interval bad)
    stale        republishes the start state with the step counter bumped  (every interval bad)
    withhold     honest checkpoints; the solver then does not serve them   (none bad here)

`corrupt_interval` is not a cheat but the protocol's forced error: exactly one interval is
wrong, and because the solver goes on training from the corrupted state, every later
interval checks out.
"""
from __future__ import annotations

import dataclasses
import hashlib
import math

import torch

from . import checkpoint, training
from .checkpoint import TrainState
from .training import MAX_LR_PPM, ShardData, Trainer
from .work import ShardWork

STRATEGIES = ("skip-steps", "forge-final", "wrong-order", "wrong-lr", "stale", "withhold")


def _noise_like(params: dict[str, torch.Tensor], seed: bytes) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(int.from_bytes(hashlib.sha256(seed).digest()[:8], "big"))
    return {n: (torch.rand(t.shape, generator=g, dtype=torch.float64) * 2 - 1).to(t.dtype)
            for n, t in sorted(params.items())}


def _bumped(state: TrainState, step: int) -> TrainState:
    """The same weights, relabelled as if training had reached `step` (rng advanced to match)."""
    rng = state.rng
    for _ in range(step - state.step):
        rng = training.next_rng(rng)
    return dataclasses.replace(state, step=step, rng=rng)


def skip_steps(work: ShardWork, start: TrainState) -> list[bytes]:
    spec = work.spec
    shard_data = ShardData(work)
    leaves = [checkpoint.encode(start)]
    with training.determinism(spec):
        trainer = Trainer(spec, start, shard_data.device)
        for leaf in range(1, spec.steps // spec.k + 1):
            for x, y in shard_data.batches(trainer.step, spec.k // 2):
                trainer.train_step(x, y)
            claimed = _bumped(trainer.state(), leaf * spec.k)
            leaves.append(checkpoint.encode(claimed))
            trainer.step, trainer.rng = claimed.step, claimed.rng
    return leaves


def forge_final(work: ShardWork, start: TrainState) -> list[bytes]:
    honest = training.train_shard(work, start)
    final = checkpoint.decode(honest[-1])
    forged = dataclasses.replace(final, params=_noise_like(final.params, honest[-1]))
    return honest[:-1] + [checkpoint.encode(forged)]


def wrong_order(work: ShardWork, start: TrainState) -> list[bytes]:
    return training.train_shard(work.with_round(work.shard.round + 1), start)


def wrong_lr(work: ShardWork, start: TrainState) -> list[bytes]:
    lr_ppm = work.spec.lr_ppm
    lr = lr_ppm * 2 if lr_ppm * 2 <= MAX_LR_PPM else lr_ppm // 2
    return training.train_shard(work.with_spec(dataclasses.replace(work.spec, lr_ppm=lr)), start)


def stale(work: ShardWork, start: TrainState) -> list[bytes]:
    spec = work.spec
    return [checkpoint.encode(_bumped(start, leaf * spec.k)) for leaf in range(spec.steps // spec.k + 1)]


def withhold(work: ShardWork, start: TrainState) -> list[bytes]:
    return training.train_shard(work, start)


CHEATS = {"skip-steps": skip_steps, "forge-final": forge_final, "wrong-order": wrong_order,
          "wrong-lr": wrong_lr, "stale": stale, "withhold": withhold}


def cheat(strategy: str, work: ShardWork, start: TrainState) -> list[bytes]:
    """The leaves a solver following `strategy` publishes for this shard."""
    if strategy not in CHEATS:
        raise ValueError(f"unknown cheat {strategy!r} (one of {', '.join(STRATEGIES)})")
    return CHEATS[strategy](work, start)


def perturb(state: TrainState, relative: float, seed: bytes) -> TrainState:
    """The state with its weights moved by noise of `relative` times their L2 norm."""
    noise = _noise_like(state.params, seed)
    norm = math.sqrt(sum(float(torch.sum(t.double() ** 2)) for t in state.params.values()))
    noise_norm = math.sqrt(sum(float(torch.sum(t.double() ** 2)) for t in noise.values()))
    scale = relative * max(norm, 1.0) / noise_norm
    params = {n: (t.double() + scale * noise[n].double()).to(t.dtype) for n, t in state.params.items()}
    return dataclasses.replace(state, params=params)


def corrupt_interval(checkpoints: list[bytes], interval_index: int, work: ShardWork) -> list[bytes]:
    """A forced error: interval `interval_index` ends in a perturbed checkpoint, and training
    continues from it, so that interval, and only that one, fails verification.

    The perturbation is well above the job's tolerance (at least 1%), so it is caught in
    every profile.
    """
    intervals = len(checkpoints) - 1
    if not 0 <= interval_index < intervals:
        raise ValueError(f"interval {interval_index} does not exist (there are {intervals})")
    end = checkpoint.decode(checkpoints[interval_index + 1])
    relative = max(0.01, 4 * work.spec.tolerance_ppm / 1_000_000)
    bad = perturb(end, relative, b"stepchain/forced-error" + checkpoints[interval_index + 1])
    return checkpoints[:interval_index + 1] + training.train_leaves(ShardData(work), bad)
