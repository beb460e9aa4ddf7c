"""A solver's forced error: one interval's end made wrong on purpose, and training on from it.

The chain decides whether a shard carries one and where (consensus/forced.py); the solver
knows it from its own secret and the assignment beacon. It trains honestly up to
the end of that interval, changes the state there as little as the profile can still see,
and keeps training from the changed state. So exactly that interval fails a recomputation
(its next one starts from the changed leaf and is honest from there), and the model is
barely touched:

    exact profiles   the lowest bit of one weight (one ulp): any recomputation differs
    tolerance        one weight moved by 4x the tolerance bound of its tensor for that
                     interval, so that no honest float difference could explain it
"""
from __future__ import annotations

import torch

from . import checkpoint, training
from .checkpoint import TrainState
from .replay import floor_of
from .work import ShardWork

TOLERANCE_MARGIN = 4  # times the bound: well past any honest difference, still tiny


def _first_param(state: TrainState) -> str:
    return sorted(state.params)[0]


def corrupt(spec: training.TrainSpec, start: TrainState | None, end: TrainState) -> TrainState:
    """`end` (the honest end of an interval that began at `start`) with one weight changed.
    Exact profiles never read `start` (it may be None there)."""
    name = _first_param(end)
    tensor = end.params[name].detach().clone()
    flat = tensor.view(-1)
    if spec.exact:
        bits = flat[:1].view(torch.int64 if tensor.dtype == torch.float64 else torch.int32)
        bits ^= 1  # flip the lowest mantissa bit of the first element
    else:
        s64, e64 = start.params[name].to(torch.float64), tensor.to(torch.float64)
        move = float(torch.linalg.vector_norm(e64 - s64))
        floor = floor_of(s64)
        flat[0] += TOLERANCE_MARGIN * spec.tolerance_ppm / 1e6 * max(move, floor) + 1e-6
    return TrainState({**end.params, name: tensor}, dict(end.opt), end.step, end.rng, end.loss)


def train_with_forced_error(work: ShardWork, start: TrainState, forced: int | None,
                            progress=None, store: training.LeafStore | None = None,
                            own: bool = False) -> list[training.Leaf]:
    """The shard's leaves, honest except that leaf forced + 1 is corrupted (when `forced` is an
    interval and training is still finite there) and the rest trained on from it. With a
    `store` the leaves are files; leaf forced + 1 is written twice (honest, then changed)."""
    if forced is None:
        return training.train_shard(work, start, progress=progress, store=store, own=own)
    data = training.ShardData(work)
    spec = work.spec
    head = training.train_leaves(data, start, progress=progress, last_leaf=forced + 1, store=store, own=own)
    del start  # with `own`, trained in: what is left of it is in head, and memory is for the rest
    before_finite = checkpoint.is_finite(checkpoint.decode(head[-2]))
    end = checkpoint.decode(head[-1])
    if not (before_finite and checkpoint.is_finite(end)):
        rest = training.train_leaves(data, end, progress=progress, store=store, own=True)
        return head + rest[1:]  # diverged before the forced interval ended: nothing is planted
    before = None if spec.exact else checkpoint.decode(head[-2])  # only `tolerance` sizes the change by it
    changed = corrupt(spec, before, end)
    del before, end  # `changed` shares all but one tensor with the end
    rest = training.train_leaves(data, changed, progress=progress, store=store, own=True)
    return head[:-1] + rest
