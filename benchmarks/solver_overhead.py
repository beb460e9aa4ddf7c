"""What being verifiable costs a solver: train_shard against a plain torch training loop.

For each configuration, both sides train the same model from the same initial weights on the
same batches (verifier.data.batch_order) with Adam under the same thread setting (one thread
for the exact profile cpu-f32-1thread):

  plain   what a user would write: torch.optim.Adam, nn.CrossEntropyLoss, loss.backward(),
          no checkpoints.
  solver  verifier.training.train_shard, which encodes a canonical checkpoint every k steps,
          then sha256 of every leaf and the Merkle root, as a solver does before committing.

To say where any difference comes from, two more things are measured:
  steps_only  the verifier's own step (Trainer.train_step: autograd.grad + the written-out
              optimizer, deterministic algorithms on) over the same batches, no checkpoints;
  leaf        snapshot + encode + sha256 of one checkpoint (median of 20).
So solver - plain ~= (steps_only - plain) [the step itself] + leaves * leaf [checkpointing].

Runs alternate between the sides (their order flips every repeat) and medians are reported
(`overhead_ratio`), plus the ratio of the fastest runs and the median of per-repeat ratios
(each solver run against the plain run next to it), which background load disturbs less.
Progress goes to stderr; the last line of stdout is one JSON object whose `overhead_ratio`
is solver / plain for the default (first) configuration. Target: <= 1.05.

    .venv/bin/python benchmarks/solver_overhead.py [--repeats 7] [--only mlp] [--profile]
"""
from __future__ import annotations

import argparse
import cProfile
import dataclasses
import io
import pstats
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402
from torch import nn  # noqa: E402

from benchmarks.common import run_benchmark, say  # noqa: E402
from consensus import merkle  # noqa: E402
from consensus.crypto import sha256  # noqa: E402
from verifier import checkpoint, data, models, replay, training  # noqa: E402
from verifier.work import RoundShard, ShardWork  # noqa: E402

JOB_ID = bytes(32)
TARGET = 1.05

# name: (model, model args, generator, generator args, batch, steps, k, lr_ppm)
CONFIGS = {
    "mlp": ("mlp", {"in_dim": 256, "hidden": [512, 256], "out_dim": 10},
            "blobs", {"n": 20_000, "dim": 256, "classes": 10}, 128, 300, 30, 1000),
    "cnn": ("cnn", {"side": 16, "channels": 16, "out_dim": 10},
            "digits", {"n": 5_000, "side": 16, "classes": 10}, 64, 150, 30, 1000),
}



@dataclasses.dataclass
class Setup:
    name: str
    spec: training.TrainSpec
    train: data.Dataset
    start: checkpoint.TrainState
    rows: torch.Tensor  # (steps, batch) positions within the shard
    shard: data.Dataset


def make_setup(name: str, steps: int | None, k: int | None) -> Setup:
    model, margs, gen, gargs, batch, default_steps, default_k, lr_ppm = CONFIGS[name]
    steps, k = steps or default_steps, k or default_k
    spec = training.TrainSpec(model, margs, "adam", lr_ppm, batch, steps, k, "cpu-f32-1thread", seed=1)
    train = data.generate(gen, gargs, seed=3)
    shard = train.subset(data.shard_indices(len(train), 1, 0))
    rows = torch.from_numpy(data.batch_order(JOB_ID, 0, 0, len(shard), steps, batch))
    return Setup(name, spec, train, training.init_state(spec), rows, shard)


def threads_for(spec: training.TrainSpec) -> int:
    return 1 if spec.exact else torch.get_num_threads()


def plain_loop(s: Setup) -> tuple[float, dict[str, torch.Tensor]]:
    """An ordinary torch loop over the same batches; seconds and final weights."""
    model = models.load_params(models.empty_model(s.spec.model, s.spec.model_args),
                               {n: t.clone() for n, t in s.start.params.items()})
    with training.torch_threads(threads_for(s.spec)):
        start = time.perf_counter()
        opt = torch.optim.Adam(model.parameters(), lr=s.spec.lr)
        loss_fn = nn.CrossEntropyLoss()
        x, y = torch.from_numpy(s.shard.x).to(s.spec.dtype), torch.from_numpy(s.shard.y).long()
        for row in s.rows:
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(model(x.index_select(0, row)), y.index_select(0, row))
            loss.backward()
            opt.step()
        seconds = time.perf_counter() - start
    return seconds, {n: p.detach() for n, p in model.named_parameters()}


def solver(s: Setup) -> tuple[float, list[bytes], bytes]:
    """train_shard, then the leaf hashes and Merkle root; seconds, leaves, root."""
    start = time.perf_counter()
    leaves = training.train_shard(ShardWork(s.spec, s.train, RoundShard(JOB_ID, 0, 0, 1)), s.start)
    root = merkle.root([checkpoint.checkpoint_hash(leaf) for leaf in leaves])
    return time.perf_counter() - start, leaves, root


def steps_only(s: Setup) -> float:
    """The verifier's own training step over the same batches, without any checkpoint."""
    start = time.perf_counter()
    shard_data = training.ShardData(ShardWork(s.spec, s.train, RoundShard(JOB_ID, 0, 0, 1)))
    with training.determinism(s.spec):
        trainer = training.Trainer(s.spec, s.start)
        for x, y in shard_data.batches(0, s.spec.steps):
            trainer.train_step(x, y)
    return time.perf_counter() - start


def leaf_cost(s: Setup, repeats: int = 20) -> tuple[float, float, float]:
    """Median seconds for one leaf: snapshot (Trainer.state), encode, sha256.

    Under the solver's own thread setting: a tensor copy on 2 threads is erratic under load."""
    trainer = training.Trainer(s.spec, s.start)
    snap, enc, hsh = [], [], []
    with training.determinism(s.spec):
        for _ in range(repeats):
            t0 = time.perf_counter()
            state = trainer.state()
            t1 = time.perf_counter()
            raw = checkpoint.encode(state)
            t2 = time.perf_counter()
            sha256(raw)
            t3 = time.perf_counter()
            snap.append(t1 - t0), enc.append(t2 - t1), hsh.append(t3 - t2)
    return statistics.median(snap), statistics.median(enc), statistics.median(hsh)


def profile_top(fn, limit: int = 12) -> list[str]:
    """The functions with the most own time in one call of fn (for the report when over target)."""
    prof = cProfile.Profile()
    prof.enable()
    fn()
    prof.disable()
    out = io.StringIO()
    stats = pstats.Stats(prof, stream=out)
    rows = []
    for (file, line, func), (cc, nc, tt, ct, _) in sorted(stats.stats.items(), key=lambda kv: -kv[1][2])[:limit]:
        rows.append(f"{tt * 1000:8.1f} ms own  {ct * 1000:8.1f} ms cum  {nc:6d}x  {Path(file).name}:{line} {func}")
    return rows


def run_config(name: str, repeats: int, steps: int | None, k: int | None, profile: bool) -> dict:
    s = make_setup(name, steps, k)
    params = sum(t.numel() for t in s.start.params.values())
    leaves_n = s.spec.steps // s.spec.k + 1
    say(f"[{name}] {params:,} params, {s.spec.steps} steps, k={s.spec.k} ({leaves_n} leaves), "
        f"batch {s.spec.batch_size}, threads {threads_for(s.spec)}; warming up")
    solver(s), plain_loop(s), steps_only(s)  # warm-up: allocator, kernels, lru caches
    plain_s, solver_s, steps_s = [], [], []
    leaves = root = weights = None
    for r in range(repeats):
        order = ("plain", "solver", "steps") if r % 2 == 0 else ("steps", "solver", "plain")
        for side in order:
            if side == "plain":
                seconds, weights = plain_loop(s)
                plain_s.append(seconds)
            elif side == "solver":
                seconds, leaves, root = solver(s)
                solver_s.append(seconds)
            else:
                steps_s.append(steps_only(s))
        say(f"[{name}] repeat {r + 1}/{repeats}: plain {plain_s[-1]:.3f}s  solver {solver_s[-1]:.3f}s  "
            f"steps-only {steps_s[-1]:.3f}s")
    plain, solved, stepped = (statistics.median(v) for v in (plain_s, solver_s, steps_s))
    snap, enc, hsh = leaf_cost(s)
    leaf = snap + enc + hsh
    final = checkpoint.decode(leaves[-1])
    same_math = replay.relative_distance(final, dataclasses.replace(final, params=weights))
    out = {
        "model": s.spec.model, "model_args": s.spec.model_args, "params": params,
        "data": CONFIGS[name][2], "optimizer": s.spec.optimizer, "profile": s.spec.profile,
        "threads": threads_for(s.spec), "batch_size": s.spec.batch_size, "steps": s.spec.steps, "k": s.spec.k,
        "checkpoints": leaves_n, "checkpoint_bytes": len(leaves[-1]), "merkle_root": root.hex(),
        "repeats": repeats,
        "plain_s": round(plain, 4), "solver_s": round(solved, 4), "steps_only_s": round(stepped, 4),
        "plain_s_all": [round(x, 4) for x in plain_s], "solver_s_all": [round(x, 4) for x in solver_s],
        "plain_ms_per_step": round(1000 * plain / s.spec.steps, 3),
        "solver_ms_per_step": round(1000 * solved / s.spec.steps, 3),
        "leaf_ms": {"snapshot": round(1000 * snap, 3), "encode": round(1000 * enc, 3),
                    "sha256": round(1000 * hsh, 3), "total": round(1000 * leaf, 3)},
        "overhead_ratio": round(solved / plain, 4),
        "overhead_ratio_of_fastest_runs": round(min(solver_s) / min(plain_s), 4),  # less sensitive to load
        "overhead_ratio_paired_median": round(statistics.median(a / b for a, b in zip(solver_s, plain_s)), 4),
        "overhead_breakdown": {  # fractions of the plain loop's time
            "step_implementation": round((stepped - plain) / plain, 4),
            "checkpoints_estimated": round(leaves_n * leaf / plain, 4),
            "rest": round((solved - stepped - leaves_n * leaf) / plain, 4),
        },
        "plain_vs_solver_weights_rel_l2": same_math,
    }
    say(f"[{name}] median plain {plain:.3f}s, solver {solved:.3f}s, ratio {solved / plain:.4f} "
        f"(steps-only {stepped / plain:.4f}, checkpoints ~{leaves_n * leaf / plain:.4f})")
    if profile or solved / plain > TARGET:
        say(f"[{name}] over target or --profile: profiling one run of each side")
        out["profile_solver_top"] = profile_top(lambda: solver(s))
        out["profile_plain_top"] = profile_top(lambda: plain_loop(s))
        for line in out["profile_solver_top"]:
            say(f"  solver {line}")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=7, help="timed runs of each side per config (>= 3)")
    ap.add_argument("--only", choices=sorted(CONFIGS), action="append", help="run only these configs")
    ap.add_argument("--steps", type=int, help="override steps for every config")
    ap.add_argument("--k", type=int, help="override k for every config")
    ap.add_argument("--profile", action="store_true", help="cProfile one run of each side even under target")
    ap.add_argument("--timeout", type=float, default=3600, help="seconds before the run is abandoned")
    args = ap.parse_args()
    if args.repeats < 3:
        ap.error("--repeats must be at least 3")
    names = args.only or list(CONFIGS)

    def body(result: dict) -> None:
        started = time.perf_counter()
        results = {name: run_config(name, args.repeats, args.steps, args.k, args.profile) for name in names}
        default = results[names[0]]
        result.update({
            "torch": torch.__version__, "default_config": names[0],
            "overhead_ratio": default["overhead_ratio"], "target_overhead_ratio": TARGET,
            "within_target": default["overhead_ratio"] <= TARGET,
            "configs": results, "wall_s": round(time.perf_counter() - started, 1),
        })

    run_benchmark("solver_overhead", body, args.timeout)

if __name__ == "__main__":
    main()
