"""Built-in model architectures. Submitters pick one and its arguments; no submitted code runs.

Every argument is an integer (or a list of integers) with bounds, checked before anything
is built, and every model is initialised from a seed alone, so the round-0 state of a job
is the same on every machine.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn


class SpecError(ValueError):
    """A model name or argument the registry does not accept."""


@dataclass(frozen=True)
class ModelSpec:
    args: dict[str, tuple[int, int]]  # name -> (min, max); "hidden" may also be a list
    build: Callable[[dict], nn.Module]
    doc: str


class MLP(nn.Module):
    def __init__(self, in_dim: int, hidden: list[int], out_dim: int):
        super().__init__()
        dims = [in_dim, *hidden]
        layers: list[nn.Module] = []
        for a, b in zip(dims, dims[1:]):
            layers += [nn.Linear(a, b), nn.ReLU()]
        layers.append(nn.Linear(dims[-1], out_dim))
        self.net = nn.Sequential(*layers)

    def forward(self, x):
        return self.net(x)


class CNN(nn.Module):
    def __init__(self, side: int, channels: int, out_dim: int):
        super().__init__()
        self.side = side
        self.features = nn.Sequential(
            nn.Conv2d(1, channels, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(channels, 2 * channels, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2))
        self.head = nn.Linear(2 * channels * (side // 4) ** 2, out_dim)

    def forward(self, x):
        x = x.reshape(-1, 1, self.side, self.side)
        return self.head(self.features(x).flatten(1))


class CharTransformer(nn.Module):
    """A tiny causal transformer for next-character prediction."""

    def __init__(self, vocab: int, context: int, d_model: int, heads: int, layers: int):
        super().__init__()
        self.embed = nn.Embedding(vocab, d_model)
        self.pos = nn.Embedding(context, d_model)
        layer = nn.TransformerEncoderLayer(d_model, heads, 4 * d_model, dropout=0.0, batch_first=True)
        self.blocks = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.out = nn.Linear(d_model, vocab)
        self.register_buffer("mask", nn.Transformer.generate_square_subsequent_mask(context), persistent=False)

    def forward(self, x):
        t = x.shape[1]
        h = self.embed(x) + self.pos(torch.arange(t, device=x.device))
        h = self.blocks(h, mask=self.mask[:t, :t].to(h.dtype), is_causal=True)
        return self.out(h)


def _mlp(a: dict) -> nn.Module:
    hidden = a["hidden"] if isinstance(a["hidden"], list) else [a["hidden"]]
    return MLP(a["in_dim"], hidden, a["out_dim"])


REGISTRY: dict[str, ModelSpec] = {
    "mlp": ModelSpec({"in_dim": (1, 4096), "hidden": (1, 4096), "out_dim": (2, 1000)}, _mlp,
                     "fully connected classifier; hidden is a width or a list of widths (up to 8 layers)"),
    "cnn": ModelSpec({"side": (4, 64), "channels": (1, 64), "out_dim": (2, 1000)},
                     lambda a: CNN(a["side"], a["channels"], a["out_dim"]),
                     "two conv layers for 1-channel square images of side `side` (a multiple of 4)"),
    "char_transformer": ModelSpec(
        {"vocab": (2, 256), "context": (2, 256), "d_model": (8, 512), "heads": (1, 16), "layers": (1, 8)},
        lambda a: CharTransformer(a["vocab"], a["context"], a["d_model"], a["heads"], a["layers"]),
        "causal character model; d_model must be a multiple of heads"),
}


def validate_model(name: str, args: dict) -> None:
    if name not in REGISTRY:
        raise SpecError(f"unknown model {name!r}: choose one of {', '.join(sorted(REGISTRY))}")
    spec = REGISTRY[name]
    if not isinstance(args, dict) or set(args) != set(spec.args):
        raise SpecError(f"model {name} takes exactly the arguments: {', '.join(sorted(spec.args))}")
    for arg, (lo, hi) in spec.args.items():
        values = args[arg] if arg == "hidden" and isinstance(args[arg], list) else [args[arg]]
        if arg == "hidden" and not 1 <= len(values) <= 8:
            raise SpecError("model mlp: hidden takes 1 to 8 layer widths")
        for value in values:
            if type(value) is not int or not lo <= value <= hi:
                raise SpecError(f"model {name}: {arg} must be an integer from {lo} to {hi}")
    if name == "cnn" and args["side"] % 4:
        raise SpecError("model cnn: side must be a multiple of 4")
    if name == "char_transformer" and args["d_model"] % args["heads"]:
        raise SpecError("model char_transformer: d_model must be a multiple of heads")


def build_model(name: str, args: dict, seed: int, dtype: torch.dtype = torch.float32) -> nn.Module:
    """The model with parameters drawn from `seed` only (the global RNG is left untouched)."""
    validate_model(name, args)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = REGISTRY[name].build(args)
    return model.to(dtype)


def is_sequence_model(name: str) -> bool:
    return name == "char_transformer"
