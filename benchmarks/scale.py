"""Real-size jobs: models of about 1M, 20M and 124M parameters, checkpoints, solver overhead,
memory per role, verification time and P2P throughput, against this machine's raw limits.

    python benchmarks/scale.py [--models mlp-1m,gpt-124m] [--device cuda] [--p2p-runs 3]

Per model (each role is a process of its own, so its peak RSS is its own):
  solver    trains one interval of the job's k steps from the initial state, writing both
            leaves to disk as stepchain does (streamed, hashed on the way); in the same run a
            plain torch loop (torch.optim.Adam, no leaves) takes a few steps of the same model
            as the baseline. leaf_overhead_ratio = seconds per leaf / (k x seconds per step):
            what a solver pays for being verifiable, at the job's k.
  verifier  verifies that interval end to end: reads both leaves from disk, recomputes k steps
            and compares the blob ids (verifier.replay.verify_interval).
  node      moves the model's checkpoint between two real nodes over P2P (benchmarks/blob_p2p.py),
            against the raw limit of one core: SecretBox sealing plus the blob hash.
Peak RSS is each process's high-water mark; `rss_over_base` subtracts what the process held
before the model existed (torch, the dataset), and `rss_bound_ok` compares it with 2.5
checkpoints plus RSS_CONSTANT. Prints one JSON object; long (about 10 minutes), so it stays out of CI
(`make bench-scale`).
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import run_benchmark, say  # noqa: E402

RSS_BOUND_CHECKPOINTS = 2.5
RSS_CONSTANT = 128 << 20  # the "plus a constant": torch's workspaces, activations, I/O pieces, the data


@dataclass(frozen=True)
class ScaleModel:
    """One benchmarked job: the registry model, its data, and the job's k."""
    name: str
    model: str
    model_args: dict
    data: dict  # generator name, args
    batch_size: int
    k: int  # chosen so that a leaf costs at most 5% of an interval


MODELS = (
    ScaleModel("mlp-1m", "mlp", {"in_dim": 256, "hidden": [1024, 512], "out_dim": 10},
               {"generator": "blobs", "args": {"n": 4096, "dim": 256, "classes": 10}}, 64, 200),
    ScaleModel("mlp-wide-21m", "mlp", {"in_dim": 1024, "hidden": [4096, 4096], "out_dim": 10},
               {"generator": "blobs", "args": {"n": 4096, "dim": 1024, "classes": 10}}, 32, 100),
    ScaleModel("gpt-19m", "gpt", {"context": 128, "d_model": 512, "heads": 8, "layers": 6},
               {"generator": "byte_text", "args": {"n": 2048, "context": 128}}, 2, 40),
    ScaleModel("gpt-124m", "gpt", {"context": 128, "d_model": 768, "heads": 12, "layers": 17},
               {"generator": "byte_text", "args": {"n": 2048, "context": 128}}, 1, 40),
)
BY_NAME = {m.name: m for m in MODELS}
BASELINE_STEPS = 3


def peak_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _work(m: ScaleModel, device: str, steps: int):
    from verifier import data, training
    from verifier.work import RoundShard, ShardWork
    profile = "tolerance" if device.startswith("cuda") else "cpu-f32-1thread"
    spec = training.TrainSpec(model=m.model, model_args=m.model_args, optimizer="adam", lr_ppm=1000,
                              batch_size=m.batch_size, steps=steps, k=steps, profile=profile, seed=7)
    ds = data.generate(m.data["generator"], m.data["args"], 1)
    return ShardWork(spec, ds, RoundShard(b"\x05" * 32, 0, 0, 1), device)


def _plain_torch_step(m: ScaleModel, work) -> float:
    """Seconds per step of a plain torch loop on the same model and batches (no stepchain)."""
    import torch
    import torch.nn.functional as F
    from verifier import models, training
    spec = work.spec
    model = models.build_model(m.model, m.model_args, spec.seed, spec.dtype).to(training.resolve_device(spec, work.device))
    opt = torch.optim.Adam(model.parameters(), lr=spec.lr)
    times = []
    with training.determinism(spec):
        for x, y in training.ShardData(work).batches(0, BASELINE_STEPS):
            t = time.perf_counter()
            logits = model(x)
            F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1)).backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            _sync(work.device)
            times.append(time.perf_counter() - t)
    return sorted(times)[len(times) // 2]


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        import torch
        torch.cuda.synchronize()


class _TimedLeaves:
    """A LeafDir that times its writes."""

    def __init__(self, directory: Path):
        from verifier.leaves import LeafDir
        self.inner, self.seconds = LeafDir(directory), []

    def put(self, index, state):
        t = time.perf_counter()
        path = self.inner.put(index, state)
        self.seconds.append(time.perf_counter() - t)
        return path


def role_solver(m: ScaleModel, workdir: Path, device: str) -> dict:
    from verifier import training
    work = _work(m, device, m.k)
    base = peak_rss()
    plain = _plain_torch_step(m, work)
    state = training.init_state(work.spec)
    store = _TimedLeaves(workdir / "leaves")
    t = time.perf_counter()
    training.train_shard(work, state, store=store, own=True)
    total = time.perf_counter() - t
    leaf_s = sum(store.seconds) / len(store.seconds)
    step_s = (total - sum(store.seconds)) / m.k
    ckpt = (workdir / "leaves" / "0.ckpt").stat().st_size
    return {"checkpoint_bytes": ckpt, "leaf_seconds": round(leaf_s, 4), "step_seconds": round(step_s, 4),
            "plain_torch_step_seconds": round(plain, 4), "leaf_overhead_ratio": round(leaf_s / (m.k * step_s), 4),
            "interval_seconds": round(total - leaf_s, 2), "peak_rss_bytes": peak_rss(), "base_rss_bytes": base,
            "ids": [h.hex() for h in store.inner.hashes(2)]}


def role_verifier(m: ScaleModel, workdir: Path, device: str) -> dict:
    from verifier import replay, training
    work = _work(m, device, m.k)
    with training.determinism(work.spec):  # a worker pays torch's one-time set-up once, not per interval
        pass
    base = peak_rss()
    leaves = workdir / "leaves"
    t = time.perf_counter()
    ok, why = replay.verify_interval(work, 0, leaves / "0.ckpt", leaves / "1.ckpt")
    return {"ok": ok, "why": why, "verify_interval_seconds": round(time.perf_counter() - t, 2),
            "peak_rss_bytes": peak_rss(), "base_rss_bytes": base}


def _run_role(role: str, m: ScaleModel, workdir: Path, device: str) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--role", role, "--models", m.name, "--dir", str(workdir),
           "--device", device]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
    if out.returncode != 0:
        raise RuntimeError(f"{role} of {m.name} failed: {out.stderr.strip().splitlines()[-1:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def _bound(role: dict, ckpt: int) -> dict:
    over = role["peak_rss_bytes"] - role["base_rss_bytes"]
    return {"peak_rss_bytes": role["peak_rss_bytes"], "rss_over_base_bytes": over,
            "rss_over_base_checkpoints": round(over / ckpt, 2),
            "rss_bound_ok": over <= RSS_BOUND_CHECKPOINTS * ckpt + RSS_CONSTANT}


def bench_model(m: ScaleModel, device: str, p2p_runs: int) -> dict:
    from consensus import runnable
    with tempfile.TemporaryDirectory(prefix=f"scale-{m.name}-") as tmp:
        workdir = Path(tmp)
        say(f"{m.name}: solver (k={m.k})")
        solver = _run_role("solver", m, workdir, device)
        say(f"{m.name}: verifier")
        verifier = _run_role("verifier", m, workdir, device)
        if not verifier["ok"]:
            raise RuntimeError(f"{m.name}: the honest interval failed verification: {verifier['why']}")
        ckpt = solver["checkpoint_bytes"]
        entry = {"name": m.name, "model": m.model, "model_args": m.model_args, "k": m.k,
                 "params": runnable.param_count(m.model, runnable.normalise_model(m.model, m.model_args, ValueError)),
                 "checkpoint_bytes": ckpt, **{k: solver[k] for k in (
                     "leaf_seconds", "step_seconds", "plain_torch_step_seconds", "leaf_overhead_ratio",
                     "interval_seconds")},
                 "verify_interval_seconds": verifier["verify_interval_seconds"],
                 "roles": {"solver": _bound(solver, ckpt), "verifier": _bound(verifier, ckpt)}}
        say(f"{m.name}: p2p")
        p2p = _p2p(workdir / "leaves" / "1.ckpt", p2p_runs)
        entry.update({k: p2p[k] for k in ("p2p_mib_per_s", "raw_limit_mib_per_s", "p2p_fraction_of_limit")})
        entry["p2p_runs_mib_per_s"] = p2p.get("runs_mib_per_s")
        if "node_peak_rss_bytes" in p2p:
            entry["roles"]["node"] = {"peak_rss_bytes": p2p["node_peak_rss_bytes"],
                                      "rss_over_base_bytes": p2p["node_rss_over_base_bytes"],
                                      "rss_over_base_checkpoints": round(p2p["node_rss_over_base_bytes"] / ckpt, 2),
                                      "rss_bound_ok": p2p["node_rss_over_base_bytes"]
                                      <= RSS_BOUND_CHECKPOINTS * ckpt + RSS_CONSTANT}
        entry["peak_rss_bytes"] = {role: r["peak_rss_bytes"] for role, r in entry["roles"].items()}
        return entry


def _p2p(path: Path, runs: int) -> dict:
    """A blob the size of this model's checkpoint between two real nodes, `runs` times (fresh
    bytes each run: a node never fetches what it has), against the raw limit measured around it."""
    from benchmarks import blob_p2p
    size_mib = -(-path.stat().st_size // (1 << 20))
    raw_before = blob_p2p.raw_limit(min(size_mib, 256))
    with tempfile.TemporaryDirectory(prefix="scale-p2p-") as tmp:
        two = blob_p2p.network_runs(Path(tmp), size_mib, runs, servers=1)
    raw = max(raw_before, blob_p2p.raw_limit(min(size_mib, 256)))
    return {"p2p_mib_per_s": two["median_mib_per_s"], "runs_mib_per_s": two["runs_mib_per_s"],
            "raw_limit_mib_per_s": round(raw, 1), "p2p_fraction_of_limit": round(two["median_mib_per_s"] / raw, 3),
            "node_peak_rss_bytes": two["fetcher_peak_rss_bytes"],
            "node_rss_over_base_bytes": two["fetcher_peak_rss_bytes"] - two["fetcher_base_rss_bytes"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(BY_NAME))
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (training runs in `tolerance` there)")
    parser.add_argument("--p2p-runs", type=int, default=3)
    parser.add_argument("--role", choices=("solver", "verifier"), help=argparse.SUPPRESS)
    parser.add_argument("--dir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    names = args.models.split(",")
    unknown = [n for n in names if n not in BY_NAME]
    if unknown:
        parser.error(f"unknown model {unknown[0]!r} (one of {', '.join(BY_NAME)})")
    if args.role:  # one role of one model, in its own process
        role = {"solver": role_solver, "verifier": role_verifier}[args.role]
        print(json.dumps(role(BY_NAME[names[0]], Path(args.dir), args.device)))
        return

    def body(result: dict) -> None:
        result.update({"device": args.device, "rss_bound_checkpoints": RSS_BOUND_CHECKPOINTS,
                       "rss_constant_bytes": RSS_CONSTANT,
                       "configs": [asdict(BY_NAME[n]) for n in names], "models": []})
        for n in names:
            result["models"].append(bench_model(BY_NAME[n], args.device, args.p2p_runs))
        ms = result["models"]
        result["targets"] = {
            "largest_completed": max(m["params"] for m in ms),
            "p2p_at_least_half_the_limit": all(m["p2p_fraction_of_limit"] >= 0.5 for m in ms),
            "solver_overhead_at_most_5_percent": all(m["leaf_overhead_ratio"] <= 0.05 for m in ms),
            "rss_within_bound": all(r["rss_bound_ok"] for m in ms for r in m["roles"].values())}
    run_benchmark("scale", body, timeout_s=3 * 3600)


if __name__ == "__main__":
    main()
