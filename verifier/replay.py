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

Non-finite states (inf or NaN in any parameter or optimizer tensor) are absorbing: every
later step keeps them non-finite, and two of them cannot be told apart by distance. So they
are never compared: a commit declares its first non-finite leaf (`diverged_leaf`, None when
every leaf is finite; training.first_nonfinite_leaf computes it), and `verify_interval`
judges an interval's finiteness against that declaration. The interval into the divergence
is always checked (consensus.sampling.verifier_intervals) and must diverge on recomputation
too; a forger cannot reach a non-finite leaf any other way for free.

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


def tensors_distance(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    """|a - b| / max(|a|, |b|) over all the tensors together, in float64; inf if layouts differ."""
    if a.keys() != b.keys():
        return math.inf
    diff = norm_a = norm_b = 0.0
    for name in sorted(a):
        x, y = a[name].to(torch.float64), b[name].to(torch.float64)
        if x.shape != y.shape:
            return math.inf
        diff += float(torch.sum((x - y) ** 2))
        norm_a += float(torch.sum(x * x))
        norm_b += float(torch.sum(y * y))
    scale = math.sqrt(max(norm_a, norm_b))
    if not math.isfinite(diff + scale):  # inf or NaN anywhere: no distance (see verify_interval)
        return math.inf
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


def _job_state(spec: TrainSpec, raw: bytes) -> TrainState:
    """A checkpoint decoded and checked against the job; CheckpointError if it is neither."""
    state = checkpoint.decode(raw)
    training.check_state(spec, state)
    return state


def _compare(spec: TrainSpec, ours_raw: bytes, ours: TrainState, claimed_raw: bytes,
             claimed: TrainState) -> tuple[bool, str]:
    """(ok, why) for a finite recomputed state against a finite claimed one, by the profile."""
    if spec.exact:
        if ours_raw == claimed_raw:
            return True, "bitwise identical"
        return False, f"hash differs from the recomputed checkpoint ({_difference(ours, claimed)})"
    if not checkpoint.is_finite(ours):
        return False, "the recomputed end is not finite, the claimed one is (a diverged run must say so)"
    return _close(ours, claimed, spec.tolerance_ppm)


def _rng_after(state: TrainState, n_steps: int) -> bytes:
    rng = state.rng
    for _ in range(n_steps):
        rng = training.next_rng(rng)
    return rng


def _after_divergence(spec: TrainSpec, start: TrainState, claimed: TrainState) -> tuple[bool, str]:
    """Past the declared divergence every leaf must stay non-finite; nothing is recomputed (a
    non-finite state only ever steps to another), only the step and rng are checked."""
    if checkpoint.is_finite(claimed):
        return False, "the claimed end is finite, after the declared divergence"
    if claimed.step != start.step + spec.k or claimed.rng != _rng_after(start, spec.k):
        return False, f"claimed step {claimed.step} (or its rng) does not follow step {start.step}"
    return True, "non-finite after the declared divergence"


def _declaration_fault(interval: int, diverged_leaf: int | None, start_finite: bool,
                       end_finite: bool) -> str | None:
    """Why the finiteness of this interval's two leaves contradicts the commit's declaration
    (diverged_leaf: the first non-finite leaf, None if none), or None when it does not."""
    declared = "no divergence" if diverged_leaf is None else f"divergence at leaf {diverged_leaf}"
    if not start_finite:
        if diverged_leaf is None or diverged_leaf > interval:
            return f"start (leaf {interval}) is not finite, but the commit declares {declared}"
        return None
    if diverged_leaf is not None and diverged_leaf <= interval:
        return f"start (leaf {interval}) is finite, but the commit declares {declared}"
    if not end_finite and diverged_leaf != interval + 1:
        return f"claimed end (leaf {interval + 1}) is not finite, but the commit declares {declared}"
    if end_finite and diverged_leaf == interval + 1:
        return f"claimed end (leaf {interval + 1}) is finite, but the commit declares {declared}"
    return None


def verify_interval(work: ShardWork, interval: int, start_ckpt: bytes, claimed_end_ckpt: bytes,
                    diverged_leaf: int | None = None) -> tuple[bool, str]:
    """Recompute interval `interval` (k steps from leaf `interval` to leaf `interval` + 1) and
    judge the claimed end, under the commit's declared first non-finite leaf (None: all finite).

    A non-finite start must come at or after the declared divergence, and then the end must
    be non-finite too; a finite start with a non-finite end needs the divergence declared at
    exactly the end and a recomputation that diverges as well (exact profiles: to the same
    bytes); two finite leaves need no divergence declared at either and the usual comparison.
    """
    spec = work.spec
    if type(interval) is not int or not 0 <= interval < work.intervals:
        return False, f"interval {interval!r} does not exist (there are {work.intervals})"
    if diverged_leaf is not None and (type(diverged_leaf) is not int or not 0 <= diverged_leaf <= work.intervals):
        return False, f"declared divergence at leaf {diverged_leaf!r} is not a leaf of this shard"
    start_step = interval * spec.k
    where = f"steps {start_step}..{start_step + spec.k}"
    try:
        start = _job_state(spec, start_ckpt)
        if start.step != start_step:
            raise CheckpointError(f"start checkpoint is at step {start.step}, not {start_step}")
    except CheckpointError as exc:
        return False, f"start checkpoint rejected: {exc}"
    try:
        claimed = _job_state(spec, claimed_end_ckpt)
    except CheckpointError as exc:
        return False, f"{where}: claimed checkpoint is malformed: {exc}"
    start_finite, end_finite = checkpoint.is_finite(start), checkpoint.is_finite(claimed)
    fault = _declaration_fault(interval, diverged_leaf, start_finite, end_finite)
    if fault is not None:
        return False, f"{where}: {fault}"
    if not start_finite:
        ok, why = _after_divergence(spec, start, claimed)
        return ok, f"{where}: {why}"
    try:
        ours_raw = training.run_steps(training.ShardData(work), start, spec.k)
    except (DataError, ValueError) as exc:
        return False, f"interval cannot be recomputed: {exc}"
    ours = checkpoint.decode(ours_raw)
    if end_finite:
        ok, why = _compare(spec, ours_raw, ours, claimed_end_ckpt, claimed)
    elif spec.exact:
        ok = ours_raw == claimed_end_ckpt
        why = "diverged to the same bytes" if ok else "the claimed divergence differs from the recomputed end"
    elif checkpoint.is_finite(ours):
        ok, why = False, "the recomputed end is finite: no divergence here"
    else:  # the tolerance profile: any two non-finite states are alike
        ok = (claimed.step, claimed.rng) == (ours.step, ours.rng)
        why = "diverged, as the recomputation does" if ok else f"claimed step {claimed.step} (or its rng) is wrong"
    return ok, f"{where}: {why}"


def expected_round_start(spec: TrainSpec, previous_finals: list[bytes]) -> bytes:
    """The bytes a round must start from: the job's initial state for round 0 (no finals),
    else the average of the previous round's final checkpoints in shard order.

    Raises CheckpointError for a final that does not fit the job and ValueError for a
    non-finite one: a diverged shard ends the job, it never seeds another round."""
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
    A non-finite final, or a non-finite claimed start, is always refused.
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
