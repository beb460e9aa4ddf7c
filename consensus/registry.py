"""The argument schemas of the built-in models and dataset generators, shared by chain and workers.

A job spec is recorded on chain, so the chain must know exactly which arguments each model
and generator takes and what types and ranges they have: a submitter chooses from this
registry and nothing else rides in a spec. The torch side (verifier/models.py,
verifier/generators.py) builds from the same schemas, so the two can never disagree.
"""
from __future__ import annotations

from .args import Arg, Choice, Int, IntList

MODEL_SCHEMAS: dict[str, dict[str, Arg]] = {
    "mlp": {"in_dim": Int(1, 65_536), "hidden": IntList(1, 8192, 8), "out_dim": Int(2, 1000),
            "activation": Choice(("relu", "tanh"), default="relu")},
    "cnn": {"side": Int(4, 64), "channels": Int(1, 64), "out_dim": Int(2, 1000)},
    "char_transformer": {"vocab": Int(2, 256), "context": Int(2, 512), "d_model": Int(8, 1024),
                         "heads": Int(1, 16), "layers": Int(1, 12)},
    # Decoder-only, GPT-2 style (GELU), on bytes: vocab 256. GPT-2 small is d_model 768,
    # heads 12, layers 12 (86M parameters with a byte vocab; 124M at 17 layers).
    "gpt": {"context": Int(2, 1024), "d_model": Int(8, 1024), "heads": Int(1, 16), "layers": Int(1, 24)},
}

GENERATOR_SCHEMAS: dict[str, dict[str, Arg]] = {
    "blobs": {"n": Int(1, 1_000_000), "dim": Int(1, 4096), "classes": Int(2, 100)},
    "spirals": {"n": Int(1, 1_000_000), "classes": Int(2, 6)},
    "digits": {"n": Int(1, 200_000), "side": Int(8, 32), "classes": Int(2, 10)},
    "text": {"n": Int(1, 200_000), "context": Int(2, 512)},
    "byte_text": {"n": Int(1, 1_000_000), "context": Int(2, 1024)},
}

MODELS = tuple(MODEL_SCHEMAS)
GENERATORS = tuple(GENERATOR_SCHEMAS)
