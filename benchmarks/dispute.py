"""Disputes at the genesis defaults: a referee's compute is one training step whatever k is;
a game's length in blocks and txs; and what a lazy verifier expects from attesting unchecked.

For each k in --ks (default 10, 50, 200), on a real chain (tests/jobworld.py: four
validators, two of them enough to decide) with a real job (the spirals MLP, exact profile, 50
intervals of k steps, trained for real):
  1. a cheater forges one interval's end and commits; an honest verifier challenges it;
  2. both play the bisection game, each move in the next block, each midpoint recomputed
     from the party's own leaf (tests/gamearena.py);
  3. a referee judges the last step (node.workers.referee.judge), counting every training
     step it takes (referee_steps), and its wall time is set against re-running the whole
     interval (what a referee did before games, and still does in the tolerance profile);
  4. the referees vote as soon as the chain lets them (after the solver's response deadline,
     its time to reveal a forced error): dispute_blocks counts blocks from the challenge to
     the decision, dispute_txs the challenge, the moves and the votes. The worst case is
     every move at its deadline: move_blocks x 2 ceil(log2 k), then the referees' window.

The lazy verifier: over --draws draws of a solver's forced-error element, a verifier's secret,
a root and beacons, the chain's own functions say how often a forced error falls in the
intervals a drawn verifier must check (consensus.forced, consensus.sampling). Attesting them
unchecked saves their compute, valued at the job's price of compute (the reward pays for the
shard's n intervals, so m intervals are worth m/n of it); being caught loses the verifier's
collateral (attest_collateral_ppm) and its fee. In units of the shard's reward:

    lazy_verifier_expected_profit = m/n - P(caught) x (collateral + m x fee)

Progress goes to stderr; the last line of stdout is one JSON object.

    .venv/bin/python benchmarks/dispute.py [--ks 10,50,200] [--runs 5] [--draws 20000]
"""
from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import run_benchmark, say, wilson  # noqa: E402
from consensus.forced import forced_interval  # noqa: E402
from consensus.genesis import DEFAULT_PARAMS  # noqa: E402
from consensus.jobs.game import game_blocks  # noqa: E402
from consensus.sampling import verifier_intervals  # noqa: E402
from node.workers.common import JobContext, Verdict  # noqa: E402
from node.workers.referee import judge  # noqa: E402
from tests.gamearena import forged, honest_leaves, play, record  # noqa: E402
from tests.jobworld import REFEREES, block, vote  # noqa: E402
from verifier import replay  # noqa: E402

INTERVAL = 7          # the disputed interval (any would do)
N_INTERVALS = 50      # the genesis min_intervals
SPIRALS_FEE = 1_000 / 100_000   # examples/spirals.toml: verification_fee / reward_per_shard


def _spread(xs: list[float]) -> dict:
    return {"median": round(statistics.median(xs), 5), "min": round(min(xs), 5), "max": round(max(xs), 5)}


def dispute(k: int, runs: int) -> dict:
    leaves = honest_leaves(k)
    cheat = forged(leaves, INTERVAL + 1)
    played = play(k, cheat, INTERVAL)
    assert played.judgement.verdict == Verdict.FAULT, played.judgement.why
    c, jid, ch = played.chain, played.job, played.record.shards[0].challenges[0]
    while c.height <= ch.respond_by:   # the solver's time to reveal a forced error
        block(c)
    vote(c, jid, played.challenger, True, *REFEREES)
    assert record(c, jid).shards[0].challenges == [], "the referees' votes did not decide the dispute"
    work = JobContext(played.record, {}.get).work(0)
    one_step, interval = [], []
    for _ in range(runs):
        t = time.perf_counter()
        judge(played.record, 0, ch, played.narrowed, played.blobs.get)
        one_step.append(time.perf_counter() - t)
        t = time.perf_counter()
        replay.verify_interval(work, INTERVAL, cheat[INTERVAL], cheat[INTERVAL + 1])
        interval.append(time.perf_counter() - t)
    return {
        "k": k, "referee_steps": played.referee_steps, "interval_steps": k,
        "referee_steps_fraction_of_interval": round(played.referee_steps / k, 4),
        "referee_seconds": _spread(one_step), "interval_recompute_seconds": _spread(interval),
        "referee_time_fraction_of_interval": round(statistics.median(one_step) / statistics.median(interval), 4),
        "game_moves": played.moves, "game_blocks": played.narrowed - played.opened,
        "dispute_blocks": c.height - played.opened, "dispute_txs": 1 + played.moves + len(REFEREES),
        "worst_case_dispute_blocks": game_blocks(DEFAULT_PARAMS, k) + DEFAULT_PARAMS["dispute_blocks"],
    }


def lazy_verifier(params: dict, draws: int, seed: int) -> dict:
    rng = random.Random(seed)
    rate, samples = params["forced_error_ppm"], params["samples_per_shard"]
    caught = 0
    for _ in range(draws):
        f = forced_interval(rng.randbytes(32), rng.randbytes(32), N_INTERVALS, rate)
        mine = verifier_intervals(rng.randbytes(32), rng.randbytes(32), rng.randbytes(32), N_INTERVALS, samples)
        caught += f is not None and f in mine
    m = samples + 1
    p = caught / draws
    saved = m / N_INTERVALS
    loss = params["attest_collateral_ppm"] / 1e6 + m * SPIRALS_FEE
    return {"seed": seed, "draws": draws, "p_caught": round(p, 5), "p_caught_95": wilson(caught, draws),
            "p_caught_analytic": round(rate / 1e6 * m / N_INTERVALS, 5),
            "compute_saved_rewards": round(saved, 5), "loss_if_caught_rewards": round(loss, 3),
            "expected_loss_rewards": round(p * loss, 5),
            "expected_profit_rewards": round(saved - p * loss, 5)}


def main(result: dict) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--ks", default="10,50,200")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--draws", type=int, default=20_000)
    args = ap.parse_args()
    params = DEFAULT_PARAMS
    result["params"] = {p: params[p] for p in ("forced_error_ppm", "attest_collateral_ppm", "samples_per_shard",
                                               "move_blocks", "response_blocks", "dispute_blocks")}
    result["disputes"] = []
    for k in map(int, args.ks.split(",")):
        say(f"k = {k}: training, playing the game, judging")
        result["disputes"].append(dispute(k, args.runs))
    result["referee_steps"] = max(d["referee_steps"] for d in result["disputes"])
    result["dispute_blocks"] = {str(d["k"]): d["dispute_blocks"] for d in result["disputes"]}
    lazy = [lazy_verifier(params, args.draws, seed) for seed in range(3)]
    result["lazy_verifier"] = lazy
    profits = [x["expected_profit_rewards"] for x in lazy]
    result["lazy_verifier_expected_profit"] = max(profits)
    result["lazy_verifier_expected_profit_spread"] = _spread(profits)
    result["lazy_loses"] = max(profits) < 0


if __name__ == "__main__":
    run_benchmark("dispute", main, timeout_s=1200)
