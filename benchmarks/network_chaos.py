"""Liveness and safety of 4 validators on a network that behaves like a real one.

Every scenario of tests/chaos.py runs on a fresh lab network (tests/netlab.py: one network
namespace per validator, 100 Mbit/s links, 50 ± 10 ms one-way delay, 1% loss) under transfer
load: steady state, minority and majority partitions healed (links going dark, and
connections reset), kill -9 and restart of random validators, and a validator whose clock is
5 s off. Per scenario it reports finalized tx/s, p50/p99 submit-to-finality, seconds to
recover after each heal, kill and restart, and `safety_violations` from the nodes' stores
(must be 0), with the CPU the nodes and the link proxy used.

Prints one JSON object as the last line of stdout, always: on a failure, a timeout or Ctrl-C
it has an `error` field. No namespace, link or process outlives the run. Needs root.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import tempfile
import time
import traceback
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.chaos import FULL, SCENARIOS, SHORT, run_scenario  # noqa: E402
from tests.chaosnet import IMPAIRED, NetConfig  # noqa: E402
from tests.netlab import unavailable  # noqa: E402

TARGET_P99_S = 3.0
TARGET_RECOVERY_S = 10.0
TARGET_SCENARIO = "steady"  # the p99 target is stated for impaired links without faults
SHORT_SCENARIOS = ["steady", "minority_partition", "majority_partition", "kill9_restart", "clock_ahead_5s"]


class Interrupted(BaseException):
    """SIGTERM or the --timeout alarm: like Ctrl-C, it ends the run (not just one scenario)."""


def _interrupt(signum, frame):
    raise Interrupted("--timeout reached" if signum == signal.SIGALRM else signal.Signals(signum).name)


def check_targets(results: dict) -> dict:
    """Which of the issue's targets held in this run (None: not measured)."""
    steady = results.get(TARGET_SCENARIO, {})
    heals = [r.get("recover_s") for s in results.values() for r in s.get("recoveries", [])
             if r.get("event") == "heal"]
    return {"p99_finality_under_3s": None if steady.get("p99_finality_s") is None
            else steady["p99_finality_s"] < TARGET_P99_S,
            "recovery_within_10s_of_heal": None if not heals
            else all(h is not None and h < TARGET_RECOVERY_S for h in heals),
            "zero_safety_violations": all(s.get("safety_violations") == 0 for s in results.values())
            if results else None}


def run(args, out: dict) -> None:
    timing = SHORT if args.short else FULL
    for opt, field in (("seconds", "run_s"), ("hold", "hold_s"), ("kills", "kills"), ("down", "down_s")):
        if getattr(args, opt):
            timing = replace(timing, **{field: getattr(args, opt)})
    names = args.scenarios.split(",") if args.scenarios else (SHORT_SCENARIOS if args.short else list(SCENARIOS))
    unknown = [n for n in names if n not in SCENARIOS]
    if unknown:
        raise ValueError(f"unknown scenarios {unknown}; known: {', '.join(SCENARIOS)}")
    cfg = NetConfig(block_interval_ms=args.block_interval_ms, idle_interval_ms=args.block_interval_ms)
    out["timing"] = timing.__dict__
    for name in names:
        start = time.monotonic()
        with tempfile.TemporaryDirectory(prefix="stepchain-chaos-") as tmp:
            base = Path(args.keep) / name if args.keep else Path(tmp)
            try:
                result = run_scenario(base, SCENARIOS[name], cfg, timing, args.rate, args.seed)
            except Exception as exc:  # one scenario failing must not hide the others' numbers
                result = {"scenario": name, "error": f"{type(exc).__name__}: {exc}"[:2000],
                          "trace": traceback.format_exc(limit=5)[-2000:]}
        result["wall_s"] = round(time.monotonic() - start, 1)
        out["scenarios"][name] = result
        brief = {k: result.get(k) for k in ("finalized_tx_per_s", "p50_finality_s", "p99_finality_s",
                                             "safety_violations", "error")}
        print(f"# {name}: {json.dumps(brief)}", file=sys.stderr, flush=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--short", action="store_true", help="fewer scenarios, shorter phases")
    ap.add_argument("--scenarios", default="", help=f"comma-separated subset of: {', '.join(SCENARIOS)}")
    ap.add_argument("--rate", type=int, default=500, help="offered tx/s")
    ap.add_argument("--seconds", type=float, default=0, help="length of the steady and clock scenarios")
    ap.add_argument("--hold", type=float, default=0, help="how long each partition lasts")
    ap.add_argument("--kills", type=int, default=0, help="kill -9 rounds in kill9_restart")
    ap.add_argument("--down", type=float, default=0, help="how long a killed validator stays down")
    ap.add_argument("--block-interval-ms", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--keep", default="", help="keep node homes and logs under this directory (one per scenario)")
    ap.add_argument("--timeout", type=int, default=1800, help="give up (and clean up) after this many seconds")
    args = ap.parse_args()
    link = IMPAIRED
    out = {"benchmark": "network_chaos", "validators": 4, "offered_tx_per_s": args.rate,
           "link": {"rate_mbit": link.rate_mbit, "delay_ms": link.delay_ms, "jitter_ms": link.jitter_ms,
                    "loss": link.loss, "rto_ms": link.rto_ms},
           "block_interval_ms": args.block_interval_ms, "scenarios": {}, "error": None}
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGALRM, _interrupt)
    signal.alarm(args.timeout)
    try:
        reason = unavailable()
        if reason:
            raise RuntimeError(reason)
        run(args, out)
        failed = [n for n, r in out["scenarios"].items() if r.get("error")]
        if failed:
            out["error"] = f"scenarios failed: {', '.join(failed)}"
    except (Interrupted, KeyboardInterrupt) as exc:
        out["error"] = f"interrupted ({str(exc) or 'SIGINT'}); everything started was stopped"
    except Exception as exc:
        out["error"] = f"{type(exc).__name__}: {exc}"
    finally:
        signal.alarm(0)
        results = {n: r for n, r in out["scenarios"].items() if not r.get("error")}
        out["safety_violations"] = sum(r.get("safety_violations", 0) for r in results.values())
        out["targets"] = {"p99_finality_s": TARGET_P99_S, "recovery_after_heal_s": TARGET_RECOVERY_S}
        out["targets_met"] = check_targets(results)
        print(json.dumps(out), flush=True)
    return 0 if out["error"] is None else 1


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
