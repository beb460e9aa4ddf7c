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

The rational cheats below each save some compute, or steer the model, while staying as
close to honest as they can; `publish` returns their leaves and what they declare with the
commit (the first non-finite leaf). benchmarks/tolerance_bands.py measures how far each
lands from honest work, and the verifier must catch each one that saves 1% or more:

    skip-one-step        each interval takes k-1 real steps, labelled as k        (saves 1/k)
    half-batch           every step on the first half of its batch                (saves ~1/2)
    bf16-autocast        every step under bfloat16 autocast                       (GPU: ~1/2)
    fp16-autocast        every step under float16 autocast                        (GPU: ~1/2)
    bias-under-bound     each interval's weight displacement stretched so that it lands at
                         0.9 x the tolerance of the current rule (saves nothing; steers)
    old-bound-bias       each interval's end moved by 0.9 x tolerance x |weights| in a fixed
                         random direction, just under the rule before per-tensor work-relative
                         judging (saves nothing; steers)
    optimizer-bias       each interval's first moments (Adam m, momentum) scaled by 1 + OPT_BIAS
    nonfinite-absorbing  honest to a random interval i, NaN leaves from i+1 on, undeclared
                         (saves the rest of the shard)
    nonfinite-declared   the same, declaring diverged_leaf = i+1 (interval i is always checked)
    one-interval         honest except one random interval, whose end is its start relabelled;
                         training goes on from it (saves 1/intervals)
    loss-declared        honest leaves, but one random interval's declared mean loss is 10%
                         lower than its leaf's (a nicer curve than the work earned)
    loss-forged          honest weights, but every leaf's own loss is 10% lower, declared to
                         match (the curve is consistent, and wrong)

Training always continues from what was published, as a cheater's own next interval would.
"""
from __future__ import annotations

import dataclasses
import hashlib
import math
import random
from typing import Callable

import torch

from . import checkpoint, optim, replay, training
from .checkpoint import TrainState
from .training import MAX_LR_PPM, ShardData, Trainer
from .work import ShardWork

STRATEGIES = ("skip-steps", "forge-final", "wrong-order", "wrong-lr", "stale", "withhold")
RATIONAL = ("skip-one-step", "half-batch", "bf16-autocast", "fp16-autocast", "bias-under-bound", "old-bound-bias",
            "optimizer-bias", "nonfinite-absorbing", "nonfinite-declared", "one-interval", "loss-declared",
            "loss-forged")
LOSS_LIE = 0.9
OPT_BIAS = 0.05  # well inside the 10% the optimizer state was allowed before (100 x 1000 ppm)
BOUND_FRACTION = 0.9


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


# -- rational cheats: leaves and a declaration ---------------------------------------------


@dataclasses.dataclass(frozen=True)
class Published:
    """What a solver commits to: its leaves, the first non-finite leaf it declares, and the
    mean loss it declares per interval (None: each interval's own, read from its end leaf)."""
    leaves: tuple[bytes, ...]
    diverged_leaf: int | None
    losses: tuple[int, ...] | None = None

    def declared_losses(self, k: int) -> list[int]:
        if self.losses is not None:
            return list(self.losses)
        return [checkpoint.interval_mean(leaf_loss(raw), k) for raw in self.leaves[1:]]


def leaf_loss(raw: bytes) -> int:
    """A leaf's loss field (0 for bytes that are not a checkpoint: a forgery declares 0)."""
    try:
        return checkpoint.decode(raw).loss
    except checkpoint.CheckpointError:
        return 0


def _lowered(bits: int) -> int:
    return checkpoint.float_bits(checkpoint.bits_float(bits) * LOSS_LIE)


def _loss_forged(i: int, start: TrainState, ours: TrainState) -> TrainState:
    return dataclasses.replace(ours, loss=_lowered(ours.loss))


Steps = Callable[[Trainer, ShardData], None]  # takes one interval's k steps, or pretends to
End = Callable[[int, TrainState, TrainState], TrainState]  # (interval, its start, its end) -> published end


def _honest_steps(trainer: Trainer, shard_data: ShardData) -> None:
    for x, y in shard_data.batches(trainer.step, trainer.spec.k):
        trainer.train_step(x, y)


def _skip_one(trainer: Trainer, shard_data: ShardData) -> None:
    """k-1 steps, then the step counter, the rng and Adam's beta powers advanced as if k."""
    for x, y in shard_data.batches(trainer.step, trainer.spec.k - 1):
        trainer.train_step(x, y)
    trainer.step, trainer.rng = trainer.step + 1, training.next_rng(trainer.rng)
    trainer.opt.beta1_power *= optim.BETA1
    trainer.opt.beta2_power *= optim.BETA2


def _half_batch(trainer: Trainer, shard_data: ShardData) -> None:
    for x, y in shard_data.batches(trainer.step, trainer.spec.k):
        n = max(1, len(x) // 2)
        trainer.train_step(x[:n], y[:n])


def _autocast(dtype: torch.dtype) -> Steps:
    def steps(trainer: Trainer, shard_data: ShardData) -> None:
        with torch.autocast(device_type=shard_data.device.type, dtype=dtype):
            _honest_steps(trainer, shard_data)
    return steps


def train_with(work: ShardWork, start: TrainState, steps: Steps = _honest_steps, end: End | None = None
               ) -> list[bytes]:
    """A shard trained interval by interval with `steps`; `end` may replace each interval's end,
    and training then continues from the replacement."""
    shard_data = ShardData(work)
    leaves, state = [checkpoint.encode(start)], start
    with training.determinism(work.spec):
        trainer = Trainer(work.spec, start, shard_data.device)
        for i in range(work.intervals):
            steps(trainer, shard_data)
            if end is None:
                leaves.append(trainer.encode())
                continue
            state = end(i, state, trainer.state())
            leaves.append(checkpoint.encode(state))
            trainer = Trainer(work.spec, state, shard_data.device)
    return leaves


def stretched(work: ShardWork, fraction: float) -> End:
    """Each parameter's displacement stretched to `fraction` of what the tolerance rule allows."""
    tol = work.spec.tolerance_ppm / 1e6

    def end(i: int, start: TrainState, ours: TrainState) -> TrainState:
        params = {}
        for name, o in ours.params.items():
            d = o.double() - start.params[name].double()
            move = float(torch.linalg.vector_norm(d))
            bound = fraction * tol * max(move, replay.floor_of(start.params[name]))
            params[name] = (o.double() + d * (bound / move)).to(o.dtype) if move > 0 else o
        return dataclasses.replace(ours, params=params)
    return end


def _old_bound_bias(work: ShardWork, fraction: float) -> End:
    """Each end moved by fraction x tolerance x |weights| along one random direction."""
    tol = work.spec.tolerance_ppm / 1e6

    def end(i: int, start: TrainState, ours: TrainState) -> TrainState:
        noise = _noise_like(ours.params, b"stepchain/old-bound-bias" + work.shard.job_id)
        norm = math.sqrt(sum(float(torch.sum(t.double() ** 2)) for t in ours.params.values()))
        noise_norm = math.sqrt(sum(float(torch.sum(t.double() ** 2)) for t in noise.values()))
        scale = fraction * tol * norm / noise_norm
        return dataclasses.replace(ours, params={n: (t.double() + scale * noise[n].double()).to(t.dtype)
                                                 for n, t in ours.params.items()})
    return end


def _optimizer_bias(i: int, start: TrainState, ours: TrainState) -> TrainState:
    first = ("m/", "momentum/")
    return dataclasses.replace(ours, opt={n: t * (1 + OPT_BIAS) if n.startswith(first) else t
                                          for n, t in ours.opt.items()})


def _nan_state(state: TrainState, step: int) -> TrainState:
    """A state at `step` whose every judged tensor is NaN (what a diverged run would show)."""
    nan = lambda t: torch.full_like(t, math.nan)  # noqa: E731
    bumped = _bumped(state, step)
    return dataclasses.replace(bumped, params={n: nan(t) for n, t in state.params.items()},
                               opt={n: t if n.endswith("_power") else nan(t) for n, t in state.opt.items()})


def _nonfinite_from(work: ShardWork, start: TrainState, i: int) -> list[bytes]:
    """Honest leaves 0..i, then NaN leaves i+1.. (the steps after interval i never taken)."""
    spec = work.spec
    shard_data = ShardData(work)
    leaves = [checkpoint.encode(start)]
    with training.determinism(spec):
        trainer = Trainer(spec, start, shard_data.device)
        for _ in range(i):
            _honest_steps(trainer, shard_data)
            leaves.append(trainer.encode())
    last = checkpoint.decode(leaves[-1])
    return leaves + [checkpoint.encode(_nan_state(last, leaf * spec.k)) for leaf in range(i + 1, work.intervals + 1)]


def _relabelled_once(i: int) -> End:
    return lambda j, start, ours: _bumped(start, ours.step) if j == i else ours


def _choose(work: ShardWork, strategy: str, seed: bytes) -> random.Random:
    shard = work.shard
    where = shard.round.to_bytes(8, "big") + shard.index.to_bytes(8, "big")
    return random.Random(hashlib.sha256(b"stepchain/adversary" + strategy.encode() + shard.job_id + where + seed).digest())


def publish(strategy: str, work: ShardWork, start: TrainState, seed: bytes = b"") -> Published:
    """What a solver following `strategy` (one of STRATEGIES or RATIONAL) commits for this
    shard; `seed` varies the random choices (which interval) between trials."""
    if strategy in CHEATS:
        leaves = CHEATS[strategy](work, start)
        return Published(tuple(leaves), training.first_nonfinite_leaf(leaves))
    steps: dict[str, Steps] = {"skip-one-step": _skip_one, "half-batch": _half_batch,
                               "bf16-autocast": _autocast(torch.bfloat16), "fp16-autocast": _autocast(torch.float16)}
    ends: dict[str, End] = {"bias-under-bound": stretched(work, BOUND_FRACTION),
                            "old-bound-bias": _old_bound_bias(work, BOUND_FRACTION), "optimizer-bias": _optimizer_bias,
                            "loss-forged": _loss_forged}
    if strategy in steps:
        return Published(tuple(train_with(work, start, steps=steps[strategy])), None)
    if strategy in ends:
        return Published(tuple(train_with(work, start, end=ends[strategy])), None)
    if strategy not in RATIONAL:
        raise ValueError(f"unknown cheat {strategy!r} (one of {', '.join(STRATEGIES + RATIONAL)})")
    i = _choose(work, strategy, seed).randrange(work.intervals)
    if strategy == "one-interval":
        return Published(tuple(train_with(work, start, end=_relabelled_once(i))), None)
    if strategy == "loss-declared":
        honest = Published(tuple(train_with(work, start)), None)
        losses = honest.declared_losses(work.spec.k)
        losses[i] = _lowered(losses[i])
        return dataclasses.replace(honest, losses=tuple(losses))
    leaves = _nonfinite_from(work, start, i)
    return Published(tuple(leaves), i + 1 if strategy == "nonfinite-declared" else None)
