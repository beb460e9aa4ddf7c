"""Training state and its canonical bytes, whose blob id is a Merkle leaf.

A checkpoint is one consensus.codec map (keys sorted by the codec):
    format  2
    loss    the sum of this interval's step losses so far, as the bits of an IEEE float64
            (0 at a round's start; it restarts at every leaf): a leaf commits its interval's
            loss, so the loss curve is verified exactly as the weights are
    params  {parameter name: [dtype, shape, raw little-endian bytes]}
    opt     {optimizer slot: [dtype, shape, raw bytes]}   e.g. "m/<param>", "beta1_power"
    step    steps taken in this round (0 at the round's start)
    rng     32 bytes, advanced every step
Equal states give equal bytes on any machine, so equal hashes mean equal training, and a
verifier compares two checkpoints by their hashes alone. Decoding checks every field, so a
malformed blob from a solver is refused with a reason instead of crashing a verifier, and
only the canonical encoding of a state is accepted.

Checkpoints of real models are gigabytes, so both directions stream: `write` emits the
msgpack framing itself and each tensor's memory as it is (no copy of the tensors, no
buffer of the whole), hashing on the way; `decode` reads a file or bytes header by header
and each tensor's data straight into the array that keeps it, checking every header is the
one canonical form instead of re-encoding the whole to compare.
"""
from __future__ import annotations

import io
import math
import os
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from consensus.blobid import BlobHasher, blob_id, file_id

FORMAT = 2  # 2: the interval's loss is part of the state
MAX_CHECKPOINT_BYTES = 1 << 36  # well above any genesis blob cap: the blob cap is the real bound
MAX_TENSOR_DIMS = 8
MAX_TENSORS = 10_000  # per map: a 24-layer gpt has 300; each costs ~1 KB of bookkeeping
MAX_NAME_BYTES = 1024
RNG_BYTES = 32
DTYPES = {"float32": torch.float32, "float64": torch.float64}
_NUMPY = {"float32": np.dtype("<f4"), "float64": np.dtype("<f8")}
_NAMES = {v: k for k, v in DTYPES.items()}
FIELDS = ("format", "loss", "opt", "params", "rng", "step")  # in canonical (sorted) order
PIECE = 8 << 20  # bytes written or read per call: bounds the transient copies


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
    loss: int = 0  # float64 bits: the sum of the step losses since the interval began

    @property
    def loss_sum(self) -> float:
        return bits_float(self.loss)


def float_bits(x: float) -> int:
    """An IEEE float64 as the integer of its bits: how the chain and a checkpoint hold a loss."""
    return struct.unpack("<Q", struct.pack("<d", x))[0]


def bits_float(bits: int) -> float:
    return struct.unpack("<d", struct.pack("<Q", bits))[0]


CANONICAL_NAN = 0x7FF8000000000000


def interval_mean(loss_bits: int, k: int) -> int:
    """The bits of a leaf's mean step loss over its k-step interval: what a commit declares for
    the leaf (one IEEE division of the leaf's own sum: the same bits everywhere). A NaN mean is
    declared as the one canonical NaN: how a division carries a NaN's payload is the CPU's
    business, and a solver and its verifier may run on different ones."""
    mean = bits_float(loss_bits) / k
    return float_bits(mean) if mean == mean else CANONICAL_NAN


# -- msgpack framing, written and read by hand ------------------------------------------------


def _map_header(n: int) -> bytes:
    return bytes([0x80 | n]) if n < 16 else b"\xde" + struct.pack(">H", n) if n < 1 << 16 else b"\xdf" + struct.pack(">I", n)


def _array_header(n: int) -> bytes:
    return bytes([0x90 | n]) if n < 16 else b"\xdc" + struct.pack(">H", n) if n < 1 << 16 else b"\xdd" + struct.pack(">I", n)


def _bin_header(n: int) -> bytes:
    return b"\xc4" + bytes([n]) if n < 256 else b"\xc5" + struct.pack(">H", n) if n < 1 << 16 else b"\xc6" + struct.pack(">I", n)


def _str(s: str) -> bytes:
    raw = s.encode()
    n = len(raw)
    head = bytes([0xa0 | n]) if n < 32 else b"\xd9" + bytes([n]) if n < 256 else b"\xda" + struct.pack(">H", n)
    return head + raw


def _uint(v: int) -> bytes:
    if v < 128:
        return bytes([v])
    if v < 256:
        return b"\xcc" + bytes([v])
    if v < 1 << 16:
        return b"\xcd" + struct.pack(">H", v)
    if v < 1 << 32:
        return b"\xce" + struct.pack(">I", v)
    return b"\xcf" + struct.pack(">Q", v)


# -- writing ---------------------------------------------------------------------------------


def _tensor_bytes(t: torch.Tensor) -> tuple[str, memoryview]:
    """(dtype name, the tensor's little-endian bytes): a view of its memory when it is already
    a contiguous CPU tensor, else one copy of this tensor only."""
    if t.dtype not in _NAMES:
        raise CheckpointError(f"tensors must be float32 or float64, got {t.dtype}")
    name = _NAMES[t.dtype]
    a = t.detach().to("cpu").contiguous().numpy()
    a = a.astype(_NUMPY[name], copy=False).reshape(-1)  # a copy only on a big-endian machine
    return name, memoryview(a).cast("B")


class _Sink:
    """Where encoded bytes go: a hasher (always) and optionally a file."""

    def __init__(self, file=None):
        self.file, self.hasher = file, BlobHasher()

    def put(self, data) -> None:
        view = memoryview(data).cast("B")
        for i in range(0, len(view), PIECE):
            piece = view[i:i + PIECE]
            self.hasher.update(piece)
            if self.file is not None:
                self.file.write(piece)


def _write_tensors(sink: _Sink, tensors: dict[str, torch.Tensor]) -> None:
    sink.put(_map_header(len(tensors)))
    for name in sorted(tensors):
        t = tensors[name]
        dtype, raw = _tensor_bytes(t)
        if len(raw) >= 1 << 32:  # msgpack's largest bytes object
            raise CheckpointError(f"tensor {name} is {len(raw)} bytes: a checkpoint tensor must be under 4 GiB")
        shape = list(t.shape)
        sink.put(_str(name) + _array_header(3) + _str(dtype) + _array_header(len(shape))
                 + b"".join(_uint(d) for d in shape) + _bin_header(len(raw)))
        sink.put(raw)


def write(state: TrainState, file=None) -> bytes:
    """Stream the canonical bytes of a state into `file` (or only hash them); the blob id."""
    if type(state.step) is not int or state.step < 0 or len(state.rng) != RNG_BYTES \
            or type(state.loss) is not int or not 0 <= state.loss < 1 << 64:
        raise CheckpointError("a state needs a non-negative int step, a 32-byte rng and 64 loss bits")
    sink = _Sink(file)
    sink.put(_map_header(len(FIELDS)) + _str("format") + _uint(FORMAT) + _str("loss") + _uint(state.loss)
             + _str("opt"))
    _write_tensors(sink, state.opt)
    sink.put(_str("params"))
    _write_tensors(sink, state.params)
    sink.put(_str("rng") + _bin_header(RNG_BYTES) + bytes(state.rng) + _str("step") + _uint(state.step))
    return sink.hasher.digest()


def encode(state: TrainState) -> bytes:
    """Canonical bytes of a state (for small states: the bytes are held whole)."""
    buf = io.BytesIO()
    write(state, buf)
    return buf.getvalue()


def digest(state: TrainState) -> bytes:
    """The blob id of a state's canonical bytes, computed without holding them."""
    return write(state)


def save(state: TrainState, path: str | Path) -> bytes:
    """Write a state to `path` (atomically: a crash leaves no half checkpoint); its blob id."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.part")
    with open(tmp, "wb") as f:
        digest_ = write(state, f)
    os.replace(tmp, path)
    return digest_


# -- reading ---------------------------------------------------------------------------------


class _Reader:
    """Canonical msgpack read piece by piece from a file, every header checked to be the
    one form the encoder writes."""

    def __init__(self, f, size: int):
        self.f, self.left, self.size = f, size, size

    def take(self, n: int) -> bytes:
        if n > self.left:
            raise CheckpointError("not a checkpoint: truncated")
        data = self.f.read(n)
        if len(data) != n:
            raise CheckpointError("not a checkpoint: truncated")
        self.left -= n
        return data

    def _length(self, short_base: int, short_max: int, codes: dict[int, int], err: str) -> tuple[int, bytes]:
        first = self.take(1)[0]
        if short_base <= first < short_base + short_max:
            return first - short_base, bytes([first])
        if first not in codes:
            raise CheckpointError(err)
        width = codes[first]
        raw = self.take(width)
        return int.from_bytes(raw, "big"), bytes([first]) + raw

    def _canonical(self, got: bytes, want: bytes, what: str) -> None:
        if got != want:
            raise CheckpointError(f"not a checkpoint: {what} header is not in canonical form")

    def map(self, err: str) -> int:
        n, raw = self._length(0x80, 16, {0xde: 2, 0xdf: 4}, err)
        self._canonical(raw, _map_header(n), "map")
        return n

    def array(self, err: str) -> int:
        n, raw = self._length(0x90, 16, {0xdc: 2, 0xdd: 4}, err)
        self._canonical(raw, _array_header(n), "list")
        return n

    def bin(self, err: str) -> int:
        n, raw = self._length(0x100, 0, {0xc4: 1, 0xc5: 2, 0xc6: 4}, err)
        self._canonical(raw, _bin_header(n), "bytes")
        return n

    def str(self, err: str) -> str:
        n, raw = self._length(0xa0, 32, {0xd9: 1, 0xda: 2, 0xdb: 4}, err)
        if n > MAX_NAME_BYTES:
            raise CheckpointError(f"not a checkpoint: a name longer than {MAX_NAME_BYTES} bytes")
        try:
            s = self.take(n).decode()
        except UnicodeDecodeError:
            raise CheckpointError("not a checkpoint: a name is not UTF-8") from None
        self._canonical(raw + s.encode(), _str(s), "string")
        return s

    def uint(self, err: str) -> int:
        first = self.take(1)[0]
        if first < 128:
            return first
        widths = {0xcc: 1, 0xcd: 2, 0xce: 4, 0xcf: 8}
        if first not in widths:
            raise CheckpointError(err)
        raw = self.take(widths[first])
        v = int.from_bytes(raw, "big")
        self._canonical(bytes([first]) + raw, _uint(v), "integer")
        return v

    @property
    def offset(self) -> int:
        return self.size - self.left

    def skip(self, n: int) -> None:
        if n > self.left:
            raise CheckpointError("not a checkpoint: truncated")
        self.f.seek(n, os.SEEK_CUR)
        self.left -= n

    def into(self, arr: np.ndarray) -> None:
        """Read len(arr) items' bytes straight into arr."""
        view = memoryview(arr).cast("B")
        if len(view) > self.left:
            raise CheckpointError("not a checkpoint: truncated")
        for i in range(0, len(view), PIECE):
            piece = view[i:i + PIECE]
            if self.f.readinto(piece) != len(piece):
                raise CheckpointError("not a checkpoint: truncated")
        self.left -= len(view)


@dataclass(frozen=True)
class TensorRef:
    """Where a tensor's data lies in a checkpoint file (`index`), to read it alone."""
    dtype: str
    shape: tuple[int, ...]
    offset: int


def _read_tensor(r: _Reader, where: str, load: bool = True) -> torch.Tensor | TensorRef:
    entry = f"{where}: expected [dtype, shape, bytes]"
    if r.array(entry) != 3:
        raise CheckpointError(entry)
    dtype = r.str(f"{where}: dtype must be one of {', '.join(DTYPES)}")
    if dtype not in DTYPES:
        raise CheckpointError(f"{where}: dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    bad_shape = f"{where}: shape must be a list of at most {MAX_TENSOR_DIMS} non-negative integers"
    dims = r.array(bad_shape)
    if dims > MAX_TENSOR_DIMS:
        raise CheckpointError(bad_shape)
    shape = [r.uint(bad_shape) for _ in range(dims)]
    if math.prod(max(d, 1) for d in shape) * _NUMPY[dtype].itemsize > MAX_CHECKPOINT_BYTES:
        # an empty tensor with giant dimensions: nothing numpy (or any model) can hold
        raise CheckpointError(f"{where}: shape {shape} is larger than any checkpoint")
    mismatch = f"{where}: data length does not match shape {shape} and dtype {dtype}"
    nbytes = r.bin(mismatch)
    if nbytes != math.prod(shape) * _NUMPY[dtype].itemsize:
        raise CheckpointError(mismatch)
    if not load:
        ref = TensorRef(dtype, tuple(shape), r.offset)
        r.skip(nbytes)
        return ref
    arr = np.empty(math.prod(shape), dtype=_NUMPY[dtype]) if nbytes <= r.left else None
    if arr is None:  # checked before allocating: a small file cannot ask for gigabytes
        raise CheckpointError("not a checkpoint: truncated")
    r.into(arr)
    if arr.dtype.byteorder not in ("=", "|") and arr.dtype != arr.dtype.newbyteorder("="):
        arr = arr.astype(arr.dtype.newbyteorder("="))
    return torch.from_numpy(arr.reshape(shape))


def _read_tensors(r: _Reader, where: str, allow_empty: bool, load: bool = True) -> dict:
    err = f"{where} must be a {'' if allow_empty else 'non-empty '}map of names to tensors"
    n = r.map(err)
    if n > MAX_TENSORS or (n == 0 and not allow_empty):
        raise CheckpointError(err)
    out: dict[str, torch.Tensor] = {}
    last = None
    for _ in range(n):
        name = r.str(err)
        if last is not None and name <= last:
            raise CheckpointError(f"not a checkpoint: {where} names are not in canonical order")
        out[name] = _read_tensor(r, f"{where}[{name}]", load)
        last = name
    return out


def _read_state(r: _Reader, load: bool = True) -> TrainState:
    fields_err = f"not a checkpoint: expected exactly the fields {', '.join(FIELDS)}"
    if r.map(fields_err) != len(FIELDS):
        raise CheckpointError(fields_err)
    fields = {}
    for want in FIELDS:
        if r.str(fields_err) != want:
            raise CheckpointError(fields_err)
        if want == "format":
            fields[want] = r.uint(f"checkpoint format is not supported (this node reads {FORMAT})")
            if fields[want] != FORMAT:
                raise CheckpointError(f"checkpoint format {fields[want]!r} is not supported (this node reads {FORMAT})")
        elif want == "loss":
            fields[want] = r.uint("checkpoint loss must be the 64 bits of a float64")
        elif want in ("opt", "params"):
            fields[want] = _read_tensors(r, want, want == "opt", load)
        elif want == "rng":
            rng_err = f"checkpoint rng must be {RNG_BYTES} bytes"
            if r.bin(rng_err) != RNG_BYTES:
                raise CheckpointError(rng_err)
            fields[want] = r.take(RNG_BYTES)
        else:
            fields[want] = r.uint("checkpoint step must be a non-negative integer")
    if r.left:
        raise CheckpointError("not a checkpoint: bytes after the end")
    return TrainState(fields["params"], fields["opt"], fields["step"], fields["rng"], fields["loss"])


def decode(src: bytes | str | Path, max_bytes: int = MAX_CHECKPOINT_BYTES) -> TrainState:
    """Parse canonical checkpoint bytes, or a checkpoint file, streamed; raise CheckpointError
    saying what is wrong.

    Checks the format; `training.check_state` checks that it fits a particular job.
    """
    if isinstance(src, (str, Path)):
        try:
            size = os.path.getsize(src)
            if size > max_bytes:
                raise CheckpointError(f"not a checkpoint: {size} bytes exceeds the limit of {max_bytes}")
            with open(src, "rb", buffering=0) as f:
                return _read_state(_Reader(f, size))
        except OSError as exc:
            raise CheckpointError(f"checkpoint cannot be read: {exc.strerror}") from None
    if not isinstance(src, (bytes, bytearray, memoryview)):
        raise CheckpointError("not a checkpoint: expected bytes")
    if len(src) > max_bytes:
        raise CheckpointError(f"not a checkpoint: input of {len(src)} bytes exceeds the limit of {max_bytes}")
    return _read_state(_Reader(io.BytesIO(src), len(src)))


def index(path: str | Path) -> TrainState:
    """A checkpoint file's framing, checked like `decode`, with a TensorRef where each tensor
    would be: to read its tensors one at a time (`read_tensor`) instead of all at once."""
    try:
        size = os.path.getsize(path)
        with open(path, "rb", buffering=0) as f:
            return _read_state(_Reader(f, size), load=False)
    except OSError as exc:
        raise CheckpointError(f"checkpoint cannot be read: {exc.strerror}") from None


def read_tensor(path: str | Path, ref: TensorRef) -> torch.Tensor:
    """One tensor of a checkpoint file, at the place `index` found it."""
    arr = np.empty(math.prod(ref.shape), dtype=_NUMPY[ref.dtype])
    with open(path, "rb", buffering=0) as f:
        f.seek(ref.offset)
        r = _Reader(f, arr.nbytes)
        r.into(arr)
    return torch.from_numpy(arr.reshape(ref.shape))


def is_finite(state: TrainState) -> bool:
    """True when no parameter or optimizer tensor holds an inf or a NaN.

    A non-finite state is absorbing (every later step keeps it non-finite, and two of them
    cannot be told apart by distance), so a commit declares its first non-finite leaf and the
    verifier judges those leaves by that declaration, never by comparing them.
    """
    return all(_finite(t) for t in (*state.params.values(), *state.opt.values()))


def _finite(t: torch.Tensor) -> bool:
    # A float32 tensor's float64 sum is finite iff every entry is (|x| < 3.5e38, so no finite
    # float64 sum of fewer than 1e269 of them overflows): one pass, no mask the size of the tensor.
    # numpy sums in buffered blocks; torch's sum(dtype=float64) first casts the whole tensor.
    if t.dtype == torch.float32 and t.device.type == "cpu":
        return math.isfinite(np.add.reduce(t.detach().contiguous().numpy().reshape(-1), dtype=np.float64))
    return bool(torch.isfinite(t).all())


def checkpoint_hash(src: bytes | str | Path) -> bytes:
    """The Merkle leaf of a checkpoint: the blob id of its canonical bytes (consensus/blobid.py),
    of bytes in memory or of a file, streamed."""
    return file_id(src) if isinstance(src, (str, Path)) else blob_id(src)
