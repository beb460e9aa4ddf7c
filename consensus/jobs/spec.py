"""What a job asks for, and what it may cost: the spec rules and the escrowed budget.

A spec holds exactly what some built-in model and dataset take: the chain checks every field
against the shared registry (no free-form data rides in a job), the limits below, and the
rules that make a job runnable at all (consensus/runnable.py), so a job nobody can run is
refused at submission instead of costing solvers their deadlines.
"""
from __future__ import annotations

from ..args import check_args
from ..registry import GENERATOR_SCHEMAS, GENERATORS, MODEL_SCHEMAS, MODELS
from .errors import JobError

METRICS = ("accuracy",)
PROFILES = ("cpu-f32-1thread", "cpu-f64", "tolerance")
OPTIMIZERS = ("sgd", "momentum", "adam")
LIMITS = {"shards": 16, "rounds": 10, "steps": 100_000, "batch_size": 4096, "leaves": 257,
          "deadline_blocks": 10_000}
SPEC_INTS = ("batch_size", "shards", "rounds", "steps", "k", "lr_ppm", "seed", "tolerance_ppm",
             "holdout_ppm", "reward_per_shard", "verification_fee", "commit_blocks", "verify_blocks")


def check_spec(spec: dict) -> None:
    """Structural rules the chain can check without torch (the CLI checks the rest first)."""
    want = set(SPEC_INTS) | {"model", "model_args", "data", "optimizer", "profile", "metric"}
    if type(spec) is not dict or set(spec) != want:
        raise JobError(f"job spec must have exactly the fields: {', '.join(sorted(want))}")
    for name in SPEC_INTS:
        if type(spec[name]) is not int or not 0 <= spec[name] < 2**63:
            raise JobError(f"spec.{name} must be a non-negative integer below 2^63")
    for name, allowed in (("model", MODELS), ("profile", PROFILES), ("optimizer", OPTIMIZERS),
                          ("metric", METRICS)):
        if spec[name] not in allowed:
            raise JobError(f"spec.{name} must be one of {', '.join(allowed)}")
    check_args(f"spec.model_args of {spec['model']}", spec["model_args"], MODEL_SCHEMAS[spec["model"]], JobError)
    _check_data(spec["data"])
    for name in ("shards", "rounds", "steps", "batch_size"):
        if not 1 <= spec[name] <= LIMITS[name]:
            raise JobError(f"spec.{name} must be between 1 and {LIMITS[name]}")
    if spec["k"] < 1 or spec["steps"] % spec["k"] or spec["steps"] // spec["k"] + 1 > LIMITS["leaves"]:
        raise JobError(f"spec.k must divide steps, with at most {LIMITS['leaves'] - 1} intervals")
    for name in ("commit_blocks", "verify_blocks"):
        if not 1 <= spec[name] <= LIMITS["deadline_blocks"]:
            raise JobError(f"spec.{name} must be between 1 and {LIMITS['deadline_blocks']}")
    if not 0 < spec["lr_ppm"] <= 10_000_000 or spec["holdout_ppm"] >= 1_000_000:
        raise JobError("spec.lr_ppm must be in (0, 10^7] and holdout_ppm below 10^6")


def _check_data(data) -> None:
    """A dataset is an uploaded blob {blob, size} or a built-in generator {generator, args, seed}."""
    if type(data) is dict and set(data) == {"blob", "size"}:
        if type(data["blob"]) is not bytes or len(data["blob"]) != 32:
            raise JobError("spec.data.blob must be a 32-byte hash")
        if type(data["size"]) is not int or not 0 < data["size"] < 2**63:
            raise JobError("spec.data.size must be a positive integer")
        return
    if type(data) is not dict or set(data) != {"generator", "args", "seed"}:
        raise JobError("spec.data must be {blob, size} or {generator, args, seed}")
    if data["generator"] not in GENERATORS:
        raise JobError(f"spec.data.generator must be one of {', '.join(GENERATORS)}")
    check_args(f"spec.data.args of {data['generator']}", data["args"], GENERATOR_SCHEMAS[data["generator"]],
               JobError)
    if type(data["seed"]) is not int or not 0 <= data["seed"] < 2**63:
        raise JobError("spec.data.seed must be an integer in [0, 2^63)")


def budget(spec: dict, params: dict) -> int:
    """Everything the job can ever pay out; escrowed up front, the rest refunded at the end."""
    per_shard = spec["reward_per_shard"] + spec["verification_fee"] * (params["samples_per_shard"] + 1) \
        * params["verifiers_per_shard"]
    return per_shard * spec["shards"] * spec["rounds"]


def pool_fee(cost: int, params: dict) -> int:
    """What a job pays the jackpot pool on top of its budget (never refunded)."""
    return cost * params["pool_fee_ppm"] // 1_000_000


def n_intervals(spec: dict) -> int:
    return spec["steps"] // spec["k"]
