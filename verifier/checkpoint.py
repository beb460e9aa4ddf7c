"""Training state and its canonical bytes, whose sha256 is a Merkle leaf.

A checkpoint is one consensus.codec map (keys sorted by the codec):
    format  1
    params  {parameter name: [dtype, shape, raw little-endian bytes]}
    opt     {optimizer slot: [dtype, shape, raw bytes]}   e.g. "m/<param>", "beta1_power"
    step    steps taken in this round (0 at the round's start)
    rng     32 bytes, advanced every step
Equal states give equal bytes on any machine, so equal hashes mean equal training, and a
verifier compares two checkpoints by their hashes alone. Decoding checks every field, so a
malformed blob from a solver is refused with a reason instead of crashing a verifier, and
only the canonical encoding of a state is accepted.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from consensus import codec

FORMAT = 1
MAX_CHECKPOINT_BYTES = 64 * 1024 * 1024
MAX_TENSOR_DIMS = 8
RNG_BYTES = 32
DTYPES = {"float32": torch.float32, "float64": torch.float64}
_NUMPY = {"float32": np.dtype("<f4"), "float64": np.dtype("<f8")}
_NAMES = {v: k for k, v in DTYPES.items()}
FIELDS = {"format", "params", "opt", "step", "rng"}


class CheckpointError(ValueError):
    """Bytes that are not a valid checkpoint, or a checkpoint that does not fit the job."""


@dataclass(frozen=True, eq=False)
class TrainState:
    """Everything a training step reads and writes. Tensors are treated as read-only: training
    works on copies, so a state can be shared between a solver's leaves and its caller."""
    params: dict[str, torch.Tensor]
    opt: dict[str, torch.Tensor]
    step: int
    rng: bytes


# -- tensors ---------------------------------------------------------------------------------


def _tensor_entry(t: torch.Tensor) -> list:
    if t.dtype not in _NAMES:
        raise CheckpointError(f"tensors must be float32 or float64, got {t.dtype}")
    a = t.detach().to("cpu").contiguous().numpy()
    name = _NAMES[t.dtype]
    return [name, list(a.shape), a.astype(_NUMPY[name], copy=False).tobytes()]


def _tensor(where: str, entry) -> torch.Tensor:
    if type(entry) is not list or len(entry) != 3:
        raise CheckpointError(f"{where}: expected [dtype, shape, bytes]")
    dtype, shape, raw = entry
    if dtype not in DTYPES:
        raise CheckpointError(f"{where}: dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    if type(shape) is not list or len(shape) > MAX_TENSOR_DIMS or not all(type(d) is int and d >= 0 for d in shape):
        raise CheckpointError(f"{where}: shape must be a list of at most {MAX_TENSOR_DIMS} non-negative integers")
    if type(raw) is not bytes or len(raw) != math.prod(shape) * _NUMPY[dtype].itemsize:
        raise CheckpointError(f"{where}: data length does not match shape {shape} and dtype {dtype}")
    arr = np.frombuffer(raw, dtype=_NUMPY[dtype]).reshape(shape).astype(_NUMPY[dtype].newbyteorder("="))
    return torch.from_numpy(arr)


def _tensor_map(where: str, obj, allow_empty: bool) -> dict[str, torch.Tensor]:
    if type(obj) is not dict or (not obj and not allow_empty) or not all(type(k) is str for k in obj):
        raise CheckpointError(f"{where} must be a {'' if allow_empty else 'non-empty '}map of names to tensors")
    return {name: _tensor(f"{where}[{name}]", entry) for name, entry in obj.items()}


# -- bytes -----------------------------------------------------------------------------------


def encode(state: TrainState) -> bytes:
    """Canonical bytes of a state."""
    if type(state.step) is not int or state.step < 0 or len(state.rng) != RNG_BYTES:
        raise CheckpointError("a state needs a non-negative int step and a 32-byte rng")
    return codec.encode({
        "format": FORMAT,
        "params": {n: _tensor_entry(t) for n, t in state.params.items()},
        "opt": {n: _tensor_entry(t) for n, t in state.opt.items()},
        "step": state.step,
        "rng": bytes(state.rng),
    })


def decode(raw: bytes, max_bytes: int = MAX_CHECKPOINT_BYTES) -> TrainState:
    """Parse canonical checkpoint bytes; raise CheckpointError saying what is wrong.

    Checks the format; `training.check_state` checks that it fits a particular job.
    """
    try:
        obj = codec.decode(raw, max_size=max_bytes)
    except codec.CodecError as exc:
        raise CheckpointError(f"not a checkpoint: {exc}") from None
    if type(obj) is not dict or set(obj) != FIELDS:
        raise CheckpointError(f"not a checkpoint: expected exactly the fields {', '.join(sorted(FIELDS))}")
    if type(obj["format"]) is not int or obj["format"] != FORMAT:  # (True == 1 in Python)
        raise CheckpointError(f"checkpoint format {obj['format']!r} is not supported (this node reads {FORMAT})")
    if type(obj["step"]) is not int or obj["step"] < 0:
        raise CheckpointError("checkpoint step must be a non-negative integer")
    if type(obj["rng"]) is not bytes or len(obj["rng"]) != RNG_BYTES:
        raise CheckpointError(f"checkpoint rng must be {RNG_BYTES} bytes")
    state = TrainState(_tensor_map("params", obj["params"], False), _tensor_map("opt", obj["opt"], True),
                       obj["step"], obj["rng"])
    # One state, one accepted encoding: otherwise a solver could publish two leaves (two
    # hashes) for the same training. Re-encoding costs a copy, far less than a replay.
    if encode(state) != bytes(raw):
        raise CheckpointError("not a checkpoint: the bytes are not the canonical encoding of their state")
    return state


def is_finite(state: TrainState) -> bool:
    """True when no parameter or optimizer tensor holds an inf or a NaN.

    A non-finite state is absorbing (every later step keeps it non-finite, and two of them
    cannot be told apart by distance), so a commit declares its first non-finite leaf and the
    verifier judges those leaves by that declaration, never by comparing them.
    """
    return all(bool(torch.isfinite(t).all()) for t in (*state.params.values(), *state.opt.values()))


def checkpoint_hash(raw: bytes) -> bytes:
    """The Merkle leaf of a checkpoint: the blob id of its canonical bytes (consensus/blobid.py)."""
    from consensus.blobid import blob_id
    return blob_id(raw)
