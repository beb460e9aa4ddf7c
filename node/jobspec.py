"""Job spec files (TOML) → the on-chain spec, validated before anything is signed.

A user writes fractions and learning rates as decimals; the chain holds only integers, so
they become parts per million here. Every check the chain makes is made here first (the
structural ones and consensus.runnable's), plus the ones that need an uploaded dataset's arrays.
"""
from __future__ import annotations

import tomllib
from pathlib import Path

from consensus.jobs import JobError, check_spec
from consensus.runnable import check_model, check_runnable, split_error

PPM = 1_000_000
NO_CAP = 2**63  # the network's blob limit, until `job submit` has asked the node for it
TOP_LEVEL = {"model", "data", "training", "payment"}


class SpecError(ValueError):
    pass


def _ppm(value, what: str) -> int:
    if type(value) not in (int, float) or not 0 <= value <= 10:
        raise SpecError(f"{what} must be a number between 0 and 10")
    return round(value * PPM)


def _section(raw: dict, name: str) -> dict:
    section = raw.get(name)
    if not isinstance(section, dict):
        raise SpecError(f"the spec needs a [{name}] table")
    return dict(section)


def _take(section: dict, name: str, kind: type, table: str, default=None):
    value = section.pop(name, default)
    if value is None:
        raise SpecError(f"[{table}] needs {name}")
    if type(value) is not kind:
        raise SpecError(f"[{table}] {name} must be a {kind.__name__}")
    return value


def _no_leftovers(section: dict, table: str) -> None:
    if section:
        raise SpecError(f"[{table}] has unknown keys: {', '.join(sorted(section))}")


def parse(text: str, base_dir: Path) -> tuple[dict, bytes | None]:
    """(chain spec, dataset bytes to upload or None)."""
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise SpecError(f"not valid TOML: {exc}") from None
    unknown = set(raw) - TOP_LEVEL
    if unknown:
        raise SpecError(f"unknown tables: {', '.join(sorted(unknown))}")
    model, data, train, pay = (_section(raw, n) for n in ("model", "data", "training", "payment"))
    model_name = _take(model, "name", str, "model")
    holdout_ppm = _ppm(data.pop("holdout", 0.2), "[data] holdout")
    data_spec, blob = _data(data, base_dir)
    spec = {
        "model": model_name, "model_args": model, "data": data_spec, "holdout_ppm": holdout_ppm,
        "optimizer": _take(train, "optimizer", str, "training", "adam"),
        "lr_ppm": _ppm(_take(train, "lr", float, "training"), "[training] lr"),
        "tolerance_ppm": _ppm(train.pop("tolerance", 0.001), "[training] tolerance"),
        "metric": _take(train, "metric", str, "training", "accuracy"),
    }
    for name in ("batch_size", "shards", "rounds", "steps", "k", "seed"):
        spec[name] = _take(train, name, int, "training", 0 if name == "seed" else None)
    spec["profile"] = _take(train, "profile", str, "training", "cpu-f32-1thread")
    for name in ("reward_per_shard", "verification_fee", "commit_blocks", "verify_blocks"):
        spec[name] = _take(pay, name, int, "payment")
    _no_leftovers(train, "training")
    _no_leftovers(pay, "payment")
    check(spec, blob)
    return spec, blob


def _data(data: dict, base_dir: Path) -> tuple[dict, bytes | None]:
    if "file" in data:
        path = base_dir / _take(data, "file", str, "data")
        _no_leftovers(data, "data")
        try:
            blob = path.read_bytes()
        except OSError as exc:
            raise SpecError(f"cannot read dataset {path}: {exc.strerror}") from None
        from consensus.blobid import blob_id
        return {"blob": blob_id(blob), "size": len(blob)}, blob
    name = _take(data, "generator", str, "data")
    seed = _take(data, "seed", int, "data", 0)
    return {"generator": name, "args": data, "seed": seed}, None


def check(spec: dict, blob: bytes | None, max_blob_bytes: int = NO_CAP) -> None:
    """Everything but the budget: the chain's rules, then an uploaded dataset's arrays (shapes,
    values, enough items for the shards), which only a holder of the blob can check."""
    try:
        check_model(spec["model"], spec["model_args"], JobError)  # first: its messages name the model
        check_spec(spec)
        check_runnable(spec, max_blob_bytes, JobError)
        if blob is not None:
            from verifier import data as vdata
            ds = vdata.load_npz(blob)
            vdata.check_compatible(ds, spec["model"], spec["model_args"])
            broken = split_error(len(ds), spec["holdout_ppm"], spec["shards"])
            if broken:
                raise JobError(broken)
    except (JobError, ValueError) as exc:
        raise SpecError(str(exc)) from None


def check_chain_rules(spec: dict, max_blob_bytes: int) -> None:
    """The chain's runnability rules against a known blob limit (the sizes of an uploaded
    dataset and of every checkpoint): what `job submit` checks once it has the node's params."""
    try:
        check_runnable(spec, max_blob_bytes, JobError)
    except JobError as exc:
        raise SpecError(str(exc)) from None


def load(path: str) -> tuple[dict, bytes | None]:
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as exc:
        raise SpecError(f"cannot read {path}: {exc.strerror}") from None
    return parse(text, p.parent)
