"""Tiny training jobs shared by the verifier tests: model and generator arguments, and jobs
small enough (a few dozen steps of models with a few thousand parameters) that a shard trains in
milliseconds on two cores.
"""
from __future__ import annotations

from consensus import merkle
from verifier import checkpoint, data, generators, training
from verifier.data import Dataset
from verifier.training import TrainSpec
from verifier.work import RoundShard, ShardWork

JOB = b"\x07" * 32

MLP = {"in_dim": 8, "hidden": [16], "out_dim": 3}
CNN = {"side": 8, "channels": 2, "out_dim": 10}
TRANSFORMER = {"vocab": len(generators.ALPHABET), "context": 8, "d_model": 16, "heads": 2, "layers": 1}

GEN_ARGS = {
    "blobs": {"n": 200, "dim": 4, "classes": 3},
    "spirals": {"n": 200, "classes": 3},
    "digits": {"n": 50, "side": 8, "classes": 10},
    "text": {"n": 50, "context": 8},
}

# (model, args, generator, generator args): small enough that a shard trains in milliseconds
JOBS = {
    "mlp": ("mlp", {"in_dim": 4, "hidden": [16, 16], "out_dim": 3}, "blobs", {"n": 300, "dim": 4, "classes": 3}),
    "cnn": ("cnn", CNN, "digits", GEN_ARGS["digits"] | {"n": 200}),
    "char_transformer": ("char_transformer", TRANSFORMER, "text", {"n": 200, "context": 8}),
}


def tiny(kind: str, profile: str = "cpu-f32-1thread", optimizer: str = "adam", steps: int = 12,
         k: int = 3, lr_ppm: int = 10_000, batch: int = 8) -> tuple[TrainSpec, Dataset]:
    model, args, gen, gargs = JOBS[kind]
    spec = TrainSpec(model, args, optimizer, lr_ppm, batch, steps, k, profile, seed=3)
    return spec, data.generate(gen, gargs, 5)


def work(spec: TrainSpec, ds: Dataset, shard: int = 1, shards: int = 2, round_: int = 0) -> ShardWork:
    """Shard `shard` of `shards` of round `round_` of the tiny job JOB, on the CPU."""
    return ShardWork(spec, ds, RoundShard(JOB, round_, shard, shards))


def shard_root(kind: str, profile: str) -> tuple[list[bytes], bytes]:
    """Leaf hashes and Merkle root of shard 1 of 2, round 0, of a tiny job (also run in a subprocess)."""
    spec, ds = tiny(kind, profile)
    leaves = training.train_shard(work(spec, ds), training.init_state(spec))
    hashes = [checkpoint.checkpoint_hash(leaf) for leaf in leaves]
    return hashes, merkle.root(hashes)


EXACT_CASES = [(kind, profile) for kind in JOBS for profile in training.EXACT_PROFILES]
