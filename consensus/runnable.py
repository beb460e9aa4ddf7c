"""Whether a job can run at all, decided without torch: the chain refuses a job nobody can train.

`jobs.check_spec` checks each argument against its schema; that alone lets through a job whose
model cannot be built (heads not dividing d_model), whose data does not fit the model (an MLP's
in_dim against the generator's dim), whose shards would be empty after the holdout split, or
whose checkpoints exceed the blob limit. Such a job would leave every assigned solver to miss
its deadline (and be slashed) and its submitter to cancel for a refund. So the chain applies
these rules at submission, and the verifier applies the same functions when it builds models
and datasets: one source of truth, and nothing here imports torch or numpy.

What the rules know about the torch side (each model's parameter shapes, each generator's item
shapes and value ranges, the checkpoint codec's framing) is pinned against the real thing by
tests/test_runnable.py.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

from .args import check_args
from .registry import GENERATOR_SCHEMAS, MODEL_SCHEMAS

MAX_PARAMS = 1 << 32  # a bound for arithmetic only: the blob cap on a checkpoint is what binds
BYTE_VOCAB = 256  # the gpt model reads bytes
MAX_VALUES = 16_000_000  # elements of a generator's x, so a tiny job spec cannot ask for gigabytes
MAX_NPZ_BYTES = 1 << 40  # no ceiling of its own: a dataset blob is bounded by the genesis blob cap
MAX_TOLERANCE_PPM = 1 << 40
PPM = 1_000_000
TEXT_ALPHABET = " .abcdefghijklmnopqrstuvwxyz"  # the text generator's tokens are positions in it
CHECKPOINT_FORMAT = 2
RNG_BYTES = 32
OPTIMIZER_SLOTS = {"sgd": (), "momentum": ("momentum",), "adam": ("m", "v")}
ADAM_POWERS = ("beta1_power", "beta2_power")  # float64 scalars beside Adam's per-parameter slots

Shape = tuple[int, ...]


@dataclass(frozen=True)
class InputSpec:
    """What a dataset must look like for a model (shapes are per item, without the batch)."""
    x_shapes: tuple[Shape, ...]  # accepted item shapes of x
    x_vocab: int | None  # tokens: x holds integer ids below this; None: x holds numbers
    y_shape: Shape
    classes: int  # y holds integer labels in [0, classes)


@dataclass(frozen=True)
class Items:
    """What a dataset holds: its length, per-item shapes, and for integer arrays the (lowest,
    highest) value, or bounds on them; None where the array does not hold integers."""
    n: int
    x_shape: Shape
    x_range: tuple[int, int] | None
    y_shape: Shape
    y_range: tuple[int, int] | None


# -- models ----------------------------------------------------------------------------------

ParamList = list[tuple[str, Shape]]


def _linear(prefix: str, fan_in: int, fan_out: int, bias: bool = True) -> ParamList:
    weight = [(f"{prefix}.weight", (fan_out, fan_in))]
    return weight + [(f"{prefix}.bias", (fan_out,))] if bias else weight


def _layer_norm(prefix: str, d: int) -> ParamList:
    return [(f"{prefix}.weight", (d,)), (f"{prefix}.bias", (d,))]


def _mlp_params(a: dict) -> ParamList:
    dims = [a["in_dim"], *a["hidden"], a["out_dim"]]
    return [p for i, (fan_in, fan_out) in enumerate(zip(dims, dims[1:]))
            for p in _linear(f"layers.{i}", fan_in, fan_out)]


def _cnn_params(a: dict) -> ParamList:
    c = a["channels"]
    return [("conv1.weight", (c, 1, 3, 3)), ("conv1.bias", (c,)),
            ("conv2.weight", (2 * c, c, 3, 3)), ("conv2.bias", (2 * c,)),
            *_linear("head", 2 * c * (a["side"] // 4) ** 2, a["out_dim"])]


def _transformer_params(a: dict) -> ParamList:
    d = a["d_model"]
    out = [("tok.weight", (a["vocab"], d)), ("pos.weight", (a["context"], d))]
    for i in range(a["layers"]):
        b = f"blocks.{i}"
        out += [*_layer_norm(f"{b}.ln1", d), *_linear(f"{b}.qkv", d, 3 * d, bias=False),
                *_linear(f"{b}.proj", d, d), *_layer_norm(f"{b}.ln2", d),
                *_linear(f"{b}.fc1", d, 4 * d), *_linear(f"{b}.fc2", 4 * d, d)]
    return out + [*_layer_norm("ln_f", d), *_linear("head", d, a["vocab"])]


def _cnn_rules(a: dict) -> str | None:
    # Two 2x2 pools floor the side twice; any other side would silently drop pixels.
    return None if a["side"] % 4 == 0 else "side must be a multiple of 4"


def _transformer_rules(a: dict) -> str | None:
    return None if a["d_model"] % a["heads"] == 0 else "d_model must be divisible by heads"


@dataclass(frozen=True)
class ModelFacts:
    """A registry model as the rules see it, from its normalised arguments."""
    inputs: Callable[[dict], InputSpec]
    params: Callable[[dict], ParamList]  # names and shapes, in torch's named_parameters order
    rules: Callable[[dict], str | None] = lambda a: None  # cross-argument rule; message if broken


MODEL_FACTS: dict[str, ModelFacts] = {
    "mlp": ModelFacts(inputs=lambda a: InputSpec(((a["in_dim"],),), None, (), a["out_dim"]),
                      params=_mlp_params),
    "cnn": ModelFacts(
        inputs=lambda a: InputSpec(((1, a["side"], a["side"]), (a["side"], a["side"])), None, (), a["out_dim"]),
        params=_cnn_params, rules=_cnn_rules),
    "char_transformer": ModelFacts(
        inputs=lambda a: InputSpec(((a["context"],),), a["vocab"], (a["context"],), a["vocab"]),
        params=_transformer_params, rules=_transformer_rules),
    "gpt": ModelFacts(
        inputs=lambda a: InputSpec(((a["context"],),), BYTE_VOCAB, (a["context"],), BYTE_VOCAB),
        params=lambda a: _transformer_params({**a, "vocab": BYTE_VOCAB}), rules=_transformer_rules),
}


def param_shapes(name: str, args: dict) -> dict[str, Shape]:
    """Every parameter's name and shape, from the arguments alone (what the torch model has:
    tests/test_runnable.py checks it over the argument range)."""
    return dict(MODEL_FACTS[name].params(normalise_model(name, args, ValueError)))


def param_count(name: str, norm: dict) -> int:
    return sum(math.prod(shape) for _, shape in MODEL_FACTS[name].params(norm))


def normalise_model(name: str, args, error: type[Exception]) -> dict:
    """Checked model arguments with defaults filled in, their cross-argument rule kept; raises `error`."""
    if type(name) is not str or name not in MODEL_FACTS:
        raise error(f"unknown model {name!r} (built-in models: {', '.join(MODEL_FACTS)})")
    norm = check_args(f"model {name}", args, MODEL_SCHEMAS[name], error)
    broken = MODEL_FACTS[name].rules(norm)
    if broken:
        raise error(f"model {name}: {broken}")
    return norm


def check_model(name: str, args, error: type[Exception]) -> dict:
    """normalise_model, and the model within the parameter cap."""
    norm = normalise_model(name, args, error)
    count = param_count(name, norm)
    if count > MAX_PARAMS:
        raise error(f"model {name} would have {count:,} parameters, more than the cap of {MAX_PARAMS:,}")
    return norm


def model_inputs(name: str, norm: dict) -> InputSpec:
    return MODEL_FACTS[name].inputs(norm)


# -- generators ------------------------------------------------------------------------------


def _labels(a: dict) -> tuple[int, int]:
    # Every generator deals labels 0, 1, ..., classes-1, 0, 1, ... (then shuffles them).
    return 0, min(a["n"], a["classes"]) - 1


TEXT_TOKENS = (0, len(TEXT_ALPHABET) - 1)
BYTE_TOKENS = (0, BYTE_VOCAB - 1)  # bounds, as for text  # bounds: a given sample may not use every letter

GENERATOR_ITEMS: dict[str, Callable[[dict], Items]] = {
    "blobs": lambda a: Items(a["n"], (a["dim"],), None, (), _labels(a)),
    "spirals": lambda a: Items(a["n"], (2,), None, (), _labels(a)),
    "digits": lambda a: Items(a["n"], (1, a["side"], a["side"]), None, (), _labels(a)),
    "text": lambda a: Items(a["n"], (a["context"],), TEXT_TOKENS, (a["context"],), TEXT_TOKENS),
    "byte_text": lambda a: Items(a["n"], (a["context"],), BYTE_TOKENS, (a["context"],), BYTE_TOKENS),
}


def generator_items(name: str, norm: dict) -> Items:
    return GENERATOR_ITEMS[name](norm)


def check_generator(name: str, args, error: type[Exception]) -> dict:
    """Checked generator arguments, within the cap on the values it makes; raises `error`."""
    if type(name) is not str or name not in GENERATOR_ITEMS:
        raise error(f"unknown data generator {name!r} (built-in: {', '.join(GENERATOR_ITEMS)})")
    norm = check_args(f"generator {name}", args, GENERATOR_SCHEMAS[name], error)
    items = generator_items(name, norm)
    values = items.n * math.prod(items.x_shape)
    if values > MAX_VALUES:
        raise error(f"generator {name}: {values:,} values is more than the cap of {MAX_VALUES:,}")
    return norm


# -- data against the model, holdout and shards ----------------------------------------------


def compat_error(model: str, spec: InputSpec, items: Items) -> str | None:
    """Why a dataset's items do not fit a model (None if they do)."""
    if items.x_shape not in spec.x_shapes:
        want = " or ".join(str(("n", *s)) for s in spec.x_shapes)
        return f"model {model} needs x of shape {want}, got {(items.n, *items.x_shape)}"
    if items.y_shape != spec.y_shape:
        return f"model {model} needs y of shape {('n', *spec.y_shape)}, got {(items.n, *items.y_shape)}"
    if spec.x_vocab is not None and not _within(items.x_range, spec.x_vocab):
        return f"model {model} needs x to hold integer token ids in [0, {spec.x_vocab})"
    if not _within(items.y_range, spec.classes):
        return f"model {model} needs y to hold integer labels in [0, {spec.classes})"
    return None


def _within(span: tuple[int, int] | None, bound: int) -> bool:
    return span is not None and span[0] >= 0 and span[1] < bound


def held_out(n_items: int, holdout_ppm: int) -> int:
    """How many of n items the holdout split keeps back (rounded down)."""
    return n_items * holdout_ppm // PPM


def split_error(n_items: int, holdout_ppm: int, shards: int) -> str | None:
    """Why the training items left after the holdout split cannot give every shard an item.
    Shards take items strided (shard, shard+shards, ...), so each is non-empty iff shards <= n."""
    n_hold = held_out(n_items, holdout_ppm)
    if shards > n_items - n_hold:
        return (f"the dataset's {n_items} items leave {n_items - n_hold} for training after holding out "
                f"{n_hold}: too few for {shards} shards (each needs at least one)")
    return None


# -- checkpoint size -------------------------------------------------------------------------
# The canonical msgpack bytes of verifier/checkpoint.encode, counted instead of written:
# {format, opt, params, rng, step}, each tensor [dtype name, shape, raw bytes].


def _int_size(v: int) -> int:
    return 1 if v < 128 else 2 if v < 256 else 3 if v < 1 << 16 else 5 if v < 1 << 32 else 9


def _head_size(n: int) -> int:  # map and array headers
    return 1 if n < 16 else 3 if n < 1 << 16 else 5


def _str_size(s: str) -> int:
    n = len(s.encode())
    return n + (1 if n < 32 else 2 if n < 256 else 3 if n < 1 << 16 else 5)


def _bin_size(n: int) -> int:
    return n + (2 if n < 256 else 3 if n < 1 << 16 else 5)


def _tensor_size(dtype: str, shape: Shape, itemsize: int) -> int:
    return (_head_size(3) + _str_size(dtype) + _head_size(len(shape)) + sum(_int_size(d) for d in shape)
            + _bin_size(math.prod(shape) * itemsize))


def _map_size(entries: dict[str, int]) -> int:
    return _head_size(len(entries)) + sum(_str_size(k) + v for k, v in entries.items())


def checkpoint_bytes(spec: dict) -> int:
    """The size of this job's largest checkpoint: the one at step `steps`.

    Every checkpoint of a job has the same tensors; only the step and the loss differ, and
    msgpack writes a larger step in up to 4 more bytes and a loss's 64 bits in up to 8 more
    (a positive float64 always takes all 9), so this is len(checkpoint.encode(init_state))
    plus those differences. Assumes a spec that passed jobs.check_spec (raises ValueError otherwise).
    """
    name = spec["model"]
    norm = check_args(f"model {name}", spec["model_args"], MODEL_SCHEMAS[name], ValueError)
    dtype, itemsize = ("float64", 8) if spec["profile"] == "cpu-f64" else ("float32", 4)
    shapes = MODEL_FACTS[name].params(norm)
    params = {p: _tensor_size(dtype, shape, itemsize) for p, shape in shapes}
    opt = {f"{slot}/{p}": params[p] for slot in OPTIMIZER_SLOTS[spec["optimizer"]] for p, _ in shapes}
    if spec["optimizer"] == "adam":
        opt.update((power, _tensor_size("float64", (), 8)) for power in ADAM_POWERS)
    return _map_size({"format": _int_size(CHECKPOINT_FORMAT), "loss": _int_size(2**64 - 1),
                      "params": _map_size(params), "opt": _map_size(opt),
                      "step": _int_size(spec["steps"]), "rng": _bin_size(RNG_BYTES)})


# -- the whole rule --------------------------------------------------------------------------

_INTS = ("shards", "steps", "holdout_ppm", "tolerance_ppm")


def _well_formed(spec) -> bool:
    """Enough structure for the rules below to read a spec without crashing (check_spec checks
    the rest); anything else is refused rather than trusted."""
    if type(spec) is not dict or not all(type(spec.get(n)) is int for n in _INTS):
        return False
    if spec.get("model") not in MODEL_FACTS or spec.get("optimizer") not in OPTIMIZER_SLOTS:
        return False
    if type(spec.get("profile")) is not str or not 0 <= spec["holdout_ppm"] < PPM:
        return False
    d = spec.get("data")
    return type(d) is dict and (set(d) == {"blob", "size"} and type(d["size"]) is int
                                or set(d) == {"generator", "args", "seed"} and d["generator"] in GENERATOR_ITEMS)


def _check_data(spec: dict, model_norm: dict, max_blob_bytes: int, error: type[Exception]) -> None:
    d = spec["data"]
    if "blob" in d:  # its contents are checked by whoever holds the blob; its size by everyone
        cap = min(max_blob_bytes, MAX_NPZ_BYTES)
        if d["size"] > cap:
            raise error(f"dataset of {d['size']} bytes exceeds the limit of {cap}")
        return
    items = generator_items(d["generator"], check_generator(d["generator"], d["args"], error))
    broken = (compat_error(spec["model"], model_inputs(spec["model"], model_norm), items)
              or split_error(items.n, spec["holdout_ppm"], spec["shards"]))
    if broken:
        raise error(broken)


def check_runnable(spec: dict, max_blob_bytes: int, error: type[Exception]) -> None:
    """Raise `error` with a one-line reason unless every solver could train this job.

    For a spec that passed jobs.check_spec: the model can be built and is within the
    parameter cap, the generator's data is within its cap and fits the model, every shard
    gets an item after the holdout split, an uploaded dataset and every checkpoint fit in a
    blob of `max_blob_bytes`, and the training settings are ones a verifier accepts.
    """
    if not _well_formed(spec):
        raise error("job spec is malformed (it must pass the chain's structural checks first)")
    norm = check_model(spec["model"], spec["model_args"], error)
    if spec["tolerance_ppm"] > MAX_TOLERANCE_PPM:
        raise error(f"tolerance_ppm must be an integer in [0, {MAX_TOLERANCE_PPM}], got {spec['tolerance_ppm']}")
    _check_data(spec, norm, max_blob_bytes, error)
    size = checkpoint_bytes(spec)
    if size > max_blob_bytes:
        raise error(f"a checkpoint of this model is {size} bytes, over the blob limit of {max_blob_bytes}")
