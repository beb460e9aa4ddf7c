"""How often sampled verification catches each cheat, and what it costs the verifier.

For every cheat in verifier.adversary.STRATEGIES except "withhold" (which publishes honest
checkpoints and is caught by availability, not by replay), plus three controls (an honest
solver; the protocol's forced error: exactly one interval corrupted; and "frozen-optimizer",
a lazy solver not in adversary.py that trains interval 0 honestly, publishes its end with
Adam's m = 0 and v = 1e30, then republishes those weights with bumped steps), and for several
sampling rates s (intervals re-run out of the shard's n, 10 by default):

  1. a solver with a fresh job id trains shard 1 of 2 following the strategy and commits
     the Merkle root of its leaves;
  2. a random beacon chooses s intervals with consensus.sampling.sample_intervals, labelled
     as the chain labels them (job, round, shard, root, "intervals");
  3. the verifier re-runs each chosen interval with verifier.replay.verify_interval;
     the cheat is detected when any chosen interval fails.

detection_rate[strategy][s] is the fraction of trials detected (with a 95% Wilson interval
and the analytic value: 1 when every interval is bad, s/n when one is). verify_cost_fraction[s]
is the verifier's measured compute (the verify_interval calls for the s chosen intervals,
decoding and data set-up included) over the honest solver's (train_shard plus hashing the
leaves and the root), next to the analytic s/n.

Progress goes to stderr; the last line of stdout is one JSON object.

    .venv/bin/python benchmarks/verification.py [--trials 40] [--rates 1 2 4] [--seed 0] [--intervals 10]
"""
from __future__ import annotations

import argparse
import dataclasses
import random
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from benchmarks.common import run_benchmark, say, wilson  # noqa: E402
from consensus import merkle  # noqa: E402
from consensus.crypto import sha256  # noqa: E402
from consensus.sampling import sample_intervals  # noqa: E402
from verifier import adversary, checkpoint, data, replay, training  # noqa: E402
from verifier.work import RoundShard, ShardWork  # noqa: E402

ROUND, SHARD, SHARDS = 0, 1, 2
CHEATS = [s for s in adversary.STRATEGIES if s != "withhold"]
CONTROLS = ["forced-error", "frozen-optimizer", "honest"]
ALL_STRATEGIES = CHEATS + CONTROLS  # every strategy a trial runs, controls included
# intervals each strategy makes bad, per adversary.py's own description
BAD = {"skip-steps": "all", "forge-final": "one", "wrong-order": "all", "wrong-lr": "all", "stale": "all",
       "forced-error": "one", "honest": "none", "frozen-optimizer": "all"}




def analytic(strategy: str, s: int, intervals: int) -> float:
    return {"all": 1.0, "one": s / intervals, "none": 0.0}[BAD[strategy]]


def frozen_optimizer(spec: training.TrainSpec, honest: list[bytes]) -> list[bytes]:
    """Interval 0 honest, then the weights frozen by a forged Adam state (m = 0, v = 1e30)."""
    first = checkpoint.decode(honest[1])
    opt = {n: torch.full_like(t, 1e30) if n.startswith("v/") else torch.zeros_like(t) if n.startswith("m/") else t
           for n, t in first.opt.items()}
    return [honest[0]] + [checkpoint.encode(dataclasses.replace(adversary._bumped(first, i * spec.k), opt=opt))
                          for i in range(1, spec.steps // spec.k + 1)]


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=40, help="job ids per strategy (>= 20)")
    ap.add_argument("--rates", type=int, nargs="+", default=[1, 2, 4], help="intervals re-run per shard")
    ap.add_argument("--intervals", type=int, default=10, help="checkpoint intervals in the shard")
    ap.add_argument("--seed", type=int, default=0, help="seeds the random beacons")
    ap.add_argument("--profile", default="cpu-f32-1thread", choices=training.PROFILES)
    ap.add_argument("--k", type=int, default=10, help="steps per interval")
    ap.add_argument("--timeout", type=float, default=3600, help="seconds before the run is abandoned")
    args = ap.parse_args()
    if args.trials < 20:
        ap.error("--trials must be at least 20")
    if not all(1 <= s <= args.intervals for s in args.rates):
        ap.error(f"rates must be between 1 and --intervals ({args.intervals})")
    return args


@dataclasses.dataclass
class Bench:
    """The job every trial trains (a fresh job id each time), the beacons' RNG, and what the
    trials add up, by strategy and sampling rate."""
    spec: training.TrainSpec
    dataset: data.Dataset
    start: checkpoint.TrainState
    rates: list[int]
    rng: random.Random
    hits: dict[str, dict[int, int]] = dataclasses.field(init=False)
    bad_intervals: dict[str, list[int]] = dataclasses.field(init=False)
    solver_s: list[float] = dataclasses.field(init=False)
    verify_s: dict[int, list[float]] = dataclasses.field(init=False)
    interval_s: list[float] = dataclasses.field(init=False)

    @property
    def intervals(self) -> int:
        return self.spec.steps // self.spec.k

    def __post_init__(self) -> None:
        self.hits = {st: {s: 0 for s in self.rates} for st in ALL_STRATEGIES}
        self.bad_intervals = {st: [0] * self.intervals for st in ALL_STRATEGIES}  # sampled and failed, by index
        self.solver_s = []
        self.verify_s = {s: [] for s in self.rates}  # verifier seconds per shard, over every (trial, strategy)
        self.interval_s = []

    def work(self, job_id: bytes) -> ShardWork:
        return ShardWork(self.spec, self.dataset, RoundShard(job_id, ROUND, SHARD, SHARDS))

    def warm_up(self) -> None:
        """First-call costs of torch kernels and allocators, paid here so that no trial pays them."""
        warm = training.train_shard(self.work(b"warm-up"), self.start)
        replay.verify_interval(self.work(b"warm-up"), 0, warm[0], warm[1])

    def run_trial(self, trial: int) -> None:
        """The honest solver's timed shard, then every strategy's leaves verified at every rate."""
        job_id = sha256(b"benchmark/verification/job" + trial.to_bytes(4, "big"))
        t0 = time.perf_counter()
        honest = training.train_shard(self.work(job_id), self.start)
        merkle.root([checkpoint.checkpoint_hash(leaf) for leaf in honest])
        self.solver_s.append(time.perf_counter() - t0)
        for strategy in ALL_STRATEGIES:
            leaves = self.leaves_for(strategy, job_id, honest)
            root = merkle.root([checkpoint.checkpoint_hash(leaf) for leaf in leaves])
            self.verify_sampled(strategy, job_id, leaves, root, self.rng.randbytes(32))

    def leaves_for(self, strategy: str, job_id: bytes, honest: list[bytes]) -> list[bytes]:
        """The leaves a solver following `strategy` commits for this trial's shard."""
        if strategy == "honest":
            return honest
        if strategy == "frozen-optimizer":
            return frozen_optimizer(self.spec, honest)
        if strategy == "forced-error":
            bad = self.rng.randrange(self.intervals)
            return adversary.corrupt_interval(honest, bad, self.work(job_id))
        return adversary.cheat(strategy, self.work(job_id), self.start)

    def verify_sampled(self, strategy: str, job_id: bytes, leaves: list[bytes], root: bytes,
                       beacon: bytes) -> None:
        """For each rate s, re-run the s intervals that the beacon picks (each interval at most once
        over all the rates); detected when any of them fails."""
        verdicts: dict[int, tuple[bool, float]] = {}  # interval -> (ok, seconds), each re-run once

        def check(i: int) -> tuple[bool, float]:
            if i not in verdicts:
                t = time.perf_counter()
                ok, _ = replay.verify_interval(self.work(job_id), i, leaves[i], leaves[i + 1])
                verdicts[i] = (ok, time.perf_counter() - t)
                self.interval_s.append(verdicts[i][1])
                if not ok:
                    self.bad_intervals[strategy][i] += 1
            return verdicts[i]

        for s in self.rates:
            chosen = sample_intervals(self.intervals, s, beacon, job_id, ROUND, SHARD, root, "intervals")
            results = [check(i) for i in chosen]
            self.hits[strategy][s] += any(not ok for ok, _ in results)
            self.verify_s[s].append(sum(sec for _, sec in results))


def build_report(bench: Bench, n: int, started: float) -> dict:
    """The JSON object: detection rates with their intervals and analytic values, the controls,
    and the verifier's cost next to the solver's."""
    spec, hits, rates, intervals = bench.spec, bench.hits, bench.rates, bench.intervals
    solver = statistics.mean(bench.solver_s)
    detection = {st: {str(s): hits[st][s] / n for s in rates} for st in CHEATS}
    return {
        "benchmark": "verification", "profile": spec.profile, "model": spec.model, "model_args": spec.model_args,
        "steps": spec.steps, "k": spec.k, "intervals": intervals, "trials": n, "rates": rates,
        "detection_rate": detection,
        "detection_rate_ci95": {st: {str(s): wilson(hits[st][s], n) for s in rates} for st in CHEATS},
        "detection_rate_analytic": {st: {str(s): analytic(st, s, intervals) for s in rates} for st in CHEATS},
        "controls": {st: {str(s): hits[st][s] / n for s in rates} for st in CONTROLS},
        "sampled_and_failed_by_interval": {st: bench.bad_intervals[st] for st in ALL_STRATEGIES},
        "verify_cost_fraction": {str(s): round(statistics.mean(bench.verify_s[s]) / solver, 4) for s in rates},
        "verify_cost_fraction_analytic": {str(s): s / intervals for s in rates},
        "solver_s_per_shard": round(solver, 5),
        "verify_s_per_interval": round(statistics.mean(bench.interval_s), 5),
        "solver_s_per_interval": round(solver / intervals, 5),
        "wall_s": round(time.perf_counter() - started, 1),
    }


def main() -> None:
    args = parse_args()

    def body(result: dict) -> None:
        spec = training.TrainSpec("mlp", {"in_dim": 8, "hidden": [32], "out_dim": 4}, "adam", 10_000, 16,
                                  args.intervals * args.k, args.k, args.profile, seed=1)
        dataset = data.generate("blobs", {"n": 2000, "dim": 8, "classes": 4}, seed=3)
        bench = Bench(spec, dataset, training.init_state(spec), args.rates, random.Random(args.seed))
        started = time.perf_counter()
        say(f"{len(ALL_STRATEGIES)} strategies x {args.trials} trials x rates {args.rates}; {spec.profile}, "
            f"{spec.steps} steps, k={spec.k}")
        bench.warm_up()
        for trial in range(args.trials):
            bench.run_trial(trial)
            say(f"trial {trial + 1}/{args.trials} done ({time.perf_counter() - started:.1f}s)")
        result.update(build_report(bench, args.trials, started))
        for st in ALL_STRATEGIES:
            say(f"{st:13s} " + "  ".join(f"s={s}: {bench.hits[st][s] / args.trials:.2f}" for s in args.rates))

    run_benchmark("verification", body, args.timeout)

if __name__ == "__main__":
    main()
