"""Who trains, who verifies, which intervals: every choice drawn from the block beacon.

A draw is sha256 of the beacon and a label (job, round, shard, purpose, counter), so it is
the same on every node and unknown before the block that carries the beacon. The beacon
of the block *after* a commit chooses that commit's verifiers and intervals, so a solver
cannot know them when it commits.
"""
from __future__ import annotations

from . import codec
from .crypto import sha256


def draw(beacon: bytes, *label) -> int:
    """A 256-bit integer fixed by the beacon and the label."""
    return int.from_bytes(sha256(beacon + codec.encode(list(label))), "big")


def weighted_sample(candidates: list[tuple[bytes, int]], count: int, beacon: bytes, *label) -> list[bytes]:
    """Up to `count` distinct addresses, each draw proportional to weight among those left.
    `candidates` must be sorted by address so every node walks them in the same order."""
    pool = [(a, w) for a, w in candidates if w > 0]
    chosen: list[bytes] = []
    for i in range(min(count, len(pool))):
        total = sum(w for _, w in pool)
        point = draw(beacon, *label, i) % total
        for j, (addr, weight) in enumerate(pool):
            if point < weight:
                chosen.append(addr)
                pool.pop(j)
                break
            point -= weight
    return chosen


def sample_intervals(n_intervals: int, count: int, beacon: bytes, *label) -> list[int]:
    """`count` distinct interval indices out of n_intervals, sorted."""
    remaining = list(range(n_intervals))
    chosen = []
    for i in range(min(count, n_intervals)):
        chosen.append(remaining.pop(draw(beacon, *label, i) % len(remaining)))
    return sorted(chosen)


def verifier_intervals(secret: bytes, root: bytes, beacon: bytes, n_intervals: int, count: int,
                       diverged_leaf: int | None = None) -> list[int]:
    """The intervals one verifier re-runs for a commit: `count` drawn from the verifier's own
    hash-chain secret, the commit's root and a beacon after the commit, plus the last one.

    The solver knows neither the secret nor the beacon when it commits, and the verifier's
    secret was fixed by its registration, so neither can steer the draw; verifiers with
    different secrets check different intervals. The last interval is always checked: its end
    is what the next round (or the final model) is built from. A commit that declares its
    training diverged at leaf j has every interval before j checked (the run ends there, and
    a forged path into the divergence must never pay), and the last one.
    """
    last = n_intervals - 1
    if diverged_leaf is not None:
        return sorted(set(range(min(diverged_leaf, n_intervals))) | {last})
    drawn = sample_intervals(last, count, beacon, root, secret, "verifier-intervals")
    return sorted(drawn + [last])
