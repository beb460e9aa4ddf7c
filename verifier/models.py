"""The registry of built-in architectures: the only models a job can train.

No submitter code is ever executed, so a job names a model from this registry and gives it
a few integer or string arguments, all checked against a schema with bounds. Parameters are
initialised from the job seed with a local generator, one derived seed per parameter name,
using only uniform draws and exact arithmetic: the same (name, args, seed) gives the same
bits on any machine, and nothing touches torch's global RNG.
"""
from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn
from torch.nn import functional as F

from consensus import runnable
from consensus.args import Arg
from consensus.registry import MODEL_SCHEMAS
from consensus.runnable import InputSpec

MAX_PARAMS = runnable.MAX_PARAMS
EMBED_BOUND = 0.035  # uniform bound for embeddings: a standard deviation of about 0.02


class SpecError(ValueError):
    """A model name or argument that the registry does not accept."""


# -- the architectures ---------------------------------------------------------------------


class MLP(nn.Module):
    """Fully connected classifier: Linear layers with an activation between them."""

    def __init__(self, in_dim: int, hidden: list[int], out_dim: int, activation: str):
        super().__init__()
        dims = [in_dim, *hidden, out_dim]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims, dims[1:]))
        self.act = torch.relu if activation == "relu" else torch.tanh

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers[:-1]:
            x = self.act(layer(x))
        return self.layers[-1](x)


class CNN(nn.Module):
    """Two 3x3 conv + 2x2 max-pool stages and a linear head, for 1-channel square images."""

    def __init__(self, side: int, channels: int, out_dim: int):
        super().__init__()
        self.side = side
        self.conv1 = nn.Conv2d(1, channels, 3, padding=1)
        self.conv2 = nn.Conv2d(channels, 2 * channels, 3, padding=1)
        self.head = nn.Linear(2 * channels * (side // 4) ** 2, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.reshape(-1, 1, self.side, self.side)  # items may come as (side, side) or (1, side, side)
        x = F.max_pool2d(torch.relu(self.conv1(x)), 2)
        x = F.max_pool2d(torch.relu(self.conv2(x)), 2)
        return self.head(x.flatten(1))


class Block(nn.Module):
    """Pre-norm transformer block; attention written out so every op is plain and visible."""

    def __init__(self, d_model: int, heads: int, activation: Callable = torch.relu):
        super().__init__()
        self.heads, self.activation = heads, activation
        self.ln1 = nn.LayerNorm(d_model)
        # No bias: softmax ignores a bias shared by all keys, so its gradient is pure float noise,
        # which Adam would turn into real updates that differ between honest runs.
        self.qkv = nn.Linear(d_model, 3 * d_model, bias=False)
        self.proj = nn.Linear(d_model, d_model)
        self.ln2 = nn.LayerNorm(d_model)
        self.fc1 = nn.Linear(d_model, 4 * d_model)
        self.fc2 = nn.Linear(4 * d_model, d_model)

    def forward(self, x: torch.Tensor, future: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = (z.view(b, t, self.heads, d // self.heads).transpose(1, 2)
                   for z in self.qkv(self.ln1(x)).split(d, dim=2))
        scores = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(d // self.heads))
        att = scores.masked_fill(future, float("-inf")).softmax(dim=-1)
        x = x + self.proj((att @ v).transpose(1, 2).reshape(b, t, d))
        return x + self.fc2(self.activation(self.fc1(self.ln2(x))))


class CharTransformer(nn.Module):
    """Tiny causal character model: logits for the next token at every position."""

    def __init__(self, vocab: int, context: int, d_model: int, heads: int, layers: int,
                 activation: Callable = torch.relu):
        super().__init__()
        self.tok = nn.Embedding(vocab, d_model)
        self.pos = nn.Embedding(context, d_model)
        self.blocks = nn.ModuleList(Block(d_model, heads, activation) for _ in range(layers))
        self.ln_f = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, vocab)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        t = idx.shape[1]
        x = self.tok(idx) + self.pos.weight[:t]
        future = torch.ones(t, t, dtype=torch.bool, device=idx.device).triu(1)
        for block in self.blocks:
            x = block(x, future)
        return self.head(self.ln_f(x))


# -- the registry ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Arch:
    schema: dict[str, Arg]
    make: Callable[[dict], nn.Module]


# Input shapes, parameter shapes and cross-argument rules are consensus.runnable's, which the
# chain applies to every job without torch; `make` must build exactly the parameters it lists.
REGISTRY: dict[str, Arch] = {
    "mlp": Arch(MODEL_SCHEMAS["mlp"], lambda a: MLP(a["in_dim"], a["hidden"], a["out_dim"], a["activation"])),
    "cnn": Arch(MODEL_SCHEMAS["cnn"], lambda a: CNN(a["side"], a["channels"], a["out_dim"])),
    "char_transformer": Arch(MODEL_SCHEMAS["char_transformer"], lambda a: CharTransformer(
        a["vocab"], a["context"], a["d_model"], a["heads"], a["layers"])),
    # The same architecture at GPT-2 sizes on bytes, with GPT-2's GELU (exact, erf).
    "gpt": Arch(MODEL_SCHEMAS["gpt"], lambda a: CharTransformer(
        runnable.BYTE_VOCAB, a["context"], a["d_model"], a["heads"], a["layers"], F.gelu)),
}


def normalise_args(name: str, args: dict) -> dict:
    """Checked arguments with defaults filled in; raises SpecError."""
    return runnable.normalise_model(name, args, SpecError)


def _skeleton(name: str, norm: dict) -> nn.Module:
    # Built on the meta device: no memory, no init work, and no draw from the global RNG.
    with torch.device("meta"):
        return REGISTRY[name].make(norm)


def validate_model(name: str, args: dict) -> None:
    """Raise SpecError unless (name, args) is a registry model within the size cap."""
    runnable.check_model(name, args, SpecError)


def model_input_spec(name: str, args: dict) -> InputSpec:
    """Shapes and value ranges a dataset needs for this model (used to validate datasets)."""
    return runnable.model_inputs(name, normalise_args(name, args))


# -- building and initialising ---------------------------------------------------------------


def _param_seed(seed: int, name: str) -> int:
    # One seed per parameter name: adding a layer never shifts another layer's initial values.
    return int.from_bytes(hashlib.sha256(f"stepchain/init/{seed}/{name}".encode()).digest()[:8], "big")


def _uniform(shape: torch.Size, bound: float, seed: int, dtype: torch.dtype) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    u = torch.rand(shape, generator=g, dtype=torch.float64)  # 53 random bits each: exact
    return ((u * 2.0 - 1.0) * bound).to(dtype)


def _initial_value(module: nn.Module, pname: str, shape: torch.Size, seed: int, dtype: torch.dtype) -> torch.Tensor:
    """LeCun-uniform weights, zero biases, unit LayerNorm scales, small uniform embeddings."""
    if isinstance(module, nn.LayerNorm) and pname == "weight":
        return torch.ones(shape, dtype=dtype)
    if pname == "bias":
        return torch.zeros(shape, dtype=dtype)
    if isinstance(module, nn.Embedding):
        return _uniform(shape, EMBED_BOUND, seed, dtype)
    fan_in = math.prod(shape[1:])
    return _uniform(shape, math.sqrt(3.0 / fan_in), seed, dtype)


def initial_params(name: str, args: dict, seed: int, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """The round-0 parameters of a model, by parameter name, on the CPU."""
    validate_model(name, args)
    skeleton = _skeleton(name, normalise_args(name, args))
    out = {}
    for mod_name, module in skeleton.named_modules():
        for pname, p in module.named_parameters(recurse=False):
            full = f"{mod_name}.{pname}" if mod_name else pname
            out[full] = _initial_value(module, pname, p.shape, _param_seed(seed, full), dtype)
    return out


def empty_model(name: str, args: dict) -> nn.Module:
    """A model with no parameter storage yet: load a checkpoint into it with `load_params`."""
    return _skeleton(name, normalise_args(name, args))


def load_params(model: nn.Module, params: dict[str, torch.Tensor]) -> nn.Module:
    """Make `params` the model's parameters (no copy); raise SpecError if names or shapes differ."""
    own = dict(model.named_parameters())
    if set(own) != set(params):
        missing, extra = sorted(set(own) - set(params)), sorted(set(params) - set(own))
        raise SpecError(f"parameters do not match the model (missing {missing[:3]}, unexpected {extra[:3]})")
    for name, p in own.items():
        if tuple(p.shape) != tuple(params[name].shape):
            raise SpecError(f"parameter {name} has shape {tuple(params[name].shape)}, the model needs {tuple(p.shape)}")
    model.load_state_dict(params, strict=True, assign=True)
    return model


def build_model(name: str, args: dict, seed: int, dtype: torch.dtype = torch.float32) -> nn.Module:
    """A registry model on the CPU, deterministically initialised from `seed`."""
    if type(seed) is not int or not 0 <= seed < 2**63:
        raise SpecError(f"seed must be an integer in [0, 2^63), got {seed!r}")
    return load_params(empty_model(name, args), initial_params(name, args, seed, dtype))
