"""What solvers, verifiers and referees share: the job's data, start state and checks.

Everything here works from the on-chain job record (as the RPC renders it: hashes in hex)
and a ``fetch(hash_hex) -> bytes | None`` for blobs, so the same code serves an RPC
client (workers) and a validator node (referee).
"""
from __future__ import annotations

import logging
import time
from typing import Callable

from consensus import codec, merkle
from consensus.crypto import sha256

Fetch = Callable[[str], "bytes | None"]
POLL_S = 1.0


def poll(step: Callable[[], None], log: logging.Logger, once: bool = False) -> None:
    """Run `step` every POLL_S seconds for ever. A node that is down or restarting, or one
    job that cannot be handled, is logged and retried; it never stops the worker."""
    from ..client import RpcError
    while True:
        try:
            step()
        except RpcError as exc:
            log.warning("node unavailable (%s); retrying", exc)
        except Exception:
            log.exception("could not handle a shard; will retry")
        if once:
            return
        time.sleep(POLL_S)


def train_spec(spec: dict):
    from verifier.training import TrainSpec
    return TrainSpec(model=spec["model"], model_args=spec["model_args"], optimizer=spec["optimizer"],
                     lr_ppm=spec["lr_ppm"], batch_size=spec["batch_size"], steps=spec["steps"], k=spec["k"],
                     profile=spec["profile"], seed=spec["seed"], tolerance_ppm=spec["tolerance_ppm"])


_DATA_CACHE: dict[str, tuple] = {}


def load_data(spec: dict, fetch: Fetch):
    """(train, holdout) for a job; a dataset blob is checked against its hash by fetch."""
    from verifier import data as vdata
    d = spec["data"]
    key = codec.encode([d, spec["holdout_ppm"]]).hex() if "generator" in d else d["blob"]
    if key not in _DATA_CACHE:
        if "generator" in d:
            ds = vdata.generate(d["generator"], d["args"], d["seed"])
        else:
            raw = fetch(d["blob"])
            if raw is None:
                raise LookupError("the job's dataset blob is not available")
            ds = vdata.load_npz(raw)
        _DATA_CACHE[key] = vdata.split_holdout(ds, spec["holdout_ppm"])
    return _DATA_CACHE[key]


def fetch_checked(fetch: Fetch, digest_hex: str) -> bytes | None:
    raw = fetch(digest_hex)
    return raw if raw is not None and sha256(raw).hex() == digest_hex else None


def expected_start(job: dict, round_: int, fetch: Fetch) -> bytes | None:
    """Canonical bytes every shard of `round_` must start from: the job's initial state, or
    the average of the previous round's final checkpoints. None if a final is unavailable."""
    from verifier import checkpoint, training
    spec = train_spec(job["spec"])
    if round_ == 0:
        return checkpoint.encode(training.init_state(spec))
    finals = [fetch_checked(fetch, h) for h in job["finals"][round_ - 1]]
    if any(f is None for f in finals):
        return None
    return checkpoint.encode(training.average_states([checkpoint.decode(f) for f in finals]))


def manifest_ok(manifest: bytes | None, commit: dict) -> list[str] | None:
    """The leaf hashes (hex) if the manifest matches the committed root, else None."""
    if manifest is None:
        return None
    try:
        leaves = codec.decode(manifest)
    except codec.CodecError:
        return None
    if type(leaves) is not list or len(leaves) != commit["leaves"] or not all(type(x) is bytes for x in leaves):
        return None
    if merkle.root(leaves).hex() != commit["root"]:
        return None
    return [x.hex() for x in leaves]


def check_start(job: dict, round_: int, start_blob: bytes | None, fetch: Fetch) -> tuple[bool, str]:
    if start_blob is None:
        return False, "start checkpoint not served"
    expected = expected_start(job, round_, fetch)
    if expected is None:
        return True, "previous round's finals unavailable here; cannot judge"
    spec = train_spec(job["spec"])
    if spec.profile == "tolerance":
        from verifier.replay import states_close
        ok = states_close(expected, start_blob, spec.tolerance_ppm)
    else:
        ok = sha256(expected) == sha256(start_blob)
    return ok, "start checkpoint matches" if ok else "start checkpoint is not the expected round start"


def check_interval(job: dict, round_: int, shard: int, interval: int, start_blob: bytes | None,
                   end_blob: bytes | None, fetch: Fetch, device: str = "cpu") -> tuple[bool, str]:
    """Recompute k steps from the interval's first checkpoint and compare with its last."""
    if start_blob is None or end_blob is None:
        return False, f"checkpoints of interval {interval} not served"
    from verifier.replay import verify_interval
    from verifier.work import RoundShard, ShardWork
    spec = train_spec(job["spec"])
    train, _ = load_data(job["spec"], fetch)
    work = ShardWork(spec, train, RoundShard(bytes.fromhex(job["id"]), round_, shard, job["spec"]["shards"]))
    return verify_interval(work, interval, start_blob, end_blob)
