"""Recompute a piece of a solver's training and compare it with what the solver claimed.

Exact profiles compare checkpoint hashes: one flipped bit is a fault.

The tolerance profile judges every tensor on its own (each parameter, and each optimizer
slot: Adam's m/<p> and v/<p>, momentum/<p>) by how far the claim is from our recomputation
against how far our recomputation moved from the interval's start:

    err  = |ours - claimed|          move = |ours - start|          (L2, in float64)
    ok iff err <= tol x max(move, floor),   tol = tolerance_ppm / 1e6,
                                            floor = FLOOR_PPM / 1e6 x |start| + FLOOR_ABS

and the step, the rng, the tensors' layout and Adam's beta powers must match exactly. The
bound is relative to the work, not to the weights: a distance relative to |weights| let
through, at small learning rates, anything that moves the weights less than the tolerance
(half-precision autocast, skipped steps, half batches, a steady bias), since at lr 1e-4 an
interval moves the weights by far less than 0.1% of their norm. The floor keeps a tensor
that hardly moves (SGD at lr 1e-4, a converged layer) from being judged on float32 rounding
alone: such a tensor may differ by tol x floor = 1e-6 x |start|, about 8 float32 ulps rms.

The constants are measured (benchmarks/tolerance_bands.py: worst err / max(move, floor) over
every tensor of every interval of a 10-interval shard, k = 20, the spirals MLP 2-64-64-3 with
Adam, momentum and SGD at lr 1e-2, 1e-3 and 1e-4, plus a 32-256-256-10 MLP where threads
change the summation order):

    honest, another f32 summation order   <= 8.1 ppm  (1 vs 2 threads; 2 micro-batches)
    honest, float64 against float32       <= 150 ppm on the spirals MLP, <= 550 ppm wide;
                                          one converged run (wide Adam lr 1e-2, loss ~ 0) is
                                          at 11,644 ppm: f32 gradients there are mostly
                                          cancellation, and a float64 solver does not follow
                                          the float32 profile (f32 orders agree to 2 ppm)
    fp16 / bf16 autocast                  >= 8,082 / 10,862 ppm (SGD lr 1e-4), 6e4..2e7 else
    skip one step in k, half batches      >= 83,298 / 186,313 ppm
    a bias 0.9 x the old bound (|weights|)>= 20,876 ppm;  first moments x 1.05 >= 72,928 ppm

so DEFAULT_TOLERANCE_PPM = 1000 sits about 7x above the worst honest float64 reference on
the example model (125x above honest float32 variation) and 8x below the nearest cheat.
fp16 has the least margin, and it shrinks with short intervals on tiny models: k = 5 on the
spirals MLP (SGD lr 1e-4) still fails 39 of 40 intervals, but on the 4-16-16-3 test MLP with
k = 4 two of three intervals pass (680 to 2,100 ppm; the last one, always checked, fails).
FLOOR_PPM = 1000 is what the f64 reference needs at lr 1e-4 (with 100 it reaches 1,358 ppm;
the cheats' worst ratios do not depend on the floor, their worst tensors move). FLOOR_ABS
only keeps 0/0 from being asked of a tensor that starts at zero and does not move.

What still passes: a solver may bias each tensor of each interval by up to tol x its
movement, e.g. stretch every step by 0.09%. That saves nothing; over a shard the injected
bias is at most tol x (sum of the intervals' movements), but training dynamics amplify it.
Measured final drift from honest training ("drift" in the benchmark), as a share of the
distance honest training travels: 0.07% to 0.3% for SGD at every lr, momentum at 1e-3 and
1e-4 and Adam at 1e-4 (0.7x to 3.2x the bound); 4% for momentum at 1e-2, 8% and 21% for
Adam at 1e-3 and 1e-2 (18x to 121x the bound), chaotic runs in which a float64 shard ends
only 2.5 to 4.8 ppm from the float32 one. Tighter steering needs a smaller tolerance_ppm.

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
from collections.abc import Sequence
from pathlib import Path
from dataclasses import dataclass

import torch


from . import checkpoint, training
from .checkpoint import CheckpointError, TrainState
from .data import DataError
from .training import Leaf, TrainSpec
from .work import ShardWork

FLOOR_PPM = 1000  # a tensor is judged as if it moved at least 0.1% of its norm (see above)
FLOOR_ABS = 1e-30
LOSS_FLOOR = 1e-3  # a summed interval loss is judged as if it were at least this


def tensors_distance(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    """|a - b| / max(|a|, |b|) over all the tensors together, in float64; inf if layouts differ.

    A diagnostic (how far apart two states are overall); verification judges tensor by tensor
    against the work done, see `tensor_gaps`."""
    if a.keys() != b.keys():
        return math.inf
    return _distance((a[name], b[name]) for name in sorted(a))


def _distance(pairs) -> float:
    diff = norm_a = norm_b = 0.0
    for x, y in pairs:
        x, y = x.to(torch.float64), y.to(torch.float64)
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


@dataclass(frozen=True)
class TensorGap:
    """How far one claimed tensor is from ours, next to how far ours moved in the interval."""
    name: str  # a parameter name, or an optimizer slot ("m/<p>", "v/<p>", "momentum/<p>")
    err: float  # ||ours - claimed||, L2 in float64
    move: float  # ||ours - start||
    start_norm: float  # ||start||

    def ratio_at(self, floor_ppm: float) -> float:
        return self.err / max(self.move, floor_ppm / 1e6 * self.start_norm + FLOOR_ABS)

    @property
    def floor(self) -> float:
        """The least movement the tensor is judged by: FLOOR_PPM/1e6 * ||start|| + FLOOR_ABS."""
        return FLOOR_PPM / 1e6 * self.start_norm + FLOOR_ABS

    @property
    def ratio(self) -> float:
        """err relative to the work: the tensor passes when this is <= tolerance_ppm / 1e6."""
        return self.ratio_at(FLOOR_PPM)


GAP_SLICE = 1 << 22  # elements per float64 slice when measuring distances


def floor_of(start: torch.Tensor) -> float:
    return FLOOR_PPM / 1e6 * float(torch.linalg.vector_norm(start.to(torch.float64))) + FLOOR_ABS


def judged_tensors(state: TrainState) -> dict[str, torch.Tensor]:
    """Every tensor judged by distance: all parameters and optimizer slots (not beta powers)."""
    return {**state.params, **{n: t for n, t in state.opt.items() if not n.endswith("_power")}}


def tensor_gaps(start: TrainState, ours: TrainState, claimed: TrainState) -> list[TensorGap]:
    """One TensorGap per judged tensor, by name; the three states must share one layout."""
    a, b, c = judged_tensors(start), judged_tensors(ours), judged_tensors(claimed)
    return [_gap(name, a[name], b[name], c[name]) for name in sorted(b)]


def _gap(name: str, s: torch.Tensor, o: torch.Tensor, t: torch.Tensor) -> TensorGap:
    """The three norms in float64, a slice at a time: no float64 copy of a whole large tensor."""
    err = move = start = 0.0
    flat = [x.detach().reshape(-1) for x in (s, o, t)]
    for i in range(0, max(1, flat[0].numel()), GAP_SLICE):
        s64, o64, t64 = (x[i:i + GAP_SLICE].to(torch.float64) for x in flat)
        err += float(torch.sum((o64 - t64) ** 2))
        move += float(torch.sum((o64 - s64) ** 2))
        start += float(torch.sum(s64 * s64))
    return TensorGap(name, math.sqrt(err), math.sqrt(move), math.sqrt(start))


def _close_files(start_path: Path, ours: TrainState, claimed_path: Path, tolerance_ppm: int) -> tuple[bool, str]:
    """_close with the start and the claim read from their files one tensor at a time."""
    claimed = checkpoint.index(claimed_path)
    powers = {n: checkpoint.read_tensor(claimed_path, ref) for n, ref in claimed.opt.items() if n.endswith("_power")}
    head = TrainState(claimed.params, {**claimed.opt, **powers}, claimed.step, claimed.rng, claimed.loss)
    fault = exact_fault(ours, head) or loss_fault(ours, head, tolerance_ppm)
    if fault is not None:
        return False, fault
    start = checkpoint.index(start_path)
    refs_s, refs_c = judged_tensors(start), judged_tensors(claimed)
    gaps = [_gap(n, checkpoint.read_tensor(start_path, refs_s[n]), t, checkpoint.read_tensor(claimed_path, refs_c[n]))
            for n, t in sorted(judged_tensors(ours).items())]
    return _judge_gaps(gaps, tolerance_ppm)


def exact_fault(ours: TrainState, claimed: TrainState) -> str | None:
    """Why the parts that must be equal everywhere differ (step, rng, layout, beta powers)."""
    if ours.step != claimed.step:
        return f"step {claimed.step} where {ours.step} was expected"
    if ours.rng != claimed.rng:
        return "rng differs"
    if ours.params.keys() != claimed.params.keys() or ours.opt.keys() != claimed.opt.keys():
        return "a different layout of tensors"
    for name in sorted(ours.opt):  # plain float64 products: the same bits on every device
        if name.endswith("_power") and not torch.equal(ours.opt[name], claimed.opt[name]):
            return f"optimizer {name} differs"
    return None


def loss_fault(ours: TrainState, claimed: TrainState, tolerance_ppm: int) -> str | None:
    """Why the claimed interval loss is too far from ours (`tolerance`): the loss of steps on
    slightly different weights differs by far less than the weights' own bound, so it is held
    to tol relative to the loss itself (a loss near zero is judged as if it were LOSS_FLOOR).
    A NaN on either side is never close."""
    a, b = ours.loss_sum, claimed.loss_sum
    bound = tolerance_ppm / 1e6 * max(abs(a), LOSS_FLOOR)
    if math.isfinite(a) and math.isfinite(b) and abs(a - b) <= bound:
        return None
    return f"interval loss {b!r} where the recomputation gives {a!r} (bound {bound:.3g})"


def _close(start: TrainState, ours: TrainState, claimed: TrainState, tolerance_ppm: int) -> tuple[bool, str]:
    """(ok, why) for a finite claimed end against our finite recomputation from `start`."""
    fault = exact_fault(ours, claimed) or loss_fault(ours, claimed, tolerance_ppm)
    if fault is not None:
        return False, fault
    return _judge_gaps(tensor_gaps(start, ours, claimed), tolerance_ppm)


def _judge_gaps(gaps: list[TensorGap], tolerance_ppm: int) -> tuple[bool, str]:
    tol = tolerance_ppm / 1e6
    worst = max(gaps, key=lambda g: g.ratio)
    summary = f"{worst.name} off by {worst.ratio * 1e6:.3f} ppm of its movement"
    if not all(g.err <= tol * max(g.move, g.floor) for g in gaps):  # written so that NaN fails
        return False, f"too far: {summary} > {tolerance_ppm} ppm"
    return True, f"within tolerance: at worst {summary} <= {tolerance_ppm} ppm"


def _difference(ours: TrainState, claimed: Leaf) -> str:
    """A one-line hint of how a claimed state differs from the recomputed one. A claimed file
    is read one tensor at a time (this runs beside a live trainer)."""
    shape = checkpoint.index(claimed) if isinstance(claimed, Path) else checkpoint.decode(claimed)
    if ours.step != shape.step:
        return f"claimed step {shape.step}, recomputed {ours.step}"
    if not isinstance(claimed, Path):
        distance = relative_distance(ours, shape)
    elif ours.params.keys() != shape.params.keys():
        distance = math.inf
    else:
        distance = _distance((ours.params[n], checkpoint.read_tensor(claimed, ref))
                             for n, ref in sorted(shape.params.items()))
    ppm = distance * 1_000_000
    return f"parameters {ppm:.3f} ppm apart" if ppm else "same parameters; optimizer state or rng differ"


def states_close(a_bytes: bytes, b_bytes: bytes, tolerance_ppm: int) -> bool:
    """True when both are finite checkpoints of the same step and b is within tolerance of
    the reference a, with no work between them: every tensor is judged by its floor alone
    (a round's start, an average computed from bytes, has nothing to move by)."""
    try:
        a, b = checkpoint.decode(a_bytes), checkpoint.decode(b_bytes)
    except CheckpointError:
        return False
    return _states_close(a, b, tolerance_ppm)


def _states_close(a: TrainState, b: TrainState, tolerance_ppm: int) -> bool:
    if not (checkpoint.is_finite(a) and checkpoint.is_finite(b)) or exact_fault(a, b) is not None:
        return False
    if any(a.params[n].shape != b.params[n].shape for n in a.params) or \
            any(a.opt[n].shape != b.opt[n].shape for n in a.opt):
        return False
    return _close(a, a, b, tolerance_ppm)[0]


def _job_state(spec: TrainSpec, raw: bytes) -> TrainState:
    """A checkpoint decoded and checked against the job; CheckpointError if it is neither."""
    state = checkpoint.decode(raw)
    training.check_state(spec, state)
    return state


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


def _leaves(work: ShardWork, interval: int, start_ckpt: Leaf, claimed_end_ckpt: Leaf,
            diverged_leaf: int | None, losses: Sequence[int] | None) -> tuple[TrainState, TrainState] | str:
    """The interval's two leaves decoded and checked by every rule that needs no training (they
    fit the job, the start is at the interval's first step, their finiteness agrees with the
    declared divergence, the end holds the loss the commit declares for it), or why they
    break one."""
    spec = work.spec
    if type(interval) is not int or not 0 <= interval < work.intervals:
        return f"interval {interval!r} does not exist (there are {work.intervals})"
    if diverged_leaf is not None and (type(diverged_leaf) is not int or not 0 <= diverged_leaf <= work.intervals):
        return f"declared divergence at leaf {diverged_leaf!r} is not a leaf of this shard"
    start_step = interval * spec.k
    where = f"steps {start_step}..{start_step + spec.k}"
    try:
        start = _job_state(spec, start_ckpt)
        if start.step != start_step:
            raise CheckpointError(f"start checkpoint is at step {start.step}, not {start_step}")
    except CheckpointError as exc:
        return f"start checkpoint rejected: {exc}"
    try:
        claimed = _job_state(spec, claimed_end_ckpt)
    except CheckpointError as exc:
        return f"{where}: claimed checkpoint is malformed: {exc}"
    fault = _declaration_fault(interval, diverged_leaf, checkpoint.is_finite(start), checkpoint.is_finite(claimed)) \
        or _loss_declaration_fault(work, interval, claimed, losses)
    return f"{where}: {fault}" if fault is not None else (start, claimed)


def _loss_declaration_fault(work: ShardWork, interval: int, claimed: TrainState,
                            losses: Sequence[int] | None) -> str | None:
    """Why the commit's declared mean loss for this interval is not the one its end leaf holds,
    bit for bit (`losses` None: the leaves are judged alone, with no commit to hold them to)."""
    if losses is None:
        return None
    held = checkpoint.interval_mean(claimed.loss, work.spec.k)
    if len(losses) != work.intervals:
        return f"the commit declares {len(losses)} interval losses, not {work.intervals}"
    if losses[interval] != held:
        return (f"the commit declares mean loss {checkpoint.bits_float(losses[interval])!r}, "
                f"the claimed end holds {checkpoint.bits_float(held)!r}")
    return None


def verify_interval(work: ShardWork, interval: int, start_ckpt: Leaf, claimed_end_ckpt: Leaf,
                    diverged_leaf: int | None = None, losses: Sequence[int] | None = None) -> tuple[bool, str]:
    """Recompute interval `interval` (k steps from leaf `interval` to leaf `interval` + 1) and
    judge the claimed end, under the commit's declared first non-finite leaf (None: all finite).

    A non-finite start must come at or after the declared divergence, and then the end must
    be non-finite too; a finite start with a non-finite end needs the divergence declared at
    exactly the end and a recomputation that diverges as well (exact profiles: to the same
    bytes); two finite leaves need no divergence declared at either and the usual comparison.
    `losses`: the commit's declared mean losses, which the claimed end must hold.
    """
    spec = work.spec
    leaves = _leaves(work, interval, start_ckpt, claimed_end_ckpt, diverged_leaf, losses)
    if isinstance(leaves, str):
        return False, leaves
    start, claimed = leaves
    where = f"steps {start.step}..{start.step + spec.k}"
    if not checkpoint.is_finite(start):
        ok, why = _after_divergence(spec, start, claimed)
        return ok, f"{where}: {why}"
    claimed_finite, claimed_at = checkpoint.is_finite(claimed), (claimed.step, claimed.rng)
    # From files, neither leaf is held while we train: exact profiles judge by ids, `tolerance`
    # reads the start and the claim back one tensor at a time (`_close_files`).
    from_files = spec.exact or (isinstance(start_ckpt, Path) and isinstance(claimed_end_ckpt, Path))
    if from_files:
        del claimed, leaves
    try:  # a start we decoded and never read again: train in its tensors, no copy
        trainer = training.run_trainer(training.ShardData(work), start, spec.k, own=from_files)
    except (DataError, ValueError) as exc:
        return False, f"interval cannot be recomputed: {exc}"
    ours, ours_id = trainer.live(), trainer.digest()
    claimed_id = checkpoint.checkpoint_hash(claimed_end_ckpt)
    if claimed_finite and spec.exact:
        ok = ours_id == claimed_id
        why = "bitwise identical" if ok else \
            f"hash differs from the recomputed checkpoint ({_difference(ours, claimed_end_ckpt)})"
    elif claimed_finite and not checkpoint.is_finite(ours):
        ok, why = False, "the recomputed end is not finite, the claimed one is (a diverged run must say so)"
    elif claimed_finite:
        ok, why = (_close_files(start_ckpt, ours, claimed_end_ckpt, spec.tolerance_ppm) if from_files
                   else _close(start, ours, claimed, spec.tolerance_ppm))
    elif spec.exact:
        ok = ours_id == claimed_id
        why = "diverged to the same bytes" if ok else "the claimed divergence differs from the recomputed end"
    elif checkpoint.is_finite(ours):
        ok, why = False, "the recomputed end is finite: no divergence here"
    else:  # the tolerance profile: any two non-finite states are alike
        ok = claimed_at == (ours.step, ours.rng)
        why = "diverged, as the recomputation does" if ok else f"claimed step {claimed_at[0]} (or its rng) is wrong"
    return ok, f"{where}: {why}"


def verify_step(work: ShardWork, interval: int, start_ckpt: Leaf, claimed_end_ckpt: Leaf,
                diverged_leaf: int | None, agreed_ckpt: Leaf, step: int, claimed_hash: bytes,
                losses: Sequence[int] | None = None) -> tuple[bool, str]:
    """A referee's judgement at the end of a bisection game (exact profiles): the interval's
    leaves obey every rule that needs no training, and one training step from the state both
    parties agreed on at `step` gives the solver's claimed hash for step + 1.

    The agreed hash is one the solver committed or posted, so an agreed state that is not a
    valid state of this job at `step` is the solver's fault too."""
    leaves = _leaves(work, interval, start_ckpt, claimed_end_ckpt, diverged_leaf, losses)
    if isinstance(leaves, str):
        return False, leaves
    if not checkpoint.is_finite(leaves[0]):  # past a divergence nothing is compared bit by bit
        return _after_divergence(work.spec, *leaves)
    del leaves  # two checkpoints' worth of memory, not needed for the step
    try:
        agreed = _job_state(work.spec, agreed_ckpt)
        if agreed.step != step:
            raise CheckpointError(f"it is at step {agreed.step}, not {step}")
    except CheckpointError as exc:
        return False, f"the agreed state is rejected: {exc}"
    try:
        ours = training.run_trainer(training.ShardData(work), agreed, 1, own=True).digest()
    except (DataError, ValueError) as exc:
        return False, f"step {step} cannot be recomputed: {exc}"
    if ours == claimed_hash:
        return True, f"step {step} -> {step + 1}: bitwise identical"
    return False, f"step {step} -> {step + 1}: the solver's hash differs from the recomputed step"


def verify_forced(work: ShardWork, interval: int, start_ckpt: Leaf, claimed_end_ckpt: Leaf,
                  losses: Sequence[int] | None = None) -> tuple[bool, str]:
    """Is the claimed end of a revealed forced-error interval exactly the planted change of the
    honest end (verifier/forced.py)? Exact profiles: equal bytes; `tolerance`: within the bound
    of the planted state. Anything else (the honest end itself, or a model of the solver's
    choosing, or an end whose declared loss is not its own) is not a forced error, whatever the
    solver revealed."""
    from . import forced
    leaves = _leaves(work, interval, start_ckpt, claimed_end_ckpt, None, losses)
    if isinstance(leaves, str):
        return False, leaves
    start, claimed = leaves
    if work.spec.exact:  # judged by ids: neither the claimed tensors nor (after training) the start are read
        del claimed, leaves
    try:
        honest = training.run_trainer(training.ShardData(work), start, work.spec.k, own=work.spec.exact).live()
    except (DataError, ValueError) as exc:
        return False, f"interval cannot be recomputed: {exc}"
    planted = forced.corrupt(work.spec, start, honest)
    if work.spec.exact:
        ok = checkpoint.digest(planted) == checkpoint.checkpoint_hash(claimed_end_ckpt)
        return ok, "the planted change, bit for bit" if ok else "not the planted change of the honest end"
    ok, why = _close(start, planted, claimed, work.spec.tolerance_ppm)
    return ok, ("the planted change, " if ok else "not the planted change: ") + why


def expected_round_state(spec: TrainSpec, previous_finals: list[Leaf]) -> TrainState:
    """The bytes a round must start from: the job's initial state for round 0 (no finals),
    else the average of the previous round's final checkpoints in shard order.

    Raises CheckpointError for a final that does not fit the job and ValueError for a
    non-finite one: a diverged shard ends the job, it never seeds another round."""
    if not previous_finals:
        return training.init_state(spec)
    if all(isinstance(f, Path) for f in previous_finals):  # real sizes: one checkpoint in memory at a time
        return training.average_files(previous_finals, spec)
    finals = [checkpoint.decode(f) for f in previous_finals]
    for state in finals:
        training.check_state(spec, state)
    return training.average_states(finals)


def expected_round_start(spec: TrainSpec, previous_finals: list[Leaf]) -> bytes:
    """expected_round_state's canonical bytes (small models: held whole)."""
    return checkpoint.encode(expected_round_state(spec, previous_finals))


def verify_round_start(spec: TrainSpec, previous_finals: list[Leaf], claimed_start: Leaf) -> bool:
    """The 'average leaf' check on a shard's first checkpoint.

    The average is computed bit-exactly from the finals, so exact profiles demand equal
    bytes; the tolerance profile accepts a start within tolerance, like any other leaf.
    A non-finite final, or a non-finite claimed start, is always refused.
    """
    try:
        expected = expected_round_state(spec, previous_finals)
        if spec.exact:
            return checkpoint.digest(expected) == checkpoint.checkpoint_hash(claimed_start)
        claimed = checkpoint.decode(claimed_start)
        training.check_state(spec, claimed)
    except (CheckpointError, ValueError):
        return False  # a final that does not decode was already a fault of its own shard
    return _states_close(expected, claimed, spec.tolerance_ppm)
