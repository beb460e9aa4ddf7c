"""The one training step, shared by solvers, verifiers and referees.

Given the same start checkpoint, spec and data, this code takes the same steps everywhere.
In an exact profile (`cpu-f32-1thread`, `cpu-f64`) that means the same bits: one CPU
thread, no randomness, optimizers written out here with a fixed order of operations. The
`tolerance` profile runs anywhere (several threads, CUDA) and is judged by distance.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from .checkpoint import TrainState, decode, encode
from .data import Dataset, batch_order, shard_indices
from .models import build_model, is_sequence_model

EXACT_PROFILES = ("cpu-f32-1thread", "cpu-f64")
PROFILES = EXACT_PROFILES + ("tolerance",)
BETA1, BETA2, EPS, MOMENTUM = 0.9, 0.999, 1e-8, 0.9


@dataclass(frozen=True)
class TrainSpec:
    model: str
    model_args: dict
    optimizer: str      # sgd | momentum | adam
    lr_ppm: int
    batch_size: int
    steps: int          # per shard per round
    k: int              # checkpoint interval
    profile: str
    seed: int
    tolerance_ppm: int = 1000

    @property
    def dtype(self) -> torch.dtype:
        return torch.float64 if self.profile == "cpu-f64" else torch.float32

    @property
    def lr(self) -> float:
        return self.lr_ppm / 1_000_000


@contextmanager
def profile_threads(spec: TrainSpec):
    """Exact profiles run on one thread: reductions then happen in one fixed order."""
    if spec.profile not in EXACT_PROFILES:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def resolve_device(spec: TrainSpec, device: str) -> torch.device:
    if spec.profile in EXACT_PROFILES or device == "cpu" or not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device(device)


# -- state ----------------------------------------------------------------------------------

def init_state(spec: TrainSpec) -> TrainState:
    """Round 0's start: the registry model initialised from the job seed, a fresh optimizer."""
    model = build_model(spec.model, spec.model_args, spec.seed, spec.dtype)
    return TrainState({n: p.detach().clone() for n, p in model.named_parameters()})


def average_states(states: list[TrainState]) -> TrainState:
    """The next round's start (DiLoCo-style): parameters averaged in shard order; the inner
    optimizer starts fresh each round, so its state is not carried over."""
    names = sorted(states[0].params)
    avg = {}
    for n in names:
        total = states[0].params[n].detach().cpu().clone()
        for s in states[1:]:
            total += s.params[n].detach().cpu()
        avg[n] = total / len(states)
    return TrainState(avg)


def _bind(spec: TrainSpec, state: TrainState, device: torch.device) -> tuple[torch.nn.Module, TrainState]:
    """A model whose parameters are (copies of) the state's, and the state that points at them."""
    model = build_model(spec.model, spec.model_args, spec.seed, spec.dtype).to(device)
    params = dict(model.named_parameters())
    if sorted(params) != sorted(state.params):
        raise ValueError("checkpoint parameters do not match the job's model")
    with torch.no_grad():
        for n, p in params.items():
            p.copy_(state.params[n].to(device=device, dtype=spec.dtype))
    opt = {n: {s: t.to(device=device, dtype=spec.dtype) for s, t in slots.items()} for n, slots in state.opt.items()}
    return model, TrainState(params, opt, state.step, state.rng)


def _update(state: TrainState, spec: TrainSpec) -> None:
    """One optimizer update, written out so every machine does the same operations."""
    t = state.step + 1
    with torch.no_grad():
        for n in sorted(state.params):
            p = state.params[n]
            g = p.grad
            if spec.optimizer == "sgd":
                p.sub_(g, alpha=spec.lr)
            elif spec.optimizer == "momentum":
                buf = state.opt.setdefault(n, {}).setdefault("momentum", torch.zeros_like(p))
                buf.mul_(MOMENTUM).add_(g)
                p.sub_(buf, alpha=spec.lr)
            else:
                slots = state.opt.setdefault(n, {})
                m = slots.setdefault("m", torch.zeros_like(p))
                v = slots.setdefault("v", torch.zeros_like(p))
                m.mul_(BETA1).add_(g, alpha=1 - BETA1)
                v.mul_(BETA2).addcmul_(g, g, value=1 - BETA2)
                denom = (v / (1 - BETA2 ** t)).sqrt_().add_(EPS)
                p.addcdiv_(m, denom, value=-spec.lr / (1 - BETA1 ** t))


def train_step(model: torch.nn.Module, state: TrainState, spec: TrainSpec, xb, yb) -> None:
    for p in state.params.values():
        p.grad = None
    out = model(xb)
    loss = F.cross_entropy(out.reshape(-1, out.shape[-1]), yb.reshape(-1))
    loss.backward()
    _update(state, spec)
    state.step += 1


# -- shards and intervals -------------------------------------------------------------------

def _tensors(spec: TrainSpec, data: Dataset, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.as_tensor(data.x)
    x = x.long() if is_sequence_model(spec.model) else x.to(spec.dtype)
    return x.to(device), torch.as_tensor(data.y).long().to(device)


def _run(spec: TrainSpec, data: Dataset, job_id: bytes, round_: int, shard: int, shards: int, state: TrainState,
         first: int, last: int, device: str, on_k: Callable[[TrainState], None] | None,
         progress: Callable[[int], None] | None) -> TrainState:
    dev = resolve_device(spec, device)
    idx = shard_indices(len(data), shards, shard)
    order = batch_order(job_id, round_, shard, len(idx), spec.steps, spec.batch_size)
    x, y = _tensors(spec, data.subset(idx), dev)
    model, live = _bind(spec, state, dev)
    model.train()
    with profile_threads(spec):
        for step in range(first, last):
            batch = torch.as_tensor(order[step], device=dev)
            train_step(model, live, spec, x[batch], y[batch])
            if on_k is not None and live.step % spec.k == 0:
                on_k(live)
            if progress is not None:
                progress(1)
    return live


def train_shard(spec: TrainSpec, data: Dataset, job_id: bytes, round_: int, shard: int, shards: int,
                start: TrainState, device: str = "cpu",
                progress: Callable[[int], None] | None = None) -> list[bytes]:
    """Canonical checkpoints at steps 0, k, 2k, ..., steps (the first is the start state)."""
    checkpoints = [encode(start)]
    _run(spec, data, job_id, round_, shard, shards, start, 0, spec.steps, device,
         lambda s: checkpoints.append(encode(s)), progress)
    return checkpoints


def run_interval(spec: TrainSpec, data: Dataset, job_id: bytes, round_: int, shard: int, shards: int,
                 start_ckpt: bytes, start_step: int, n_steps: int, device: str = "cpu") -> bytes:
    """Recompute `n_steps` steps from a checkpoint taken at `start_step`."""
    state = decode(start_ckpt)
    state.step = start_step  # the batch order is indexed by the step, not trusted from the blob
    return encode(_run(spec, data, job_id, round_, shard, shards, state, start_step, start_step + n_steps,
                       device, None, None))


def evaluate(spec: TrainSpec, state: TrainState, holdout: Dataset) -> int:
    """Accuracy on held-out data in parts per million (next-character accuracy for text)."""
    dev = torch.device("cpu")
    model, _ = _bind(spec, state, dev)
    model.eval()
    x, y = _tensors(spec, holdout, dev)
    correct = 0
    with torch.no_grad():
        for i in range(0, len(x), 512):
            pred = model(x[i:i + 512]).argmax(-1)
            correct += int((pred == y[i:i + 512]).sum())
    return correct * 1_000_000 // max(1, y.numel())


def state_dict(spec: TrainSpec, state: TrainState) -> dict[str, torch.Tensor]:
    """Weights that `verifier.models.build_model(...).load_state_dict` accepts."""
    return {n: t.detach().cpu().clone() for n, t in sorted(state.params.items())}
