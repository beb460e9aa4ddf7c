"""consensus.runnable: the chain refuses, without torch, exactly the jobs the verifier cannot run.

The oracle is the torch side itself (verifier.models, verifier.data, verifier.training and
verifier.checkpoint as the workers call them): for many random specs that pass the chain's
schema check, the chain's verdict and message must be the verifier's, and the checkpoint size
it computes must be the real encoding's length, byte for byte.
"""
from __future__ import annotations

import dataclasses
import subprocess
import sys
from collections import Counter

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from consensus import runnable
from consensus.jobs import JobError, check_spec
from consensus.registry import MODELS
from consensus.runnable import check_runnable, checkpoint_bytes
from node import jobspec
from node.workers.common import train_spec
from tests.chainfactory import job_spec
from verifier import checkpoint, data, generators, models, training
from verifier.data import DataError
from verifier.models import SpecError
from verifier.work import RoundShard, ShardWork

CAP = 8 * 1024 * 1024  # a small blob cap, to test the size rules against
TEXT_VOCAB = len(generators.ALPHABET)


def chain_reason(spec: dict, cap: int) -> str | None:
    try:
        check_runnable(spec, cap, JobError)
    except JobError as exc:
        return str(exc)
    return None


def real_checkpoint_bytes(spec: dict) -> int:
    """The length of the job's last checkpoint of a round, as the verifier encodes it (with a
    loss: any positive float64's bits take msgpack's full 9 bytes)."""
    state = training.init_state(train_spec(spec))
    return len(checkpoint.encode(dataclasses.replace(state, step=spec["steps"], loss=checkpoint.float_bits(2.5))))


def torch_verdict(spec: dict, cap: int) -> tuple[str, str]:
    """(kind, message) from the torch side, in the order a worker meets the rules."""
    try:
        train_spec(spec)  # the model registry and the training settings (raises SpecError)
        d = spec["data"]
        ds = data.generate(d["generator"], d["args"], d["seed"])
        data.check_compatible(ds, spec["model"], spec["model_args"])
    except (SpecError, DataError) as exc:
        return "refused", str(exc)
    train, _ = data.split_holdout(ds, spec["holdout_ppm"])
    try:
        sizes = [len(data.shard_indices(len(train), spec["shards"], s)) for s in range(spec["shards"])]
    except DataError as exc:
        return "split", str(exc)
    assert min(sizes) >= 1
    size = real_checkpoint_bytes(spec)
    return ("checkpoint", f"{size} bytes") if size > cap else ("accepted", "")


# -- random specs that pass the chain's schema check -------------------------------------------

def often(draw) -> bool:
    """True 4 times in 5: each aspect of a case mostly fits, so that acceptance is tested as
    much as refusal, and each rule is still broken alone often enough."""
    return draw(st.integers(0, 4)) > 0


@st.composite
def model_args(draw, name: str):
    if name == "mlp":
        return {"in_dim": draw(st.integers(1, 6)), "hidden": draw(st.lists(st.integers(1, 12), min_size=1, max_size=2)),
                "out_dim": draw(st.integers(2, 8)), "activation": draw(st.sampled_from(["relu", "tanh"]))}
    if name == "cnn":
        return {"side": draw(st.sampled_from([8, 12] if often(draw) else [4, 6, 8, 10, 12])),
                "channels": draw(st.integers(1, 3)), "out_dim": draw(st.integers(2, 11))}
    d_model = draw(st.integers(8, 24))
    heads = draw(st.sampled_from([h for h in range(1, 6) if d_model % h == 0]) if often(draw) else st.integers(1, 5))
    if name == "gpt":
        return {"context": draw(st.integers(2, 10)), "d_model": d_model, "heads": heads,
                "layers": draw(st.integers(1, 2))}
    return {"vocab": draw(st.integers(28, 30) if often(draw) else st.integers(2, 30)),
            "context": draw(st.integers(2, 10)),
            "d_model": d_model, "heads": heads, "layers": draw(st.integers(1, 2))}


@st.composite
def data_spec(draw, model: str, margs: dict):
    fitting = {"mlp": ["blobs", "spirals"], "cnn": ["digits"], "char_transformer": ["text"], "gpt": ["byte_text"]}[model]
    name = draw(st.sampled_from(fitting if often(draw) else list(generators.GENERATORS)))
    n = draw(st.integers(1, 60))
    classes = draw(st.integers(2, max(2, min(margs.get("out_dim", 10), 10))) if often(draw) else st.integers(2, 10))
    width = margs.get("in_dim", margs.get("context", margs.get("side", 8)))  # the model's, to fit
    if name == "blobs":
        if draw(st.integers(0, 15)) == 0:  # over the generator's value cap
            return {"generator": name, "args": {"n": 1_000_000, "dim": 17, "classes": 2}, "seed": 0}
        args = {"n": n, "dim": min(width, 4096) if often(draw) else draw(st.integers(1, 6)), "classes": classes}
    elif name == "spirals":
        args = {"n": n, "classes": min(classes, 6)}
    elif name == "digits":
        args = {"n": n, "side": max(width, 8) if often(draw) else draw(st.integers(8, 12)), "classes": classes}
    else:
        args = {"n": n, "context": max(width, 2) if often(draw) else draw(st.integers(2, 10))}
    return {"generator": name, "args": args, "seed": draw(st.integers(0, 2**63 - 1))}


@st.composite
def specs(draw):
    model = draw(st.sampled_from(MODELS))
    margs = draw(model_args(model))
    steps = draw(st.sampled_from([1, 8, 127, 128, 255, 256, 1000, 65_535, 65_536, 100_000]))
    k = steps // draw(st.sampled_from([d for d in (1, 2, 4, 8) if steps % d == 0]))
    spec = job_spec(model=model, model_args=margs, data=draw(data_spec(model, margs)), steps=steps, k=k,
                    optimizer=draw(st.sampled_from(["sgd", "momentum", "adam"])),
                    profile=draw(st.sampled_from(["cpu-f32-1thread", "cpu-f64", "tolerance"])),
                    shards=draw(st.integers(1, 3) if often(draw) else st.integers(1, 16)),
                    batch_size=draw(st.integers(1, 64)),
                    holdout_ppm=draw(st.sampled_from([0, 200_000, 500_000, 900_000, 999_999])),
                    tolerance_ppm=1_000 if often(draw) else draw(st.sampled_from([0, 2**40, 2**40 + 1])))
    check_spec(spec)  # every case is one the schema check alone lets through
    return spec


def _known_conservative(spec: dict, reason: str | None) -> bool:
    """The one place the chain is stricter than a sample: text tokens are bounded by the
    alphabet, while a small sample may happen not to use its last letters."""
    return (reason is not None and "token ids" in reason and spec["data"]["generator"] == "text"
            and spec["model_args"]["vocab"] < TEXT_VOCAB)


RULES = {"heads": "divisible by heads", "side": "multiple of 4",
         "values": "values is more than the cap", "x shape": "needs x of shape", "y shape": "needs y of shape",
         "tokens": "token ids", "labels": "integer labels", "tolerance": "tolerance_ppm"}


def test_the_chain_accepts_exactly_the_jobs_the_verifier_can_run():
    seen: Counter[str] = Counter()

    @settings(max_examples=400, deadline=None, derandomize=True, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(spec=specs(), slack=st.sampled_from([-2, -1, 0, 1, 10**8]))
    def check(spec, slack):
        try:
            real = real_checkpoint_bytes(spec)
        except SpecError:
            real = None  # the model itself is refused; the cap does not matter
        else:
            assert checkpoint_bytes(spec) == real  # exact, and independent of the data
        cap = max(real + slack, 1) if real is not None else 10**8
        kind, message = torch_verdict(spec, cap)
        reason = chain_reason(spec, cap)
        if _known_conservative(spec, reason) and message != reason:  # the sample passed the token check
            seen["conservative"] += 1
            return
        seen[kind] += 1
        seen.update(rule for rule, words in RULES.items() if words in message)
        if kind == "accepted":
            assert reason is None, (spec, reason)
        elif kind == "refused":
            assert reason == message  # the same rule, the same words
        elif kind == "split":
            assert reason is not None and "too few for" in reason and f"{spec['shards']} shards" in reason
        else:
            assert reason == f"a checkpoint of this model is {real} bytes, over the blob limit of {cap}"

    check()
    assert seen["accepted"] >= 30 and seen["split"] >= 5 and seen["checkpoint"] >= 5, seen
    assert all(seen[rule] for rule in RULES), seen  # every rule was met on both sides


@settings(max_examples=150, deadline=None, derandomize=True, database=None)
@given(data=st.data())
def test_parameter_names_and_shapes_are_the_torch_models(data):
    """Over the whole schema (built on the meta device, so even the largest cost nothing)."""
    name = data.draw(st.sampled_from(MODELS))
    if name == "mlp":
        args = {"in_dim": data.draw(st.integers(1, 65_536)), "out_dim": data.draw(st.integers(2, 1000)),
                "hidden": data.draw(st.lists(st.integers(1, 8192), min_size=1, max_size=8))}
    elif name == "cnn":
        args = {"side": 4 * data.draw(st.integers(1, 16)), "channels": data.draw(st.integers(1, 64)),
                "out_dim": data.draw(st.integers(2, 1000))}
    else:
        heads = data.draw(st.integers(1, 16))
        args = {"vocab": data.draw(st.integers(2, 256)), "context": data.draw(st.integers(2, 512)),
                "d_model": heads * data.draw(st.integers(max(1, -(-8 // heads)), 1024 // heads)),
                "heads": heads, "layers": data.draw(st.integers(1, 12))}
        if name == "gpt":
            del args["vocab"]
            args["layers"] = data.draw(st.integers(1, 24))
    norm = models.normalise_args(name, args)
    want = [(n, tuple(p.shape)) for n, p in models.empty_model(name, args).named_parameters()]
    assert runnable.MODEL_FACTS[name].params(norm) == want
    assert runnable.param_count(name, norm) == sum(p.numel() for p in models.empty_model(name, args).parameters())


@settings(max_examples=60, deadline=None, derandomize=True, database=None)
@given(name=st.sampled_from(list(generators.GENERATORS)), n=st.integers(1, 30), size=st.integers(2, 12),
       classes=st.integers(2, 6), seed=st.integers(0, 2**63 - 1))
def test_generator_items_are_what_the_generators_make(name, n, size, classes, seed):
    args = {"blobs": {"n": n, "dim": size, "classes": classes}, "spirals": {"n": n, "classes": classes},
            "digits": {"n": n, "side": max(size, 8), "classes": classes}, "text": {"n": n, "context": size},
            "byte_text": {"n": n, "context": size}}[name]
    got = data.items_of(data.generate(name, args, seed))
    want = runnable.generator_items(name, args)
    assert (got.n, got.x_shape, got.y_shape, got.x_range is None) == (want.n, want.x_shape, want.y_shape,
                                                                       want.x_range is None)
    if name in ("text", "byte_text"):  # bounds: every token id is a position in the alphabet, or a byte
        for span in (got.x_range, got.y_range):
            assert want.x_range[0] <= span[0] <= span[1] <= want.x_range[1]
    else:  # labels are dealt round-robin, so the highest one is exact
        assert got.y_range == want.y_range


def test_the_registries_are_the_same_on_both_sides():
    assert tuple(runnable.MODEL_FACTS) == tuple(models.REGISTRY) == MODELS
    assert tuple(runnable.GENERATOR_ITEMS) == tuple(generators.GENERATORS)


def test_consensus_needs_neither_torch_nor_numpy():
    code = "import sys, consensus.runnable; print(sorted({'torch', 'numpy'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    assert out.stdout.strip() == "[]"


# -- checkpoint sizes ----------------------------------------------------------------------------

def test_checkpoint_bytes_is_the_length_of_every_leaf_a_solver_makes():
    """A real round: leaf 0 is the start (step 0, loss 0); the last, at step 130, is the largest,
    because msgpack writes 130 in one byte more than 0, and a loss's bits in 8 more than 0."""
    spec = job_spec(optimizer="adam", steps=130, k=65, shards=1, holdout_ppm=0)
    ts = train_spec(spec)
    d = spec["data"]
    ds = data.generate(d["generator"], d["args"], d["seed"])
    work = ShardWork(ts, ds, RoundShard(b"\x01" * 32, 0, 0, 1))
    leaves = training.train_shard(work, training.init_state(ts))
    assert len(leaves[-1]) == checkpoint_bytes(spec) == len(leaves[0]) + 1 + 8
    assert all(len(leaf) <= checkpoint_bytes(spec) for leaf in leaves)


def test_gpt2_small_fits_the_default_blob_cap_and_a_model_past_it_is_refused():
    """No ceiling below the genesis blob cap: GPT-2 small's shape (on bytes) with Adam in float32
    is a 1 GB checkpoint and is accepted; the largest gpt in float64 is refused by size alone."""
    from consensus.genesis import DEFAULT_PARAMS
    cap = DEFAULT_PARAMS["max_blob_bytes"]
    small = {"context": 1024, "d_model": 768, "heads": 12, "layers": 12}
    assert 85_000_000 < runnable.param_count("gpt", runnable.check_model("gpt", small, ValueError)) < 90_000_000
    spec = job_spec(model="gpt", model_args=small, optimizer="adam", data={"blob": b"\x00" * 32, "size": 1 << 20})
    check_runnable(spec, cap, JobError)
    assert 1.0e9 < checkpoint_bytes(spec) < 1.1e9
    huge = job_spec(model="gpt", model_args={"context": 1024, "d_model": 1024, "heads": 16, "layers": 24},
                    optimizer="adam", profile="cpu-f64", data={"blob": b"\x00" * 32, "size": 1 << 20})
    with pytest.raises(JobError, match="over the blob limit"):
        check_runnable(huge, cap, JobError)


# -- named refusals --------------------------------------------------------------------------------

TEXT_JOB = dict(model="char_transformer",
                model_args={"vocab": 28, "context": 8, "d_model": 16, "heads": 2, "layers": 1},
                data={"generator": "text", "args": {"n": 50, "context": 8}, "seed": 1})
BLOBS = {"generator": "blobs", "args": {"n": 900, "dim": 2, "classes": 3}, "seed": 3}


@pytest.mark.parametrize("overrides, message", [
    (dict(TEXT_JOB, model_args=dict(TEXT_JOB["model_args"], heads=3)),
     "model char_transformer: d_model must be divisible by heads"),
    (dict(model_args={"in_dim": 5, "hidden": [8], "out_dim": 3}, data=BLOBS),
     "model mlp needs x of shape ('n', 5), got (900, 2)"),
    (dict(data=dict(BLOBS, args={"n": 10, "dim": 2, "classes": 3}), holdout_ppm=500_000, shards=8),
     "the dataset's 10 items leave 5 for training after holding out 5: too few for 8 shards (each needs at least one)"),
    (dict(model_args={"in_dim": 2, "hidden": [1024, 1024], "out_dim": 3}, optimizer="adam"),
     "a checkpoint of this model is {real} bytes, over the blob limit of 8388608"),
    (dict(data={"blob": b"\x00" * 32, "size": CAP + 1}), f"dataset of {CAP + 1} bytes exceeds the limit of {CAP}"),
    (dict(model="cnn", model_args={"side": 10, "channels": 2, "out_dim": 10}),
     "model cnn: side must be a multiple of 4"),
    (dict(model_args={"in_dim": 2, "hidden": [8], "out_dim": 3},
          data=dict(BLOBS, args={"n": 90, "dim": 2, "classes": 5})),
     "model mlp needs y to hold integer labels in [0, 3)"),
    (dict(TEXT_JOB, model_args=dict(TEXT_JOB["model_args"], vocab=20)),
     "model char_transformer needs x to hold integer token ids in [0, 20)"),
    (dict(TEXT_JOB, data=dict(TEXT_JOB["data"], args={"n": 50, "context": 9})),
     "model char_transformer needs x of shape ('n', 8), got (50, 9)"),
    (dict(data=dict(BLOBS, args={"n": 1_000_000, "dim": 17, "classes": 3})),
     "generator blobs: 17,000,000 values is more than the cap of 16,000,000"),
    (dict(tolerance_ppm=2**40 + 1), f"tolerance_ppm must be an integer in [0, {2**40}], got {2**40 + 1}"),
])
def test_unrunnable_jobs_are_refused_with_one_clear_line(overrides, message):
    spec = job_spec(**overrides)
    check_spec(spec)  # the schema alone would let each of these through
    with pytest.raises(JobError) as err:
        check_runnable(spec, CAP, JobError)
    assert str(err.value) == message.replace("{real}", str(real_checkpoint_bytes(spec) if "{real}" in message else ""))
    with pytest.raises(KeyError):  # the error type is the caller's
        check_runnable(spec, CAP, KeyError)


def test_a_checkpoint_exactly_at_the_cap_is_accepted_and_one_byte_over_is_not():
    spec = job_spec(model_args={"in_dim": 2, "hidden": [1024, 1024], "out_dim": 3}, optimizer="sgd")
    size = checkpoint_bytes(spec)
    assert chain_reason(spec, size) is None
    assert chain_reason(spec, size - 1) == \
        f"a checkpoint of this model is {size} bytes, over the blob limit of {size - 1}"
    blob = job_spec(data={"blob": b"\x00" * 32, "size": 4096})
    assert chain_reason(blob, 10**9) is None  # a blob's contents are checked by those who hold it
    huge = job_spec(data={"blob": b"\x00" * 32, "size": 2**33 + 1})  # the blob cap is the dataset's only cap
    assert chain_reason(huge, 2**33 + 1) is None
    assert chain_reason(huge, 2**33) == f"dataset of {2**33 + 1} bytes exceeds the limit of {2**33}"


@pytest.mark.parametrize("spec", [None, [], {}, job_spec(shards="2"), job_spec(data={"generator": "mnist"}),
                                  job_spec(model="resnet"), job_spec(optimizer=None), job_spec(holdout_ppm=10**6),
                                  job_spec(model_args=[1, 2])])
def test_a_malformed_spec_is_refused_not_crashed_on(spec):
    with pytest.raises(JobError):
        check_runnable(spec, CAP, JobError)


# -- the CLI applies the same rule, and checks an uploaded dataset's arrays ----------------------

TOML = """
[model]
name = "mlp"
in_dim = 2
hidden = [8]
out_dim = 3
[data]
{data}
holdout = 0.5
[training]
lr = 0.01
batch_size = 8
shards = 4
rounds = 1
steps = 10
k = 5
[payment]
reward_per_shard = 10
verification_fee = 1
commit_blocks = 10
verify_blocks = 5
"""


def test_the_cli_refuses_with_the_chains_words(tmp_path):
    text = TOML.format(data='generator = "blobs"\nn = 6\ndim = 2\nclasses = 3')
    spec = job_spec(model_args={"in_dim": 2, "hidden": [8], "out_dim": 3}, holdout_ppm=500_000, shards=4,
                    data={"generator": "blobs", "args": {"n": 6, "dim": 2, "classes": 3}, "seed": 0})
    with pytest.raises(jobspec.SpecError) as err:
        jobspec.parse(text, tmp_path)
    assert str(err.value) == chain_reason(spec, CAP) and "too few for 4 shards" in str(err.value)
    spec, blob = jobspec.parse(text.replace("n = 6", "n = 8"), tmp_path)
    assert blob is None and chain_reason(spec, CAP) is None
    with pytest.raises(jobspec.SpecError, match="over the blob limit of 100"):
        jobspec.check_chain_rules(spec, 100)


def test_the_cli_checks_an_uploaded_datasets_items(tmp_path):
    import numpy as np
    text = TOML.format(data='file = "d.npz"')
    for n, dim, fragment in ((6, 2, "too few for 4 shards"), (40, 3, "needs x of shape ('n', 2), got (40, 3)")):
        np.savez(tmp_path / "d.npz", x=np.zeros((n, dim), np.float32), y=np.arange(n) % 3)
        with pytest.raises(jobspec.SpecError, match=fragment.replace("(", r"\(").replace(")", r"\)")):
            jobspec.parse(text, tmp_path)
    np.savez(tmp_path / "d.npz", x=np.zeros((8, 2), np.float32), y=np.arange(8) % 3)
    spec, blob = jobspec.parse(text, tmp_path)
    assert spec["data"]["size"] == len(blob)


def test_the_chain_sizes_checkpoints_of_the_format_the_verifier_writes():
    from verifier import checkpoint
    assert runnable.CHECKPOINT_FORMAT == checkpoint.FORMAT
