"""Datasets: npz blobs read with limits, built-in generators, and the fixed shard and batch order.

A dataset is two arrays, x (inputs) and y (integer labels or next tokens), with the same
first dimension. Uploaded blobs come from anyone, so `load_npz` reads them without pickles
and checks sizes before allocating anything. A dataset file's stored (uncompressed) arrays
are memory-mapped, not read: a dataset may be larger than memory. The holdout split and the
shards are index views of it (`Dataset.rows`); only a shard's own items are ever gathered. Which items a shard trains on, and in which
order, is a pure function of (job, round, shard): every solver, verifier and referee
computes the same batches without talking to anyone.
"""
from __future__ import annotations

import functools
import hashlib
import io
import lzma
import math
import zipfile
import zlib
from pathlib import Path

import numpy as np

from . import generators, models
from consensus import runnable

MAX_NPZ_BYTES = runnable.MAX_NPZ_BYTES
MAX_ITEMS = 1 << 26  # the holdout permutation and shard indices cost 8 bytes per item
FINITE_BLOCK = 1 << 22  # items checked per pass: no mask the size of the dataset
CRC_BLOCK = 8 << 20  # bytes of a stored member read per pass to check its CRC
ZIP_ENCRYPTED = 0x1  # zip flag bit: zipfile would raise RuntimeError without a password
HOLDOUT_SEED = 0x5EED  # one fixed permutation decides the held-out items of every dataset
NUMERIC_KINDS = "biuf"  # bool, signed, unsigned, float


class DataError(ValueError):
    """A dataset that cannot be used: malformed, too large, or not matching the model."""


class Dataset:
    """x and y (maybe memory-mapped), and optionally which of their rows this dataset is."""

    def __init__(self, x: np.ndarray, y: np.ndarray, rows: np.ndarray | None = None):
        if x.ndim == 0 or y.ndim == 0 or len(x) != len(y):
            raise DataError(f"x and y need the same first dimension (got {x.shape} and {y.shape})")
        self.base_x, self.base_y, self.rows = x, y, rows

    @property
    def x(self) -> np.ndarray:
        return self.base_x if self.rows is None else self.base_x[self.rows]

    @property
    def y(self) -> np.ndarray:
        return self.base_y if self.rows is None else self.base_y[self.rows]

    def __len__(self) -> int:
        return len(self.base_x) if self.rows is None else len(self.rows)

    def subset(self, idx: np.ndarray) -> "Dataset":
        """Items idx of this dataset, as a view: nothing is copied until `take`."""
        return Dataset(self.base_x, self.base_y, idx if self.rows is None else self.rows[idx])

    def take(self, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The arrays of items idx, gathered (from disk, for a mapped dataset)."""
        rows = idx if self.rows is None else self.rows[idx]
        return self.base_x[rows], self.base_y[rows]


# -- npz blobs -------------------------------------------------------------------------------


def _npy_header(f, name: str) -> tuple[tuple, bool, np.dtype]:
    version = np.lib.format.read_magic(f)
    if version == (1, 0):
        shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
    elif version == (2, 0):
        shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
    else:
        raise DataError(f"array {name} uses unsupported .npy format {version}")
    if dtype.hasobject or dtype.kind not in NUMERIC_KINDS:
        raise DataError(f"array {name} has dtype {dtype}: only numeric arrays are allowed (no objects, no pickles)")
    if dtype.itemsize > 8:  # long double: 80 bits on x86, 128 on arm, so one blob, two datasets
        raise DataError(f"array {name} has dtype {dtype}: items of more than 8 bytes read differently per machine")
    return shape, fortran, dtype


def _read_npy(zf: zipfile.ZipFile, info: zipfile.ZipInfo, path: Path | None, archive, size: int) -> np.ndarray:
    """One array, its header checked before any memory is allocated for the data; a stored
    member of a file on disk is memory-mapped instead of read."""
    name = info.filename[:-4]
    with zf.open(info) as f:
        shape, fortran, dtype = _npy_header(f, name)
        header = f.tell()
        nbytes = math.prod(shape) * dtype.itemsize
        if nbytes > info.file_size - header:
            raise DataError(f"array {name} is truncated: its header promises {nbytes} bytes")
        if info.compress_type == zipfile.ZIP_STORED:
            start = _stored_start(archive, size, info)  # checked whether mapped or read
            if path is not None and dtype.isnative and nbytes:
                return np.memmap(path, dtype=dtype, mode="r", offset=start + header, shape=shape,
                                 order="F" if fortran else "C")
        raw = f.read(nbytes)
    if len(raw) != nbytes:
        raise DataError(f"array {name} is truncated")
    arr = np.frombuffer(raw, dtype=dtype).reshape(shape, order="F" if fortran else "C")
    return arr.astype(dtype.newbyteorder("="), order="C")  # (np.ascontiguousarray would make 0-d 1-d)


def _stored_start(archive, size: int, info: zipfile.ZipInfo) -> int:
    """Where a stored member's data begins (after its local header), once it is checked as
    zipfile checks a member read to its end: its sizes agree, it lies inside the archive, its
    CRC matches. So a mapped file and bytes read by zipfile (a referee's copy from a peer)
    accept the same archives and give the same arrays; the price is one read of the data."""
    name = info.filename[:-4]
    archive.seek(info.header_offset)
    local = archive.read(30)
    if len(local) != 30 or local[:4] != b"PK\x03\x04":
        raise DataError(f"array {name}: damaged zip member header")
    name_len, extra_len = int.from_bytes(local[26:28], "little"), int.from_bytes(local[28:30], "little")
    start = info.header_offset + 30 + name_len + extra_len
    if info.compress_size != info.file_size or start + info.file_size > size:
        raise DataError(f"array {name}: its zip member is truncated")
    archive.seek(start)
    crc, left = 0, info.file_size
    while left:
        piece = archive.read(min(left, CRC_BLOCK))
        if not piece:
            raise DataError(f"array {name}: its zip member is truncated")
        crc, left = zlib.crc32(piece, crc), left - len(piece)
    if crc != info.CRC:
        raise DataError(f"array {name}: its data does not match the zip's CRC-32")
    return start


def _all_finite(arr: np.ndarray) -> bool:
    flat = arr.reshape(len(arr), -1) if arr.ndim > 1 else arr
    return all(np.isfinite(flat[i:i + FINITE_BLOCK]).all() for i in range(0, len(flat), FINITE_BLOCK))


def load_npz(src: bytes | str | Path, max_bytes: int = MAX_NPZ_BYTES, max_items: int = MAX_ITEMS) -> Dataset:
    """Read an .npz holding exactly x and y (bytes, or a file whose stored arrays are mapped,
    not read); raise DataError with the reason otherwise.

    `max_bytes` caps the blob and also its unpacked arrays (a small zip can inflate a lot).
    """
    path = Path(src) if isinstance(src, (str, Path)) else None
    try:
        size = path.stat().st_size if path is not None else len(src)
        if size > max_bytes:
            raise DataError(f"dataset of {size} bytes exceeds the limit of {max_bytes}")
        with zipfile.ZipFile(path if path is not None else io.BytesIO(src)) as zf:
            infos = zf.infolist()
            names = sorted(i.filename for i in infos)
            if names != ["x.npy", "y.npy"]:
                found = ", ".join(n.removesuffix(".npy") for n in names) or "nothing"
                raise DataError(f"the npz must hold exactly arrays x and y (found {found})")
            if sum(i.file_size for i in infos) > max_bytes:
                raise DataError(f"the npz unpacks to more than the limit of {max_bytes} bytes")
            if any(i.flag_bits & ZIP_ENCRYPTED for i in infos):
                raise DataError("the npz is encrypted")
            with open(path, "rb") if path is not None else io.BytesIO(src) as archive:
                arrays = {i.filename[:-4]: _read_npy(zf, i, path, archive, size) for i in infos}
    except DataError:
        raise
    except (zipfile.BadZipFile, ValueError, OSError, EOFError, NotImplementedError, zlib.error,
            lzma.LZMAError) as exc:  # the last two: a damaged deflate or lzma member
        raise DataError(f"not a readable npz archive: {exc}") from None
    x, y = arrays["x"], arrays["y"]
    if x.ndim == 0 or y.ndim == 0 or len(x) != len(y):
        raise DataError(f"x and y need the same first dimension (got shapes {x.shape} and {y.shape})")
    if not 1 <= len(x) <= max_items:
        raise DataError(f"the dataset has {len(x)} items; between 1 and {max_items} are allowed")
    for name, arr in (("x", x), ("y", y)):
        if arr.dtype.kind == "f" and not _all_finite(arr):
            raise DataError(f"array {name} contains NaN or infinite values")
    return Dataset(x, y)


def _canonical(arr: np.ndarray) -> np.ndarray:
    return arr.astype(arr.dtype.newbyteorder("<"), order="C", copy=False)


def save_npz(ds: Dataset) -> bytes:
    """Deterministic npz bytes: stored (uncompressed) members with a fixed timestamp."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:
        for name, arr in (("x", ds.x), ("y", ds.y)):
            member = io.BytesIO()
            np.lib.format.write_array(member, _canonical(arr), allow_pickle=False)
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.create_system, info.external_attr = 3, 0o644 << 16
            zf.writestr(info, member.getvalue())
    return buf.getvalue()


# -- built-in generators ---------------------------------------------------------------------


def validate_generator(name: str, args: dict) -> dict:
    """Raise DataError unless the generator exists and its arguments are in range; returns them."""
    return runnable.check_generator(name, args, DataError)


def generate(name: str, args: dict, seed: int) -> Dataset:
    """The generator's dataset for `seed`: identical bytes on every machine."""
    norm = validate_generator(name, args)
    if type(seed) is not int or not 0 <= seed < 2**63:
        raise DataError(f"generator seed must be an integer in [0, 2^63), got {seed!r}")
    x, y = generators.GENERATORS[name][1](norm, generators.pcg64(seed))
    return Dataset(x, y)


# -- fitting a model, holding out, sharding --------------------------------------------------


def _int_range(arr: np.ndarray) -> tuple[int, int] | None:
    return (int(arr.min()), int(arr.max())) if arr.dtype.kind in "iu" and arr.size else None


def items_of(ds: Dataset) -> runnable.Items:
    """The dataset as the shared rules see it: shapes and integer value ranges (of every item,
    held out or not: a view is judged by what it is a view of, never gathered for this)."""
    x, y = ds.base_x, ds.base_y
    return runnable.Items(len(ds), tuple(x.shape[1:]), _int_range(x), tuple(y.shape[1:]), _int_range(y))


def check_compatible(ds: Dataset, model_name: str, model_args: dict) -> None:
    """Raise DataError unless the dataset's shapes and value ranges fit the model (the rule the
    chain applies to a generator's items, here applied to the actual arrays)."""
    broken = runnable.compat_error(model_name, models.model_input_spec(model_name, model_args), items_of(ds))
    if broken:
        raise DataError(broken)


def split_holdout(ds: Dataset, fraction_ppm: int) -> tuple[Dataset, Dataset]:
    """(train, holdout): a fixed permutation picks len*ppm/10^6 items to hold out.

    A permutation rather than the tail, so a dataset sorted by class still gets a fair
    held-out set; each part keeps the dataset's original item order.
    """
    if type(fraction_ppm) is not int or not 0 <= fraction_ppm < 1_000_000:
        raise DataError(f"holdout fraction must be an integer ppm in [0, 10^6), got {fraction_ppm!r}")
    n_hold = runnable.held_out(len(ds), fraction_ppm)
    perm = generators.pcg64(HOLDOUT_SEED).permutation(len(ds))
    return ds.subset(np.sort(perm[n_hold:])), ds.subset(np.sort(perm[:n_hold]))


def shard_indices(n_items: int, shards: int, shard: int) -> np.ndarray:
    """Shard `shard` of a partition of range(n_items): items shard, shard+shards, ...

    Strided rather than contiguous, so a dataset sorted by class gives every shard all classes.
    """
    if not 1 <= shards <= n_items:
        raise DataError(f"cannot split {n_items} training items into {shards} shards")
    if not 0 <= shard < shards:
        raise DataError(f"shard {shard} does not exist (there are {shards})")
    return np.arange(shard, n_items, shards, dtype=np.int64)


# -- the batch order -------------------------------------------------------------------------


def order_seed(job_id: bytes, round_: int, shard: int) -> bytes:
    """sha256(tag || job_id || round || shard): the root of one shard's data order."""
    return hashlib.sha256(b"stepchain/batch-order" + bytes(job_id) + round_.to_bytes(8, "big")
                          + shard.to_bytes(8, "big")).digest()


@functools.lru_cache(maxsize=8)
def _epoch(seed: bytes, epoch: int, shard_size: int) -> np.ndarray:
    # Each epoch has its own seed, so any step's batch is found without replaying earlier ones.
    sub = hashlib.sha256(seed + epoch.to_bytes(8, "big")).digest()
    perm = generators.pcg64(int.from_bytes(sub, "big")).permutation(shard_size)
    perm.setflags(write=False)
    return perm


def batch_rows(seed: bytes, shard_size: int, batch_size: int, first_step: int, n_steps: int) -> np.ndarray:
    """Rows first_step .. first_step+n_steps-1 of the batch order (positions within the shard).

    The order is an endless sequence of epochs, each a permutation of the shard, cut into
    batches; a batch may straddle two epochs. Computing a slice touches only its epochs, so a
    verifier pays for k steps, not for the whole shard.
    """
    if shard_size < 1 or batch_size < 1 or first_step < 0 or n_steps < 0:
        raise DataError("batch order needs a non-empty shard, batch_size >= 1 and steps >= 0")
    start, stop = first_step * batch_size, (first_step + n_steps) * batch_size
    parts = [_epoch(seed, e, shard_size) for e in range(start // shard_size, -(-stop // shard_size))]
    flat = np.concatenate(parts) if parts else np.empty(0, dtype=np.int64)
    offset = start - (start // shard_size) * shard_size
    return flat[offset:offset + stop - start].reshape(n_steps, batch_size)


def batch_order(job_id: bytes, round_: int, shard: int, shard_size: int, steps: int, batch_size: int) -> np.ndarray:
    """(steps, batch_size) positions within the shard, fixed per (job, round, shard)."""
    return batch_rows(order_seed(job_id, round_, shard), shard_size, batch_size, 0, steps)
