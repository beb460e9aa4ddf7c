"""Does any cheat pay? Detection, compute saved and expected profit per strategy, at the
genesis defaults, with the chain's own draws.

For each strategy the project knows (verifier.adversary.publish, plus the two withholding
ones the solver worker plays) and each of `--trials` trials:
  1. a solver with a fresh job id trains a shard of a 50-interval job (exact profile for
     the classic cheats, `tolerance` for the precision and bias cheats) following the
     strategy and commits the root of its leaves and its declared divergence;
  2. a verifier checks the start and re-runs every interval with verifier.replay, which
     says what any verifier would find on each;
  3. over `--draws` draws of a beacon and one hash-chain secret per drawn verifier
     (verifiers_per_shard of them), each verifier gets its intervals exactly as the chain
     gives them (consensus.sampling.verifier_intervals: samples_per_shard drawn, plus the
     last, or every interval before a declared divergence); the trial's detection is the
     share of draws under which some verifier's own checks fail. A withholding solver is
     detected by rule: a blob that cannot be fetched is challenged for availability, and
     one still not served by the response deadline is a fault.

compute_saved is the larger of the counted saving (1 - the items the cheat's training steps
processed, plus the passes over the parameters it makes to rewrite interval ends, over the
honest run's items) and the strategy's nominal saving where its implementation here does
more than a rational cheater would (forging the final or one interval saves that interval;
bf16/fp16 autocast halve a step on a GPU, though not on this CPU).

expected_profit_per_shard, in units of the shard's reward, values the training compute at
the reward (the worst case: an honest solver then just breaks even) and uses the collateral
the chain locks (collateral_ratio_ppm): undetected, the cheater keeps the reward and saves
compute_saved; detected, it loses the reward and the collateral. So
    expected_profit = compute_saved - detection_rate x (1 + collateral_ratio)
and for "withheld-then-served" (honest work, blobs served only when a challenge demands
them) it is minus the challenge fee the chain takes off its reward.

verify_cost_fraction_at_defaults is one verifier's measured compute (its start check and
its drawn intervals) over the honest solver's (training and hashing the shard) for
examples/spirals.toml at the genesis defaults. `redraw` reports what withholding one block
buys a proposer: a second draw of verifiers (never of a verifier's own intervals).

Progress goes to stderr; the last line of stdout is one JSON object.

    .venv/bin/python benchmarks/soundness.py [--trials 40] [--seed 0]
"""
from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from benchmarks.common import run_benchmark, say  # noqa: E402
from consensus import merkle  # noqa: E402
from consensus.crypto import sha256  # noqa: E402
from consensus.genesis import DEFAULT_PARAMS  # noqa: E402
from consensus.sampling import verifier_intervals, weighted_sample  # noqa: E402
from verifier import adversary, checkpoint, data, replay, training  # noqa: E402
from verifier.training import TrainSpec  # noqa: E402
from verifier.work import RoundShard, ShardWork  # noqa: E402

PPM = 1_000_000
EXACT_JOB = (TrainSpec("mlp", {"in_dim": 4, "hidden": [16, 16], "out_dim": 3}, "adam", 10_000, 16, 100, 2,
                       "cpu-f32-1thread", seed=1),
             ("blobs", {"n": 400, "dim": 4, "classes": 3}))
TOLERANCE_JOB = (TrainSpec("mlp", {"in_dim": 16, "hidden": [64, 64], "out_dim": 10}, "adam", 1_000, 32, 200, 4,
                           "tolerance", seed=1),
                 ("blobs", {"n": 1000, "dim": 16, "classes": 10}))
# strategy -> (job, nominal compute saved: what it skips where it pays best)
STRATEGIES = {
    "skip-steps": (EXACT_JOB, 0.5), "forge-final": (EXACT_JOB, 1 / 50), "wrong-order": (EXACT_JOB, 0.0),
    "wrong-lr": (EXACT_JOB, 0.0), "stale": (EXACT_JOB, 1.0), "withhold": (EXACT_JOB, 0.0),
    "one-interval": (EXACT_JOB, 1 / 50), "nonfinite-absorbing": (EXACT_JOB, 0.5),
    "nonfinite-declared": (EXACT_JOB, 0.5), "withheld-then-served": (EXACT_JOB, 0.0),
    "skip-one-step": (TOLERANCE_JOB, 1 / 4), "half-batch": (TOLERANCE_JOB, 0.5),
    "bf16-autocast": (TOLERANCE_JOB, 0.5), "fp16-autocast": (TOLERANCE_JOB, 0.5),
    "bias-under-bound": (TOLERANCE_JOB, 0.0), "optimizer-bias": (TOLERANCE_JOB, 0.0),
}
BY_RULE = ("withhold", "withheld-then-served")  # judged by availability, not by replay
# Work beyond training steps, in passes over all the parameters per interval (rewriting each
# interval's end): a pass costs about 2 flops a parameter, an item's forward and backward 6,
# so a pass is worth a third of an item.
EXTRA_PASSES = {"bias-under-bound": 3, "optimizer-bias": 1}
PASS_ROWS = 1 / 3




def work_for(job, job_id: bytes) -> ShardWork:
    spec, (gen, args) = job
    return ShardWork(spec, data.generate(gen, args, 5), RoundShard(job_id, 0, 0, 1))


def publish(strategy: str, work: ShardWork, start, seed: bytes):
    if strategy in BY_RULE:
        return adversary.Published(tuple(training.train_shard(work, start)), None)
    return adversary.publish(strategy, work, start, seed)


class Rows:
    """Counts the items every training step processes (Trainer.train_step is the one place a
    step is taken), which is what a cheat's compute is measured in: deterministic, unlike
    wall time on a model this small."""
    count = 0

    @classmethod
    def install(cls) -> None:
        original = training.Trainer.train_step

        def counted(self, x, y):
            cls.count += int(x.shape[0])
            return original(self, x, y)
        training.Trainer.train_step = counted

    @classmethod
    def during(cls, run) -> tuple[object, int]:
        before = cls.count
        out = run()
        return out, cls.count - before


def verdicts_of(work: ShardWork, published) -> tuple[bool, list[bool]]:
    """(start ok, ok per interval): what a verifier finds on each piece of this commit."""
    leaves = published.leaves
    start_ok = replay.verify_round_start(work.spec, [], leaves[0])
    return start_ok, [replay.verify_interval(work, i, leaves[i], leaves[i + 1], published.diverged_leaf)[0]
                      for i in range(work.intervals)]


def detection(work: ShardWork, published, params: dict, draws: int) -> float:
    """The share of the chain's draws (a beacon, and one hash-chain secret per drawn verifier)
    under which some verifier finds a fault in what it checks: the start, its intervals."""
    start_ok, ok = verdicts_of(work, published)
    if not start_ok:
        return 1.0
    root = merkle.root([checkpoint.checkpoint_hash(leaf) for leaf in published.leaves])
    hits = 0
    for d in range(draws):
        beacon = sha256(b"soundness/beacon" + root + d.to_bytes(4, "big"))
        checked = set()
        for v in range(params["verifiers_per_shard"]):
            secret = sha256(b"soundness/secret" + beacon + bytes([v]))
            checked.update(verifier_intervals(secret, root, beacon, work.intervals, params["samples_per_shard"],
                                              published.diverged_leaf))
        hits += any(not ok[i] for i in checked)
    return hits / draws


def trial(strategy: str, job, t: int, seed: int, params: dict, draws: int) -> tuple[float, float]:
    """(detection probability over the chain's draws, compute saved) of one trial."""
    job_id = sha256(b"soundness/job" + strategy.encode() + seed.to_bytes(8, "big") + t.to_bytes(8, "big"))
    work = work_for(job, job_id)
    start = training.init_state(work.spec)
    published, cheat_rows = Rows.during(lambda: publish(strategy, work, start, job_id))
    _, honest_rows = Rows.during(lambda: training.train_shard(work, start))
    extra = EXTRA_PASSES.get(strategy, 0) * work.intervals * PASS_ROWS
    saved = 1 - (cheat_rows + extra) / honest_rows
    if strategy in BY_RULE:
        return 1.0, saved
    return detection(work, published, params, draws), saved


def measure_strategies(result: dict, trials: int, seed: int, params: dict, draws: int) -> None:
    ratio = params["collateral_ratio_ppm"] / PPM
    out = result["strategies"] = {}
    for name, (job, nominal) in STRATEGIES.items():
        rates, counted = [], []
        for t in range(trials):
            rate, saved_here = trial(name, job, t, seed, params, draws)
            rates.append(rate)
            counted.append(saved_here)
        measured = statistics.mean(counted)
        saved = max(measured, nominal) if nominal > 0 else measured
        rate = statistics.mean(rates)
        profit = saved - rate * (1 + ratio)
        if name == "withheld-then-served":  # honest work: never caught, but the chain takes the
            rate, saved = 0.0, 0.0           # answered challenge's fee off its reward
            profit = -params["challenge_fee"] / reward_of_spirals()
        out[name] = {"detection_rate": round(rate, 4),
                     "detection_per_trial": [round(min(rates), 4), round(max(rates), 4)],
                     "compute_saved": round(saved, 4), "compute_saved_counted": round(measured, 4),
                     "expected_profit_per_shard": round(profit, 4), "profile": job[0].profile}
        say(f"{name:22s} detection {rate:.3f}  saved {saved:.3f}  profit {profit:+.3f}")
    result["max_expected_profit"] = max(s["expected_profit_per_shard"] for s in out.values())
    result["trials"], result["draws_per_trial"] = trials, draws


def reward_of_spirals() -> int:
    from node.jobspec import load
    return load(str(Path(__file__).resolve().parent.parent / "examples" / "spirals.toml"))[0]["reward_per_shard"]


def measure_verify_cost(result: dict, params: dict, runs: int = 5) -> None:
    """One verifier's compute over the solver's, for examples/spirals.toml at the defaults."""
    from node.jobspec import load
    from node.workers.common import train_spec
    spec_dict, _ = load(str(Path(__file__).resolve().parent.parent / "examples" / "spirals.toml"))
    spec = train_spec(spec_dict)
    d = spec_dict["data"]
    train, _ = data.split_holdout(data.generate(d["generator"], d["args"], d["seed"]), spec_dict["holdout_ppm"])
    fractions = []
    for r in range(-1, runs):  # run -1 warms torch up and is not counted
        work = ShardWork(spec, train, RoundShard(sha256(b"soundness/cost" + bytes([r + 1])), 0, 0, spec_dict["shards"]))
        start = training.init_state(spec)
        t0 = time.perf_counter()
        leaves = training.train_shard(work, start)
        root = merkle.root([checkpoint.checkpoint_hash(leaf) for leaf in leaves])
        solver_s = time.perf_counter() - t0
        intervals = verifier_intervals(sha256(b"secret" + bytes([r + 1])), root, sha256(b"beacon" + bytes([r + 1])),
                                       work.intervals, params["samples_per_shard"])
        t0 = time.perf_counter()
        assert replay.verify_round_start(spec, [], leaves[0])
        for i in intervals:
            assert replay.verify_interval(work, i, leaves[i], leaves[i + 1])[0]
        if r >= 0:
            fractions.append((time.perf_counter() - t0) / solver_s)
    result["verify_cost_fraction_at_defaults"] = round(statistics.median(fractions), 4)
    result["verify_cost_fraction_runs"] = [round(f, 4) for f in fractions]
    result["verify_intervals_at_defaults"] = f"{params['samples_per_shard'] + 1} of {spec.steps // spec.k}"
    result["verify_cost_fraction_analytic"] = round((params["samples_per_shard"] + 1) / (spec.steps // spec.k), 4)
    say(f"verify cost fraction at defaults: {result['verify_cost_fraction_at_defaults']} (runs {fractions})")


def measure_redraw(result: dict, params: dict, trials: int = 20_000) -> None:
    """A proposer that withholds its block at the draw height gets one more draw of verifiers.
    With colluders holding a share f of the verifier stake, how often is every drawn verifier
    a colluder, with one draw and with the better of two?"""
    rng = random.Random(7)
    pool = [(bytes([i]) * 20, 1) for i in range(20)]
    colluders = {pool[i][0] for i in range(2)}  # f = 10%
    one = two = 0
    for t in range(trials):
        draws = [weighted_sample(pool, params["verifiers_per_shard"], rng.randbytes(32), "redraw", t)
                 for _ in range(2)]
        bad = [set(d) <= colluders for d in draws]
        one += bad[0]
        two += bad[0] or bad[1]
    result["redraw"] = {"colluding_stake_share": 0.1, "all_drawn_colluding_one_draw": round(one / trials, 4),
                        "all_drawn_colluding_with_one_withheld_block": round(two / trials, 4),
                        "intervals_of_a_drawn_verifier_redrawn": False}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--trials", type=int, default=40)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--draws", type=int, default=500, help="chain draws per trial")
    args = parser.parse_args()
    torch.set_num_threads(1)
    Rows.install()
    params = dict(DEFAULT_PARAMS)

    def body(result: dict) -> None:
        result["params"] = {k: params[k] for k in ("verifiers_per_shard", "samples_per_shard", "min_intervals",
                                                  "collateral_ratio_ppm", "challenge_fee")}
        measure_strategies(result, args.trials, args.seed, params, args.draws)
        measure_verify_cost(result, params)
        measure_redraw(result, params)

    run_benchmark("soundness", body, timeout_s=3600)


if __name__ == "__main__":
    main()
