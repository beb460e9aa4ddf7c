"""A job's loss curves for people: the chain's float64 bits as numbers, and a terminal plot.

The chain keeps each declared loss as the integer of its float64 bits (state never holds
floats); here, outside consensus, they become numbers for JSON and for `job status`.
"""
from __future__ import annotations

import math

from consensus.crypto import format_address
from consensus.jobs import Job
from consensus.jobs.curves import round_curves
from consensus.ledger import View
from verifier.checkpoint import bits_float

PLOT_HEIGHT = 8
PLOT_WIDTH = 64


def _number(bits: int) -> float | None:
    x = bits_float(bits)
    return x if math.isfinite(x) else None


def curves_json(v: View, job: Job) -> list[dict]:
    """Every committed shard's curve, round by round: one point per interval, at its last step."""
    k, out = job.spec["k"], []
    for r in range(job.round + 1):
        for index, curve in enumerate(round_curves(v, job, r)):
            if curve is None:
                continue
            solver, losses, verified, _start = curve
            checked = set(verified)
            out.append({"round": r, "shard": index, "solver": format_address(solver) if solver else None, "k": k,
                        "points": [{"interval": j, "step": (j + 1) * k, "loss": _number(bits), "verified": j in checked}
                                   for j, bits in enumerate(losses)]})
    return out


def rounds_json(v: View, job: Job) -> list[dict]:
    """Each closed round's finals, and the model it made where the chain shows it checked: the
    start of a passed shard of the next round (the average of these finals, recomputed by that
    shard's verifiers). The last round's average is not on chain: `job fetch` computes it and
    the held-out metric of every round."""
    out = []
    for r, finals in enumerate(job.finals):
        starts = {c[3] for c in round_curves(v, job, r + 1) if c is not None and c[2]} if r + 1 <= job.round else set()
        out.append({"round": r, "finals": [h.hex() for h in finals],
                    "model": next(iter(starts)).hex() if len(starts) == 1 else None})
    return out


def plot(curve: dict, height: int = PLOT_HEIGHT, width: int = PLOT_WIDTH) -> list[str]:
    """A curve as text, one column per run of points (the mean of their losses): `*` where a
    point of the column was verified, `o` where none was, `x` where no loss is finite."""
    points = curve["points"]
    if not points:
        return ["  (no points)"]
    per = -(-len(points) // width)  # points per column, rounded up
    columns = [points[i:i + per] for i in range(0, len(points), per)]
    means = [_mean([p["loss"] for p in col if p["loss"] is not None]) for col in columns]
    finite = [m for m in means if m is not None]
    if not finite:
        return ["  (no finite loss)"]
    lo, hi = min(finite), max(finite)
    span = (hi - lo) or 1.0
    rows = [[" "] * len(columns) for _ in range(height)]
    for x, (col, mean) in enumerate(zip(columns, means)):
        if mean is None:
            rows[0][x] = "x"
            continue
        rows[height - 1 - round((mean - lo) / span * (height - 1))][x] = "*" if any(p["verified"] for p in col) else "o"
    labels = [f"{hi:>9.4f} |"] + ["          |"] * (height - 2) + [f"{lo:>9.4f} |"]
    return [label + "".join(row) for label, row in zip(labels, rows)] + \
        [f"          +{'-' * len(columns)} step {points[-1]['step']}"]


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None
