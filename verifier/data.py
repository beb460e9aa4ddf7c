"""Datasets: npz blobs with limits, built-in generators, and the fixed shard and batch order.

All randomness comes from numpy's PCG64 seeded explicitly, so a generator gives the same
arrays on every machine, and a shard's batch order is fixed by (job, round, shard).
"""
from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np

from consensus import codec
from consensus.crypto import sha256

MAX_NPZ_BYTES = 32 * 1024 * 1024
MAX_ITEMS = 1_000_000
TEXT = (
    "the chain never runs torch. it records what solvers commit, draws verifiers from the beacon, "
    "and moves tokens to whoever did honest work. a solver trains its shard and publishes a "
    "checkpoint every k steps. a verifier re-runs a few intervals and compares the hashes. "
    "when they differ, validators recompute the disputed steps and vote; the loser is slashed. "
    "honest work is cheap to check and fraud is expensive, so everyone trains honestly. "
)
CHARSET = sorted(set(TEXT))


class DataError(ValueError):
    """A dataset that cannot be used: malformed, too large, or not matching the model."""


@dataclass(frozen=True)
class Dataset:
    x: np.ndarray
    y: np.ndarray

    def __len__(self) -> int:
        return len(self.x)

    def subset(self, idx: np.ndarray) -> "Dataset":
        return Dataset(self.x[idx], self.y[idx])


def _rng(seed: int) -> np.random.Generator:
    return np.random.Generator(np.random.PCG64(seed))


# -- npz ------------------------------------------------------------------------------------

def load_npz(raw: bytes, max_bytes: int = MAX_NPZ_BYTES, max_items: int = MAX_ITEMS) -> Dataset:
    if len(raw) > max_bytes:
        raise DataError(f"dataset of {len(raw)} bytes exceeds the limit of {max_bytes}")
    try:
        with np.load(io.BytesIO(raw), allow_pickle=False) as z:
            if sorted(z.files) != ["x", "y"]:
                raise DataError(f"the npz must hold exactly arrays x and y, found {', '.join(z.files) or 'none'}")
            x, y = z["x"], z["y"]
    except DataError:
        raise
    except (ValueError, OSError, EOFError) as exc:
        raise DataError(f"not a readable npz without pickles: {exc}") from None
    if x.dtype.kind not in "iuf" or y.dtype.kind not in "iuf":
        raise DataError("x and y must be numeric arrays")
    if x.ndim == 0 or y.ndim == 0 or len(x) != len(y) or len(x) == 0:
        raise DataError("x and y need the same, non-zero first dimension")
    if len(x) > max_items:
        raise DataError(f"{len(x)} items exceed the limit of {max_items}")
    if not (np.isfinite(x).all() and np.isfinite(y).all()):
        raise DataError("the dataset contains NaN or infinite values")
    return Dataset(x, y)


def save_npz(ds: Dataset) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, x=ds.x, y=ds.y)
    return buf.getvalue()


# -- generators -----------------------------------------------------------------------------

def _blobs(a: dict, rng) -> Dataset:
    centers = rng.normal(0, 4, (a["classes"], a["dim"]))
    y = rng.integers(0, a["classes"], a["n"])
    return Dataset((centers[y] + rng.normal(0, 1, (a["n"], a["dim"]))).astype(np.float32), y.astype(np.int64))


def _spirals(a: dict, rng) -> Dataset:
    y = rng.integers(0, a["classes"], a["n"])
    t = rng.uniform(0.05, 1.0, a["n"])
    angle = 3.5 * np.pi * t + 2 * np.pi * y / a["classes"]
    x = np.stack([t * np.cos(angle), t * np.sin(angle)], 1) + rng.normal(0, 0.03, (a["n"], 2))
    return Dataset((3 * x).astype(np.float32), y.astype(np.int64))


def _digits(a: dict, rng) -> Dataset:
    side, classes = a["side"], a["classes"]
    templates = (_rng(12345).random((classes, side, side)) > 0.6).astype(np.float32)
    y = rng.integers(0, classes, a["n"])
    shifts = rng.integers(-1, 2, (a["n"], 2))
    x = np.stack([np.roll(templates[c], tuple(s), (0, 1)) for c, s in zip(y, shifts)])
    x = x + rng.normal(0, 0.3, x.shape)
    return Dataset(x.astype(np.float32), y.astype(np.int64))


def _text(a: dict, rng) -> Dataset:
    ids = np.array([CHARSET.index(c) for c in TEXT * 4], dtype=np.int64)
    starts = rng.integers(0, len(TEXT), a["n"])
    windows = np.stack([ids[s:s + a["context"] + 1] for s in starts])
    return Dataset(windows[:, :-1], windows[:, 1:])


GENERATORS = {
    "blobs": ({"n": (10, MAX_ITEMS), "dim": (1, 1024), "classes": (2, 100)}, _blobs),
    "spirals": ({"n": (10, MAX_ITEMS), "classes": (2, 10)}, _spirals),
    "digits": ({"n": (10, 200_000), "side": (4, 64), "classes": (2, 100)}, _digits),
    "text": ({"n": (10, 200_000), "context": (2, 256)}, _text),
}


def validate_generator(name: str, args: dict) -> None:
    if name not in GENERATORS:
        raise DataError(f"unknown data generator {name!r}: choose one of {', '.join(sorted(GENERATORS))}")
    bounds = GENERATORS[name][0]
    if not isinstance(args, dict) or set(args) != set(bounds):
        raise DataError(f"generator {name} takes exactly: {', '.join(sorted(bounds))}")
    for arg, (lo, hi) in bounds.items():
        if type(args[arg]) is not int or not lo <= args[arg] <= hi:
            raise DataError(f"generator {name}: {arg} must be an integer from {lo} to {hi}")


def generate(name: str, args: dict, seed: int) -> Dataset:
    validate_generator(name, args)
    return GENERATORS[name][1](args, _rng(seed))


# -- splits and order -----------------------------------------------------------------------

def split_holdout(ds: Dataset, fraction_ppm: int) -> tuple[Dataset, Dataset]:
    """(train, holdout): a fixed permutation, the last fraction held out for the metric."""
    perm = _rng(0).permutation(len(ds))
    cut = len(ds) - len(ds) * fraction_ppm // 1_000_000
    return ds.subset(np.sort(perm[:cut])), ds.subset(np.sort(perm[cut:]))


def check_compatible(ds: Dataset, model: str, args: dict) -> None:
    """The dataset has the shapes and label range the model needs."""
    if model == "mlp" and (ds.x.ndim != 2 or ds.x.shape[1] != args["in_dim"]):
        raise DataError(f"mlp with in_dim {args['in_dim']} needs x of shape (n, {args['in_dim']}), got {ds.x.shape}")
    if model == "cnn" and ds.x.shape[1:] not in ((args["side"], args["side"]), (1, args["side"], args["side"])):
        raise DataError(f"cnn with side {args['side']} needs x of shape (n, {args['side']}, {args['side']})")
    if model == "char_transformer":
        if ds.x.shape[1:] != (args["context"],) or ds.y.shape != ds.x.shape or ds.x.dtype.kind not in "iu":
            raise DataError(f"char_transformer needs integer x and y of shape (n, {args['context']})")
        if ds.x.min() < 0 or ds.x.max() >= args["vocab"] or ds.y.min() < 0 or ds.y.max() >= args["vocab"]:
            raise DataError(f"token ids must be in [0, {args['vocab']})")
        return
    classes = args["out_dim"]
    if ds.y.ndim != 1 or ds.y.dtype.kind not in "iu" or ds.y.min() < 0 or ds.y.max() >= classes:
        raise DataError(f"labels y must be integers in [0, {classes})")


def shard_indices(n_items: int, shards: int, shard: int) -> np.ndarray:
    """Shard `shard` of a partition of range(n_items): every index in exactly one shard."""
    return np.arange(shard, n_items, shards)


def order_seed(job_id: bytes, round_: int, shard: int) -> bytes:
    return sha256(codec.encode(["data-order", job_id, round_, shard]))


def batch_order(job_id: bytes, round_: int, shard: int, shard_size: int, steps: int, batch_size: int) -> np.ndarray:
    """(steps, batch_size) positions within the shard: epochs of permutations, fixed per
    (job, round, shard) and different for every shard and round."""
    rng = _rng(int.from_bytes(order_seed(job_id, round_, shard)[:8], "big"))
    need = steps * batch_size
    epochs = [rng.permutation(shard_size) for _ in range(-(-need // shard_size))]
    return np.concatenate(epochs)[:need].reshape(steps, batch_size)
