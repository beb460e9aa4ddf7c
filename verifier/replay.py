"""Recompute an interval and compare: bitwise for exact profiles, by distance for tolerance."""
from __future__ import annotations

import torch

from .checkpoint import CheckpointError, decode
from .data import Dataset
from .training import EXACT_PROFILES, TrainSpec, run_interval


def states_close(a: bytes, b: bytes, tolerance_ppm: int) -> bool:
    """Relative L2 distance of all parameters, |a - b| / |b|, within tolerance_ppm / 10^6."""
    try:
        sa, sb = decode(a), decode(b)
    except CheckpointError:
        return False
    if sorted(sa.params) != sorted(sb.params) or sa.step != sb.step:
        return False
    diff = norm = 0.0
    for n in sorted(sa.params):
        x, y = sa.params[n].double(), sb.params[n].double()
        if x.shape != y.shape:
            return False
        diff += float(torch.sum((x - y) ** 2))
        norm += float(torch.sum(y ** 2))
    return diff ** 0.5 <= (tolerance_ppm / 1_000_000) * max(norm ** 0.5, 1e-12)


def verify_interval(spec: TrainSpec, data: Dataset, job_id: bytes, round_: int, shard: int, shards: int,
                    start_ckpt: bytes, start_step: int, claimed_end: bytes, k: int) -> tuple[bool, str]:
    """(ok, what we found) for the k steps from start_ckpt."""
    try:
        ours = run_interval(spec, data, job_id, round_, shard, shards, start_ckpt, start_step, k)
    except (CheckpointError, ValueError, RuntimeError) as exc:
        return False, f"start checkpoint unusable: {exc}"
    if spec.profile in EXACT_PROFILES:
        ok = ours == claimed_end
        return ok, "bitwise identical" if ok else "recomputed checkpoint differs"
    ok = states_close(ours, claimed_end, spec.tolerance_ppm)
    return ok, "within tolerance" if ok else "recomputed checkpoint is too far from the claimed one"
