"""Recompute a piece of a solver's training and compare it with what the solver claimed.

Exact profiles compare checkpoint hashes: one flipped bit is a fault.

The tolerance profile compares by relative L2 distance, |a - b| / max(|a|, |b|), group by
group: the parameters within the job's tolerance_ppm; each optimizer slot group (Adam's m,
Adam's v, momentum buffers) within OPT_FACTOR times that, because moments drift far more
than weights between honest runs (Adam's m about 40x, measured), capped at OPT_CAP_PPM.
The optimizer state must be compared: a solver that publishes Adam's m = 0 and a huge v
freezes training, and every later interval would replay as "no change". Such forgeries sit
near 100% distance; a forgery small enough to pass slows training by a few percent and
saves the forger nothing. Beta powers, the step and the tensors' layout must match exactly.

Every function here answers rather than raises on bad input from a solver, because a
malformed checkpoint is the solver's fault and must turn into a verdict, not a crash.
"""
from __future__ import annotations

import math

import torch

from . import checkpoint, training
from .checkpoint import CheckpointError, TrainState
from .data import DataError
from .training import TrainSpec
from .work import ShardWork

OPT_FACTOR = 100
OPT_CAP_PPM = 500_000


def _finite_parts(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The finite entries of x and y, or None unless both have the same inf/NaN in the same places.

    Honest training can diverge to inf or NaN; two honest runs then agree on where and what,
    and only their finite entries are measured.
    """
    fx, fy = torch.isfinite(x), torch.isfinite(y)
    if not torch.equal(fx, fy) or not torch.equal(torch.isnan(x), torch.isnan(y)):
        return None
    inf = ~fx & ~torch.isnan(x)
    if not torch.equal(x[inf], y[inf]):
        return None
    return x[fx], y[fy]


def tensors_distance(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    """|a - b| / max(|a|, |b|) over all the tensors together, in float64; inf if layouts differ."""
    if a.keys() != b.keys():
        return math.inf
    diff = norm_a = norm_b = 0.0
    for name in sorted(a):
        x, y = a[name].to(torch.float64), b[name].to(torch.float64)
        parts = _finite_parts(x, y) if x.shape == y.shape else None
        if parts is None:
            return math.inf
        x, y = parts
        diff += float(torch.sum((x - y) ** 2))
        norm_a += float(torch.sum(x * x))
        norm_b += float(torch.sum(y * y))
    scale = math.sqrt(max(norm_a, norm_b))
    return 0.0 if diff == 0.0 else math.sqrt(diff) / scale if scale > 0 else math.inf


def relative_distance(a: TrainState, b: TrainState) -> float:
    """The relative L2 distance of two states' parameters."""
    return tensors_distance(a.params, b.params)


def _opt_groups(opt: dict[str, torch.Tensor]) -> dict[str, dict[str, torch.Tensor]]:
    """Optimizer slots by group: "m", "v", "momentum"; each beta power is a group of its own."""
    groups: dict[str, dict[str, torch.Tensor]] = {}
    for name, t in opt.items():
        groups.setdefault(name.split("/", 1)[0], {})[name] = t
    return groups


def _close(ours: TrainState, claimed: TrainState, tolerance_ppm: int) -> tuple[bool, str]:
    """(ok, why) for a claimed state against ours under the tolerance rules above."""
    if ours.step != claimed.step:
        return False, f"step {claimed.step} where {ours.step} was expected"
    if ours.opt.keys() != claimed.opt.keys():
        return False, "optimizer state has a different layout"
    ppm = relative_distance(ours, claimed) * 1_000_000
    if ppm > tolerance_ppm:
        return False, f"too far: parameters {ppm:.3f} ppm apart > {tolerance_ppm} ppm"
    opt_tolerance = min(OPT_FACTOR * tolerance_ppm, OPT_CAP_PPM)
    theirs = _opt_groups(claimed.opt)
    for group, tensors in sorted(_opt_groups(ours.opt).items()):
        if group.endswith("_power"):  # plain float64 products: the same bits on every device
            if not torch.equal(tensors[group], theirs[group][group]):
                return False, f"optimizer {group} differs"
            continue
        opt_ppm = tensors_distance(tensors, theirs[group]) * 1_000_000
        if opt_ppm > opt_tolerance:
            return False, f"too far: optimizer {group} {opt_ppm:.3f} ppm apart > {opt_tolerance} ppm"
    return True, f"within tolerance: parameters {ppm:.3f} ppm apart <= {tolerance_ppm} ppm"


def _difference(ours: TrainState, claimed: TrainState) -> str:
    """A one-line hint of how a claimed state differs from the recomputed one."""
    if ours.step != claimed.step:
        return f"claimed step {claimed.step}, recomputed {ours.step}"
    ppm = relative_distance(ours, claimed) * 1_000_000
    return f"parameters {ppm:.3f} ppm apart" if ppm else "same parameters; optimizer state or rng differ"


def states_close(a_bytes: bytes, b_bytes: bytes, tolerance_ppm: int) -> bool:
    """True when both are checkpoints of the same step within tolerance (a is the reference)."""
    try:
        a, b = checkpoint.decode(a_bytes), checkpoint.decode(b_bytes)
    except CheckpointError:
        return False
    return _close(a, b, tolerance_ppm)[0]


def compare(spec: TrainSpec, ours: bytes, claimed: bytes) -> tuple[bool, str]:
    """(ok, why) for a recomputed checkpoint against a claimed one, by the job's profile."""
    if spec.exact and ours == claimed:
        return True, "bitwise identical"
    try:
        theirs = checkpoint.decode(claimed)
        training.check_state(spec, theirs)
    except CheckpointError as exc:
        return False, f"claimed checkpoint is malformed: {exc}"
    if spec.exact:
        return False, f"hash differs from the recomputed checkpoint ({_difference(checkpoint.decode(ours), theirs)})"
    return _close(checkpoint.decode(ours), theirs, spec.tolerance_ppm)


def verify_interval(work: ShardWork, interval: int, start_ckpt: bytes, claimed_end_ckpt: bytes) -> tuple[bool, str]:
    """Recompute interval `interval` (k steps from leaf `interval`) and judge the claimed end."""
    spec = work.spec
    if type(interval) is not int or not 0 <= interval < work.intervals:
        return False, f"interval {interval!r} does not exist (there are {work.intervals})"
    start_step = interval * spec.k
    try:
        ours = training.run_interval(work, start_ckpt, start_step, spec.k)
    except CheckpointError as exc:
        return False, f"start checkpoint rejected: {exc}"
    except (DataError, ValueError) as exc:
        return False, f"interval cannot be recomputed: {exc}"
    ok, why = compare(spec, ours, claimed_end_ckpt)
    return ok, f"steps {start_step}..{start_step + spec.k}: {why}"


def expected_round_start(spec: TrainSpec, previous_finals: list[bytes]) -> bytes:
    """The bytes a round must start from: the job's initial state for round 0 (no finals),
    else the average of the previous round's final checkpoints in shard order."""
    if not previous_finals:
        return checkpoint.encode(training.init_state(spec))
    finals = [checkpoint.decode(f) for f in previous_finals]
    for state in finals:
        training.check_state(spec, state)
    return checkpoint.encode(training.average_states(finals))


def verify_round_start(spec: TrainSpec, previous_finals: list[bytes], claimed_start: bytes) -> bool:
    """The 'average leaf' check on a shard's first checkpoint.

    The average is computed bit-exactly from the finals, so exact profiles demand equal
    bytes; the tolerance profile accepts a start within tolerance, like any other leaf.
    """
    try:
        expected = expected_round_start(spec, previous_finals)
        if not spec.exact:
            training.check_state(spec, checkpoint.decode(claimed_start))
    except (CheckpointError, ValueError):
        return False  # a final that does not decode was already a fault of its own shard
    if spec.exact:
        return expected == claimed_start
    return states_close(expected, claimed_start, spec.tolerance_ppm)
