"""What every benchmark's main shares: one JSON object as the last line of stdout whatever
happens, and no process left behind.

``run_benchmark`` calls the benchmark with a dict to fill as it goes. On success it prints
that dict; on any failure (an exception, a timeout, Ctrl-C, SIGTERM) it prints what was
measured so far plus an ``error`` field, and exits 1. Either way it first kills every
process tests/nodes.py started (each in its own process group) that is still running.
"""
from __future__ import annotations

import json
import math
import signal
import sys
import time
from typing import Callable


class BenchmarkAborted(Exception):
    """The run was cut short: its time limit passed, or it was told to stop."""


def _abort(why: str):
    def handler(signum, frame):
        raise BenchmarkAborted(why)
    return handler


def run_benchmark(name: str, body: Callable[[dict], None], timeout_s: float) -> None:
    """Run body(result) under a time limit; print result as JSON (with "error" on failure); exit."""
    result: dict = {"benchmark": name}
    started = time.monotonic()
    signal.signal(signal.SIGTERM, _abort("stopped by SIGTERM"))
    signal.signal(signal.SIGALRM, _abort(f"timed out after {timeout_s:.0f} s"))
    signal.setitimer(signal.ITIMER_REAL, timeout_s)
    code = 0
    try:
        body(result)
    except (Exception, KeyboardInterrupt) as exc:  # noqa: BLE001 - reported as JSON, never a bare traceback
        result["error"] = f"{type(exc).__name__}: {exc}" if not isinstance(exc, KeyboardInterrupt) else "interrupted"
        code = 1
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # cleanup below must finish
        left = _kill_children()
        if left:
            result["killed_leftover_processes"] = len(left)
        result["benchmark_wall_s"] = round(time.monotonic() - started, 1)
    print(json.dumps(result), flush=True)
    sys.exit(code)


def _kill_children() -> list[int]:
    nodes = sys.modules.get("tests.nodes")  # only benchmarks that start processes import it
    return nodes.kill_started() if nodes is not None else []


def say(msg: str) -> None:
    """Progress, to stderr: stdout is kept for the one JSON line."""
    print(msg, file=sys.stderr, flush=True)


def wilson(hits: int, n: int, z: float = 1.96) -> list[float]:
    """The 95% Wilson score interval of a rate hits/n."""
    if n == 0:
        return [0.0, 1.0]
    p = hits / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return [round(max(0.0, centre - half), 3), round(min(1.0, centre + half), 3)]
