"""Training state and its canonical bytes, whose sha256 is a Merkle leaf.

A checkpoint is a codec map: parameters by sorted name as [dtype, shape, raw little-endian
bytes], the optimizer's per-parameter tensors the same way, the step, and the RNG state.
The same state gives the same bytes on any machine, so equal hashes mean equal training.
The training step draws no randomness (the data order is fixed by job, round and shard),
so the RNG state is empty; the field exists so a future model with dropout can carry it.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from consensus import codec
from consensus.crypto import sha256

MAX_CHECKPOINT_BYTES = 256 * 1024 * 1024
DTYPES = {"float32": torch.float32, "float64": torch.float64}


class CheckpointError(ValueError):
    pass


@dataclass
class TrainState:
    params: dict[str, torch.Tensor]                       # name -> tensor (CPU or device)
    opt: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)  # name -> {slot: tensor}
    step: int = 0
    rng: bytes = b""


def _tensor_obj(t: torch.Tensor) -> list:
    a = t.detach().cpu().contiguous().numpy()
    return [str(a.dtype), list(a.shape), a.astype(a.dtype.newbyteorder("<"), copy=False).tobytes()]


def _tensor(obj) -> torch.Tensor:
    if type(obj) is not list or len(obj) != 3 or obj[0] not in DTYPES or type(obj[2]) is not bytes:
        raise CheckpointError("malformed tensor in checkpoint")
    dtype, shape, raw = obj
    count = int(np.prod(shape)) if shape else 1
    if count * np.dtype(dtype).itemsize != len(raw):
        raise CheckpointError("tensor size does not match its shape")
    return torch.from_numpy(np.frombuffer(raw, dtype=np.dtype(dtype).newbyteorder("<")).astype(dtype)
                            .reshape(shape).copy())


def encode(state: TrainState) -> bytes:
    return codec.encode({
        "params": {n: _tensor_obj(state.params[n]) for n in sorted(state.params)},
        "opt": {n: {s: _tensor_obj(t) for s, t in sorted(slots.items())} for n, slots in sorted(state.opt.items())},
        "step": state.step,
        "rng": state.rng,
    })


def decode(raw: bytes) -> TrainState:
    try:
        obj = codec.decode(raw, MAX_CHECKPOINT_BYTES)
    except codec.CodecError as exc:
        raise CheckpointError(f"not a checkpoint: {exc}") from None
    if type(obj) is not dict or set(obj) != {"params", "opt", "step", "rng"}:
        raise CheckpointError("not a checkpoint: wrong fields")
    return TrainState({n: _tensor(t) for n, t in obj["params"].items()},
                      {n: {s: _tensor(t) for s, t in slots.items()} for n, slots in obj["opt"].items()},
                      obj["step"], obj["rng"])


def checkpoint_hash(raw: bytes) -> bytes:
    return sha256(raw)
