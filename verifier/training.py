"""The one training step, shared by solvers, verifiers and referees.

Given the same start checkpoint, spec and data, this code takes the same steps everywhere.
A determinism profile says what "the same" means:

    cpu-f32-1thread  float32 on the CPU, one thread, deterministic algorithms: equal bits
    cpu-f64          float64 on the CPU, the same settings: equal bits, and a wider margin
    tolerance        float32 on any device (CUDA too) and any threads: judged by distance

Equal bits need the same torch build and CPU instruction set on both sides (matrix
kernels differ between, say, AVX2 and AVX-512); mixed fleets use `tolerance`.

Everything random is fixed by the job: initial weights by the job seed, the data order by
(job, round, shard). The training loop encodes a checkpoint only every k steps, so a solver
pays almost nothing for being verifiable (see benchmarks/solver_overhead.py).
"""
from __future__ import annotations

import hashlib
import logging
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Protocol, Union

import numpy as np
import torch
import torch.nn.functional as F

from . import checkpoint, data, models, optim
from consensus import runnable
from consensus.runnable import MAX_TOLERANCE_PPM
from .checkpoint import CheckpointError, TrainState
from .data import Dataset
from .work import ShardWork

log = logging.getLogger("stepchain.verifier")
Leaf = Union[bytes, Path]  # a checkpoint's canonical bytes, or the file that holds them

EXACT_PROFILES = ("cpu-f32-1thread", "cpu-f64")
PROFILES = EXACT_PROFILES + ("tolerance",)
PPM = 1_000_000
MAX_LR_PPM = 10_000_000
EVAL_BATCH = 1024
DEFAULT_TOLERANCE_PPM = 1000  # chosen by measurement: see verifier/replay.py


@dataclass(frozen=True)
class TrainSpec:
    """A job's training settings as the chain records them: integers and names, no floats."""
    model: str
    model_args: dict
    optimizer: str  # sgd | momentum | adam
    lr_ppm: int  # learning rate in parts per million
    batch_size: int
    steps: int  # per shard per round
    k: int  # a checkpoint (Merkle leaf) every k steps; steps % k == 0
    profile: str
    seed: int
    tolerance_ppm: int = DEFAULT_TOLERANCE_PPM  # tolerance profile: max distance per unit of work, in ppm

    def __post_init__(self) -> None:
        models.validate_model(self.model, self.model_args)
        bad = models.SpecError
        if self.optimizer not in optim.KINDS:
            raise bad(f"optimizer must be one of {', '.join(optim.KINDS)}, got {self.optimizer!r}")
        if self.profile not in PROFILES:
            raise bad(f"profile must be one of {', '.join(PROFILES)}, got {self.profile!r}")
        for name, lo, hi in (("lr_ppm", 1, MAX_LR_PPM), ("batch_size", 1, 1 << 16), ("steps", 1, 1 << 30),
                             ("k", 1, 1 << 30), ("seed", 0, 2**63 - 1), ("tolerance_ppm", 0, MAX_TOLERANCE_PPM)):
            value = getattr(self, name)
            if type(value) is not int or not lo <= value <= hi:
                raise bad(f"{name} must be an integer in [{lo}, {hi}], got {value!r}")
        if self.steps % self.k:
            raise bad(f"k={self.k} must divide steps={self.steps}")

    @property
    def exact(self) -> bool:
        return self.profile in EXACT_PROFILES

    @property
    def dtype(self) -> torch.dtype:
        return torch.float64 if self.profile == "cpu-f64" else torch.float32

    @property
    def lr(self) -> float:
        return self.lr_ppm / PPM  # one IEEE division: the same float everywhere


# -- profiles and devices --------------------------------------------------------------------

_EXACT_LOCK = threading.RLock()


@contextmanager
def determinism(spec: TrainSpec) -> Iterator[None]:
    """Exact profiles: one thread and deterministic algorithms while the block runs.

    Both are process-wide torch settings: exact work is serialised by a lock, other threads
    of the process also run single-threaded meanwhile, and the previous settings come back
    afterwards.
    """
    if not spec.exact:
        yield
        return
    with _EXACT_LOCK, torch_threads(1):
        strict = torch.are_deterministic_algorithms_enabled()
        torch.use_deterministic_algorithms(True)
        try:
            yield
        finally:
            torch.use_deterministic_algorithms(strict)


@contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """torch's process-wide thread count set to n while the block runs, then put back."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def resolve_device(spec: TrainSpec, device: str) -> torch.device:
    """The device to train on: exact profiles are CPU-only, and a missing GPU means the CPU."""
    if device == "cpu":
        return torch.device("cpu")
    if spec.exact:
        log.warning("profile %s is exact only on the CPU: training on the CPU, not %s", spec.profile, device)
        return torch.device("cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        log.warning("CUDA is not available here: training on the CPU")
        return torch.device("cpu")
    if device.startswith("cuda"):
        # float32 means float32: TF32 (on by default for cuDNN convolutions) keeps 10 mantissa
        # bits, as coarse as the fp16 cheat the tolerance profile exists to catch.
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    return torch.device(device)


# -- states ----------------------------------------------------------------------------------


def next_rng(rng: bytes) -> bytes:
    # Advanced every step, so a checkpoint's rng also says how many steps led to it. No layer
    # draws randomness today; a future dropout would seed itself from this.
    return hashlib.sha256(b"stepchain/rng" + rng).digest()


def init_state(spec: TrainSpec) -> TrainState:
    """Round 0's start: the model initialised from the job seed and a fresh optimizer."""
    params = models.initial_params(spec.model, spec.model_args, spec.seed, spec.dtype)
    rng = hashlib.sha256(b"stepchain/rng-init" + spec.seed.to_bytes(8, "big")).digest()
    return TrainState(params, optim.initial_state(spec.optimizer, params), 0, rng)


def check_state(spec: TrainSpec, state: TrainState) -> None:
    """Raise CheckpointError unless the state has exactly this job's tensors, shapes and dtypes."""
    want = runnable.param_shapes(spec.model, spec.model_args)  # no model built just to read shapes
    if set(state.params) != set(want):
        raise CheckpointError(f"checkpoint parameters do not match model {spec.model}")
    if set(state.opt) != set(optim.slot_names(spec.optimizer, list(want))):
        raise CheckpointError(f"checkpoint optimizer state does not match optimizer {spec.optimizer}")
    for name, t in [*state.params.items(), *state.opt.items()]:
        shape = () if name.endswith("_power") else want[name.split("/", 1)[-1]]
        dtype = torch.float64 if name.endswith("_power") else spec.dtype
        if tuple(t.shape) != shape or t.dtype != dtype:
            raise CheckpointError(f"checkpoint tensor {name} is {t.dtype} {tuple(t.shape)}, expected {dtype} {shape}")
        # Adam's second moment is a sum of squares: a negative entry can only be planted, and
        # would turn into NaN weights at the next step (sqrt), poisoning every later round.
        if name.startswith("v/") and bool((t < 0).any()):
            raise CheckpointError(f"checkpoint tensor {name} has negative entries")


def average_states(states: list[TrainState]) -> TrainState:
    """The next round's start (DiLoCo-style): the mean of the shards' final states.

    Parameters and optimizer state are both averaged (Adam's moments stay warm across
    rounds instead of restarting from zero), summed in float64 in list order and rounded
    once, so the result is the same bits everywhere. The step restarts at 0.
    """
    if not states:
        raise ValueError("cannot average an empty list of states")
    first = states[0]
    for s in states[1:]:
        if s.step != first.step or s.params.keys() != first.params.keys() or s.opt.keys() != first.opt.keys():
            raise ValueError("states to average differ in step or in their tensors")
    for i, s in enumerate(states):
        if not checkpoint.is_finite(s):  # a diverged shard ends the job; it never seeds a round
            raise ValueError(f"state {i} to average is not finite (its training diverged)")

    def mean(pick: Callable[[TrainState], torch.Tensor]) -> torch.Tensor:
        total = torch.zeros(pick(first).shape, dtype=torch.float64)
        for s in states:
            if pick(s).shape != total.shape:
                raise ValueError("states to average have tensors of different shapes")
            total += pick(s).to(torch.float64)
        return (total / len(states)).to(pick(first).dtype)

    params = {n: mean(lambda s, n=n: s.params[n]) for n in sorted(first.params)}
    opt = {n: mean(lambda s, n=n: s.opt[n]) for n in sorted(first.opt)}
    rng = hashlib.sha256(b"stepchain/rng-average" + b"".join(s.rng for s in states)).digest()
    return TrainState(params, opt, 0, rng)


def average_files(paths: list[Path], spec: TrainSpec | None = None) -> TrainState:
    """average_states of checkpoint files, bit for bit, holding one checkpoint and a tensor:
    each tensor is summed across the files (in float64, in list order) and rounded once.
    Each file is first decoded alone, to be checked as average_states checks its states (and,
    given the job's `spec`, to fit the job)."""
    if not paths:
        raise ValueError("cannot average an empty list of states")
    indexes = []
    for i, p in enumerate(paths):
        state = checkpoint.decode(p)
        if spec is not None:
            check_state(spec, state)
        if not checkpoint.is_finite(state):
            raise ValueError(f"state {i} to average is not finite (its training diverged)")
        indexes.append(checkpoint.index(p))
    first = indexes[0]
    for ix in indexes[1:]:
        if ix.step != first.step or ix.params.keys() != first.params.keys() or ix.opt.keys() != first.opt.keys():
            raise ValueError("states to average differ in step or in their tensors")

    def mean(section: str, name: str) -> torch.Tensor:
        refs = [getattr(ix, section)[name] for ix in indexes]
        if any(r.shape != refs[0].shape for r in refs):
            raise ValueError("states to average have tensors of different shapes")
        total = torch.zeros(refs[0].shape, dtype=torch.float64)
        for p, ref in zip(paths, refs):
            total += checkpoint.read_tensor(p, ref).to(torch.float64)
        return (total / len(paths)).to(checkpoint.DTYPES[refs[0].dtype])

    params = {n: mean("params", n) for n in sorted(first.params)}
    opt = {n: mean("opt", n) for n in sorted(first.opt)}
    rng = hashlib.sha256(b"stepchain/rng-average" + b"".join(ix.rng for ix in indexes)).digest()
    return TrainState(params, opt, 0, rng)


def state_dict(spec: TrainSpec, state: TrainState) -> dict[str, torch.Tensor]:
    """Weights that `models.build_model(...).load_state_dict` accepts."""
    return {n: t.detach().to("cpu", copy=True) for n, t in sorted(state.params.items())}


def first_nonfinite_leaf(leaves: list[Leaf]) -> int | None:
    """What a solver declares with its commit: the index of its first leaf holding an inf or
    a NaN anywhere (weights or optimizer state), or None when every leaf is finite."""
    for i, raw in enumerate(leaves):
        if not checkpoint.is_finite(checkpoint.decode(raw)):
            return i
    return None


# -- the step --------------------------------------------------------------------------------


def _inputs(spec: TrainSpec, x: np.ndarray | torch.Tensor) -> torch.Tensor:
    """x as the model takes it: token ids as int64, everything else in the profile's dtype."""
    x = torch.as_tensor(x)
    tokens = models.model_input_spec(spec.model, spec.model_args).x_vocab is not None
    return x.long() if tokens else x.to(spec.dtype)


class Trainer:
    """A model and its optimizer on one device, loaded from a TrainState.

    `train_step` is the only place a training step is taken, by solvers, verifiers and
    referees alike. Training works on copies: the TrainState it started from is unchanged.
    """

    def __init__(self, spec: TrainSpec, state: TrainState, device: torch.device = torch.device("cpu"),
                 own: bool = False):
        """`own`: the caller hands the state over (it decoded it just for this), so on the CPU
        the trainer trains in the state's own tensors instead of copying a checkpoint's worth."""
        check_state(spec, state)
        self.spec = spec
        params = {n: t.to(device, copy=not own) for n, t in state.params.items()}
        self.model = models.load_params(models.empty_model(spec.model, spec.model_args), params)
        self.names = [n for n, _ in self.model.named_parameters()]
        self.params = [p for _, p in self.model.named_parameters()]
        opt_state = {n: t.to(device, copy=not own) for n, t in state.opt.items()}
        self.opt = optim.Optimizer(spec.optimizer, spec.lr, self.names, self.params, opt_state)
        self.step, self.rng = state.step, state.rng
        # the interval's loss so far, summed in float64 on the device (read back only when a
        # state is taken: no sync per step on a GPU)
        self.loss_sum = torch.tensor(checkpoint.bits_float(state.loss), dtype=torch.float64, device=device)

    def train_step(self, x: torch.Tensor, y: torch.Tensor) -> None:
        """Mean cross-entropy (over items, and positions for sequences), its gradient, one update.
        The step's loss joins the interval's sum, which restarts at every leaf (step % k == 0)."""
        logits = self.model(x)
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))
        grads = torch.autograd.grad(loss, self.params)
        self.opt.update(list(grads))
        if self.step % self.spec.k == 0:
            self.loss_sum.zero_()
        self.loss_sum += loss.detach().to(torch.float64)
        self.step += 1
        self.rng = next_rng(self.rng)

    def _loss_bits(self) -> int:
        return checkpoint.float_bits(float(self.loss_sum))

    def state(self) -> TrainState:
        """A snapshot on the CPU (copies, so training can go on)."""
        params = {n: p.detach().to("cpu", copy=True) for n, p in zip(self.names, self.params)}
        return TrainState(params, self.opt.export(), self.step, self.rng, self._loss_bits())

    def live(self) -> TrainState:
        """The current state as views of the live tensors (no copy): read it before the next
        step, never keep it past one."""
        params = {n: p.detach() for n, p in zip(self.names, self.params)}
        return TrainState(params, self.opt.export(copy=False), self.step, self.rng, self._loss_bits())

    def encode(self) -> bytes:
        """Checkpoint bytes of the current state (small models: the bytes are held whole)."""
        return checkpoint.encode(self.live())

    def digest(self) -> bytes:
        """The blob id of the current state, streamed from the live tensors (no bytes held)."""
        return checkpoint.digest(self.live())


def train_step(state: TrainState, spec: TrainSpec, batch_x, batch_y) -> TrainState:
    """One step from `state` on one batch (numpy or torch), on the CPU: what a referee runs."""
    with determinism(spec):
        trainer = Trainer(spec, state)
        trainer.train_step(_inputs(spec, batch_x), torch.as_tensor(batch_y).long())
        return trainer.state()


# -- shards, leaves and intervals ------------------------------------------------------------


class ShardData:
    """One shard's items, already on the training device, and its fixed batch order."""

    def __init__(self, work: ShardWork):
        spec, shard = work.spec, work.shard
        data.check_compatible(work.dataset, spec.model, spec.model_args)
        idx = data.shard_indices(len(work.dataset), shard.count, shard.index)
        self.spec, self.size = spec, len(idx)
        self.device = resolve_device(spec, work.device)
        x, y = work.dataset.take(idx)  # this shard's items only, gathered once
        self.x = _inputs(spec, x).to(self.device)
        self.y = torch.as_tensor(y).long().to(self.device)
        self.seed = data.order_seed(shard.job_id, shard.round, shard.index)

    def batches(self, first_step: int, n_steps: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The batches of steps first_step .. first_step + n_steps - 1."""
        rows = data.batch_rows(self.seed, self.size, self.spec.batch_size, first_step, n_steps)
        for row in torch.from_numpy(rows).to(self.device):
            yield self.x.index_select(0, row), self.y.index_select(0, row)


class LeafStore(Protocol):
    """Where a shard's leaves go as they are made (verifier/leaves.py keeps them on disk)."""

    def put(self, index: int, state: TrainState) -> Leaf: ...


def train_leaves(shard_data: ShardData, start_state: TrainState,
                 on_checkpoint: Callable[[int, Leaf], None] | None = None,
                 progress: Callable[[int], None] | None = None, last_leaf: int | None = None,
                 store: LeafStore | None = None, own: bool = False) -> list[Leaf]:
    """Checkpoints from start_state (a multiple of k) to leaf `last_leaf` (default: the end of
    the round), every k steps: bytes, or what `store` keeps them as (files), written as each
    is made so that no process holds a trajectory. `own`: train in start_state's tensors."""
    spec = shard_data.spec
    if start_state.step % spec.k or start_state.step > spec.steps:
        raise CheckpointError(f"a shard resumes at a multiple of k={spec.k} up to {spec.steps}, "
                              f"not at step {start_state.step}")
    first_leaf = start_state.step // spec.k
    last_leaf = spec.steps // spec.k if last_leaf is None else last_leaf
    keep = store.put if store is not None else (lambda _, state: checkpoint.encode(state))
    leaves = [keep(first_leaf, start_state)]
    if on_checkpoint:
        on_checkpoint(first_leaf, leaves[0])
    with determinism(spec):
        trainer = Trainer(spec, start_state, shard_data.device, own=own)
        for leaf in range(first_leaf + 1, last_leaf + 1):
            for x, y in shard_data.batches(trainer.step, spec.k):
                trainer.train_step(x, y)
            leaves.append(keep(leaf, trainer.live()))  # the only encoding: once per k steps
            if on_checkpoint:
                on_checkpoint(leaf, leaves[-1])
            if progress:
                progress(spec.k)
    return leaves


def train_shard(work: ShardWork, start_state: TrainState,
                on_checkpoint: Callable[[int, Leaf], None] | None = None,
                progress: Callable[[int], None] | None = None, store: LeafStore | None = None,
                own: bool = False) -> list[Leaf]:
    """A solver's work: canonical checkpoints at steps 0, k, 2k, ..., steps (leaf 0 = start).

    `on_checkpoint(leaf_index, bytes)` sees each leaf as it is made (to store it early);
    `progress(n)` is told every k steps that n more steps are done.
    """
    if start_state.step != 0:
        raise CheckpointError(f"a round starts at step 0, not {start_state.step}")
    return train_leaves(ShardData(work), start_state, on_checkpoint, progress, store=store, own=own)


def run_interval(work: ShardWork, start_ckpt: Leaf, start_step: int, n_steps: int,
                 save_to: Path | None = None) -> Leaf:
    """Recompute n_steps steps from a checkpoint taken at start_step; the result's bytes (or,
    with `save_to`, the file it is written to).

    Raises CheckpointError when the start checkpoint is malformed, is not at start_step, or
    does not fit the job: a solver who published it is at fault.
    """
    spec = work.spec
    if not (0 <= start_step and 0 <= n_steps and start_step + n_steps <= spec.steps):
        raise ValueError(f"steps {start_step}..{start_step + n_steps} are outside the round's {spec.steps}")
    state = checkpoint.decode(start_ckpt)
    if state.step != start_step:
        raise CheckpointError(f"start checkpoint is at step {state.step}, not {start_step}")
    trainer = run_trainer(ShardData(work), state, n_steps, own=True)
    if save_to is None:
        return trainer.encode()
    checkpoint.save(trainer.live(), save_to)
    return save_to


def step_hashes(work: ShardWork, start_ckpt: Leaf, n_steps: int) -> list[bytes]:
    """The blob id of the checkpoint after each of n_steps steps from start_ckpt (entry j is the
    state j + 1 steps on): what a party to a bisection game recomputes from its own leaf
    instead of storing every step."""
    state = checkpoint.decode(start_ckpt)
    shard_data = ShardData(work)
    hashes = []
    with determinism(work.spec):
        trainer = Trainer(work.spec, state, shard_data.device, own=True)
        for x, y in shard_data.batches(trainer.step, n_steps):
            trainer.train_step(x, y)
            hashes.append(trainer.digest())
    return hashes


def run_trainer(shard_data: ShardData, state: TrainState, n_steps: int, own: bool = False) -> Trainer:
    """n_steps steps from a decoded state on the shard's batches; the trainer, to read the
    result from without a copy (`own`: train in the state's own tensors)."""
    with determinism(shard_data.spec):
        trainer = Trainer(shard_data.spec, state, shard_data.device, own=own)
        for x, y in shard_data.batches(trainer.step, n_steps):
            trainer.train_step(x, y)
        return trainer


def run_steps(shard_data: ShardData, state: TrainState, n_steps: int) -> bytes:
    """n_steps steps from a decoded state on the shard's batches; the result's bytes."""
    return run_trainer(shard_data, state, n_steps).encode()


@torch.no_grad()
def evaluate(spec: TrainSpec, state: TrainState, holdout: Dataset) -> int:
    """Accuracy on held-out data in ppm (for the char transformer: next-character accuracy)."""
    if len(holdout) == 0:
        return 0
    check_state(spec, state)
    model = models.load_params(models.empty_model(spec.model, spec.model_args), dict(state.params))
    x, y = _inputs(spec, holdout.x), torch.as_tensor(holdout.y).long()
    correct = 0
    for i in range(0, len(x), EVAL_BATCH):
        correct += int((model(x[i:i + EVAL_BATCH]).argmax(-1) == y[i:i + EVAL_BATCH]).sum())
    return correct * PPM // y.numel()
