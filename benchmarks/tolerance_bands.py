"""Where honest work and rational cheats land under the tolerance profile's rule.

verifier.replay judges each tensor of a claimed interval end by err = |ours - claimed|
against move = |ours - start| (L2 norms): ok iff err <= tol x max(move, floor), floor =
FLOOR_PPM/1e6 x |start| + FLOOR_ABS. This measures ratio = err / max(move, floor), in ppm (a
tensor passes at <= tolerance_ppm), worst over every tensor and interval of a shard, for:

  honest-threads     the solver trains on 1 thread, the verifier recomputes on 2
  honest-microbatch  the solver accumulates each batch's gradient over two micro-batches
                     (the same mean, summed in another order, as a solver short of memory does)
  honest-f64         each interval trained in float64 from the float32 start, its end cast
                     to float32: the most accurate answer there is, so how far float32 itself
                     is from exact (a float64 solver does not follow the float32 profile)
  every cheat of verifier.adversary.RATIONAL, with what it declares

for Adam, momentum and SGD at lr 1e-2, 1e-3 and 1e-4 on the spirals example's MLP (2-64-64-3,
batch 64, 200 steps, k = 20; Adam and SGD at lr 1e-4 also with k = 5), where two threads
never change a bit, and the honest ones on a wider MLP (32-256-256-10, batch 256, on blobs)
where they do. Per row: the worst ratio (also
as if FLOOR_PPM were 100, 300, 1000, 3000), whether every interval passes, the failing
intervals, whether one of them is checked by every verifier (consensus.sampling), the worst
interval loss gap |ours - claimed| / max(|ours|, LOSS_FLOOR) in ppm (`worst_loss_ratio_ppm`:
the loss is held to tolerance_ppm of that), and the
compute the cheat saves (`saved`, nominal: its share of the honest steps' FLOPs, counting
half-precision autocast as half a step, as on tensor-core GPUs; `cpu_time_ratio` is its time
here). For the bias just under the bound, how far the shard's final weights drift from honest
training: against tol x (sum of the intervals' weight movements), against the distance honest
training travels, and next to how far a whole float64 shard ends from the float32 one.

Progress goes to stderr; the last line of stdout is one JSON object (~2 minutes on 2 cores).

    .venv/bin/python benchmarks/tolerance_bands.py [--tolerance-ppm N] [--only adam-lr1e-4 ...]
"""
from __future__ import annotations

import argparse
import dataclasses
import math
import sys
import time
from pathlib import Path
from typing import Callable

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from benchmarks.common import run_benchmark, say  # noqa: E402
from consensus.sampling import verifier_intervals  # noqa: E402
from verifier import adversary, checkpoint, data, replay, training  # noqa: E402
from verifier.checkpoint import TrainState  # noqa: E402
from verifier.work import RoundShard, ShardWork  # noqa: E402

JOB = b"benchmark/tolerance-bands".ljust(32, b".")
SPIRALS = data.generate("spirals", {"n": 3000, "classes": 3}, 7)
WIDE_DATA = data.generate("blobs", {"n": 4000, "dim": 32, "classes": 10}, 7)
STEPS, K = 200, 20
# name: (optimizer, lr_ppm, wide, k)
CONFIGS = {f"{opt}-lr1e-{e}": (opt, 10 ** (6 - e), False, K) for opt in ("adam", "momentum", "sgd") for e in (2, 3, 4)}
CONFIGS |= {f"{opt}-lr1e-4-k5": (opt, 100, False, 5) for opt in ("adam", "sgd")}  # short intervals
CONFIGS |= {f"wide-{opt}-lr1e-{e}": (opt, 10 ** (6 - e), True, K)
            for opt, e in (("adam", 2), ("adam", 3), ("adam", 4), ("momentum", 3), ("sgd", 2))}
HONEST = ("honest-threads", "honest-microbatch", "honest-f64")
FLOORS_PPM = (100, 300, 1000, 3000)



def work_for(optimizer: str, lr_ppm: int, tolerance_ppm: int, wide: bool, k: int = K) -> ShardWork:
    args = {"in_dim": 32, "hidden": [256, 256], "out_dim": 10} if wide else {"in_dim": 2, "hidden": [64, 64], "out_dim": 3}
    spec = training.TrainSpec("mlp", args, optimizer, lr_ppm, 256 if wide else 64, STEPS, k, "tolerance", seed=1,
                              tolerance_ppm=tolerance_ppm)
    return ShardWork(spec, WIDE_DATA if wide else SPIRALS, RoundShard(JOB, 0, 0, 1))


def with_threads(n: int, fn: Callable):
    with training.torch_threads(n):
        return fn()


def microbatch_steps(trainer: training.Trainer, shard_data: training.ShardData) -> None:
    """Honest steps whose batch gradient (and the step's loss, the batch mean) is accumulated
    over two micro-batches."""
    for x, y in shard_data.batches(trainer.step, trainer.spec.k):
        total = [torch.zeros_like(p) for p in trainer.params]
        step_loss = torch.zeros((), dtype=torch.float64)
        for xs, ys in ((x[:len(x) // 2], y[:len(y) // 2]), (x[len(x) // 2:], y[len(y) // 2:])):
            logits = trainer.model(xs)
            loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), ys.reshape(-1), reduction="sum")
            step_loss += loss.detach().to(torch.float64)
            for t, g in zip(total, torch.autograd.grad(loss, trainer.params)):
                t.add_(g)
        trainer.opt.update([t / y.numel() for t in total])
        if trainer.step % trainer.spec.k == 0:
            trainer.loss_sum.zero_()
        trainer.loss_sum += step_loss / y.numel()
        trainer.step, trainer.rng = trainer.step + 1, training.next_rng(trainer.rng)


def _cast(state: TrainState, dtype: torch.dtype) -> TrainState:
    cast = lambda ts: {n: t if n.endswith("_power") else t.to(dtype) for n, t in ts.items()}  # noqa: E731
    return dataclasses.replace(state, params=cast(state.params), opt=cast(state.opt))


def f64_run(work: ShardWork, start_raw: bytes, n_steps: int) -> bytes:
    """n_steps trained in float64 from a float32 checkpoint, the end cast back to float32."""
    spec64 = dataclasses.replace(work.spec, profile="cpu-f64")
    start = _cast(checkpoint.decode(start_raw), torch.float64)
    end = training.run_steps(training.ShardData(work.with_spec(spec64)), start, n_steps)
    return checkpoint.encode(_cast(checkpoint.decode(end), torch.float32))


def judge(work: ShardWork, starts, claims, diverged_leaf=None, ends: Callable[[int], bytes] | None = None) -> dict:
    """Interval i starts at starts[i] and is claimed to end at claims[i]; ends(i) is our
    recomputation (default: run_interval here). The worst ratios and every interval's verdict."""
    tol, every, failed, moves, loss_ratios = work.spec.tolerance_ppm / 1e6, [], [], [], []
    for i in range(work.intervals):
        start, claimed = checkpoint.decode(starts[i]), checkpoint.decode(claims[i])
        if checkpoint.is_finite(start) and checkpoint.is_finite(claimed):
            k = work.spec.k
            ours = checkpoint.decode(ends(i) if ends else training.run_interval(work, starts[i], i * k, k))
            gaps = replay.tensor_gaps(start, ours, claimed)
            every += gaps
            moves.append(math.sqrt(sum(g.move ** 2 for g in gaps if g.name in start.params)))
            loss_ratios.append(abs(ours.loss_sum - claimed.loss_sum) / max(abs(ours.loss_sum), replay.LOSS_FLOOR))
            ok = max(g.ratio for g in gaps) <= tol and replay.exact_fault(ours, claimed) is None \
                and replay.loss_fault(ours, claimed, work.spec.tolerance_ppm) is None
        else:  # the non-finite rules: no distance to measure
            ok = replay.verify_interval(work, i, starts[i], claims[i], diverged_leaf)[0]
        if not ok:
            failed.append(i)
    always = verifier_intervals(b"", b"", b"", work.intervals, 0, diverged_leaf)  # checked by every verifier
    top = max(every, key=lambda g: g.ratio, default=None)
    by_floor = {str(f): round(max((g.ratio_at(f) for g in every), default=0.0) * 1e6, 3) for f in FLOORS_PPM}
    return {"worst_ratio_ppm": round(top.ratio * 1e6, 3) if top else None, "worst_tensor": top.name if top else None,
            "worst_ratio_ppm_by_floor_ppm": by_floor, "passes": not failed, "failed_intervals": failed,
            "caught_for_sure": bool(set(failed) & set(always)), "param_moves": moves,
            "worst_loss_ratio_ppm": round(max(loss_ratios, default=0.0) * 1e6, 3)}


def saved_fraction(strategy: str, published: adversary.Published, intervals: int) -> float:
    """The cheat's nominal saving, as a fraction of the honest shard's compute."""
    if strategy == "skip-one-step":
        return 1 / (STEPS // intervals)
    if strategy in ("half-batch", "bf16-autocast", "fp16-autocast"):
        return 0.5
    if strategy.startswith("nonfinite"):
        first_nan = next(i for i, raw in enumerate(published.leaves) if not checkpoint.is_finite(checkpoint.decode(raw)))
        return (intervals - (first_nan - 1)) / intervals
    if strategy == "one-interval":
        return 1 / intervals
    return 0.0


def _params_distance(a_raw: bytes, b_raw: bytes) -> float:
    a, b = checkpoint.decode(a_raw).params, checkpoint.decode(b_raw).params
    return math.sqrt(sum(float(torch.sum((a[n].double() - b[n].double()) ** 2)) for n in a))


def drift(work: ShardWork, honest: list[bytes], biased, param_moves: list[float]) -> dict:
    """How far the biased shard's final weights are from honest training's (see the docstring)."""
    dist, travel = _params_distance(honest[-1], biased[-1]), _params_distance(honest[-1], honest[0])
    injected_bound = work.spec.tolerance_ppm / 1e6 * sum(param_moves)
    rounding = _params_distance(honest[-1], f64_run(work, honest[0], work.spec.steps))
    return {"final_distance": dist, "bound_tol_x_sum_of_moves": injected_bound,
            "distance_over_bound": round(dist / injected_bound, 4),
            "distance_over_honest_travel_ppm": round(dist / travel * 1e6, 3),
            "f64_shard_distance_over_honest_travel_ppm": round(rounding / travel * 1e6, 3)}


def run_honest(work: ShardWork, honest: list[bytes]) -> dict:
    start = checkpoint.decode(honest[0])
    k = work.spec.k
    two_threads = lambda i: with_threads(2, lambda: training.run_interval(work, honest[i], i * k, k))  # noqa: E731
    microbatch = adversary.train_with(work, start, steps=microbatch_steps)
    f64 = [f64_run(work, honest[i], k) for i in range(work.intervals)]
    return {"honest-threads": judge(work, honest[:-1], honest[1:], ends=two_threads),
            "honest-microbatch": judge(work, microbatch[:-1], microbatch[1:]),
            "honest-f64": judge(work, honest[:-1], f64, ends=lambda i: honest[i + 1])}


def run_cheats(work: ShardWork, honest: list[bytes], honest_s: float) -> dict:
    start, out = checkpoint.decode(honest[0]), {}
    for strategy in adversary.RATIONAL:
        t0 = time.perf_counter()
        published = adversary.publish(strategy, work, start, seed=b"bench")
        seconds = time.perf_counter() - t0
        row = judge(work, published.leaves[:-1], published.leaves[1:], published.diverged_leaf)
        row.update(declared=published.diverged_leaf, saved=round(saved_fraction(strategy, published, work.intervals), 4),
                   cpu_time_ratio=round(seconds / honest_s, 3))
        if strategy == "bias-under-bound":
            row["drift"] = drift(work, honest, published.leaves, row["param_moves"])
        out[strategy] = row
    return out


def run_config(work: ShardWork, cheats: bool) -> dict:
    t0 = time.perf_counter()
    honest = training.train_shard(work, training.init_state(work.spec))
    honest_s = time.perf_counter() - t0
    out = run_honest(work, honest) | (run_cheats(work, honest, honest_s) if cheats else {})
    for row in out.values():
        row.pop("param_moves")
    return out


def verdicts(results: dict) -> dict:
    """Which honest rows fail anywhere; whether every cheat saving >= 1% fails wherever it ran."""
    honest_failing = sorted(f"{c}/{h}" for c, rows in results.items() for h in HONEST if not rows[h]["passes"])
    saving_cheats_passing = sorted(f"{c}/{s}" for c, rows in results.items() for s, r in rows.items()
                                   if s not in HONEST and r["passes"] and r["saved"] >= 0.01)
    return {"honest_failing": honest_failing, "saving_cheats_passing": saving_cheats_passing,
            "honest_f32_all_pass": not [h for h in honest_failing if not h.endswith("/honest-f64")],
            "every_saving_cheat_fails": not saving_cheats_passing}


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tolerance-ppm", type=int, default=training.DEFAULT_TOLERANCE_PPM)
    ap.add_argument("--only", nargs="+", choices=sorted(CONFIGS), help="run only these configurations")
    ap.add_argument("--timeout", type=float, default=900, help="seconds before the run is abandoned")
    return ap.parse_args()


def main() -> None:
    args = parse_args()

    def body(result: dict) -> None:
        torch.set_num_threads(1)
        result.update(tolerance_ppm=args.tolerance_ppm, floor_ppm=replay.FLOOR_PPM, floor_abs=replay.FLOOR_ABS,
                      steps=STEPS, k=K, models="mlp 2-64-64-3 on spirals; wide-*: mlp 32-256-256-10 on blobs")
        results: dict = {}
        for name in args.only or CONFIGS:
            t0 = time.perf_counter()
            opt, lr, wide, k = CONFIGS[name]
            results[name] = run_config(work_for(opt, lr, args.tolerance_ppm, wide, k), cheats=not wide)
            say(f"{name}: {time.perf_counter() - t0:.1f}s")
            result["results"] = results
        result.update(verdicts(results))

    run_benchmark("tolerance_bands", body, args.timeout)


if __name__ == "__main__":
    main()
