"""The model registry: argument validation, deterministic initialisation, model shapes."""
from __future__ import annotations

import pytest
import torch

from consensus.registry import MODELS
from verifier import models
from verifier.models import SpecError, build_model, model_input_spec, validate_model

MLP = {"in_dim": 4, "hidden": [16, 8], "out_dim": 3}
CNN = {"side": 8, "channels": 4, "out_dim": 10}
TRANSFORMER = {"vocab": 28, "context": 12, "d_model": 16, "heads": 2, "layers": 2}
GOOD = {"mlp": MLP, "cnn": CNN, "char_transformer": TRANSFORMER}


def test_registry_matches_the_chain():
    assert tuple(models.REGISTRY) == MODELS


@pytest.mark.parametrize("name", list(GOOD))
def test_good_arguments_are_accepted(name):
    validate_model(name, GOOD[name])


@pytest.mark.parametrize("name, args, fragment", [
    ("resnet", {}, "unknown model 'resnet'"),
    ("mlp", {**MLP, "dropout": 1}, "unknown argument 'dropout'"),
    ("mlp", {"in_dim": 4, "out_dim": 3}, "missing argument hidden"),
    ("mlp", {**MLP, "in_dim": "4"}, "in_dim must be an integer"),
    ("mlp", {**MLP, "in_dim": 4.0}, "in_dim must be an integer"),
    ("mlp", {**MLP, "in_dim": True}, "in_dim must be an integer"),
    ("mlp", {**MLP, "in_dim": 0}, "in_dim=0 is out of range"),
    ("mlp", {**MLP, "hidden": []}, "hidden must be an integer or a non-empty list"),
    ("mlp", {**MLP, "hidden": [8, "x"]}, "hidden must be an integer or a non-empty list"),
    ("mlp", {**MLP, "hidden": [8] * 9}, "at most 8"),
    ("mlp", {**MLP, "hidden": [8, 0]}, "entry 0 is out of range"),
    ("mlp", {**MLP, "activation": "gelu"}, "activation must be one of relu, tanh"),
    ("cnn", {**CNN, "side": 2}, "side=2 is out of range"),
    ("cnn", {**CNN, "side": 10}, "side must be a multiple of 4"),
    ("char_transformer", {**TRANSFORMER, "heads": 3}, "d_model must be divisible by heads"),
    ("char_transformer", {**TRANSFORMER, "vocab": 1000}, "vocab=1000 is out of range"),
    ("mlp", [1, 2, 3], "arguments must be a map"),
])
def test_bad_arguments_are_refused_with_one_clear_line(name, args, fragment):
    with pytest.raises(SpecError) as err:
        validate_model(name, args)
    assert fragment in str(err.value)
    assert "\n" not in str(err.value)
    assert isinstance(err.value, ValueError)


def test_a_single_hidden_width_means_one_layer():
    assert models.normalise_args("mlp", {**MLP, "hidden": 16})["hidden"] == [16]
    a = build_model("mlp", {**MLP, "hidden": 16}, seed=1)
    b = build_model("mlp", {**MLP, "hidden": [16]}, seed=1)
    assert all(torch.equal(x, y) for x, y in zip(a.parameters(), b.parameters()))


@pytest.mark.parametrize("name", list(GOOD))
def test_initialisation_depends_on_the_seed_only(name):
    before = torch.random.get_rng_state()
    a, b = build_model(name, GOOD[name], seed=7), build_model(name, GOOD[name], seed=7)
    c = build_model(name, GOOD[name], seed=8)
    assert torch.equal(torch.random.get_rng_state(), before), "the global RNG must not be touched"
    pa, pb, pc = (dict(m.named_parameters()) for m in (a, b, c))
    assert all(torch.equal(pa[n], pb[n]) for n in pa)
    assert any(not torch.equal(pa[n], pc[n]) for n in pa if pa[n].dim() > 1)


def test_each_parameter_has_its_own_seed():
    # Adding a layer must not shift the values of the layers before it.
    small = dict(build_model("mlp", {**MLP, "hidden": [16]}, seed=3).named_parameters())
    big = dict(build_model("mlp", {**MLP, "hidden": [16, 8]}, seed=3).named_parameters())
    assert torch.equal(small["layers.0.weight"], big["layers.0.weight"])


def test_init_values_are_sensible():
    params = dict(build_model("char_transformer", TRANSFORMER, seed=1).named_parameters())
    assert torch.equal(params["blocks.0.ln1.weight"], torch.ones(16))
    assert torch.equal(params["blocks.0.proj.bias"], torch.zeros(16))
    bound = (3.0 / 16) ** 0.5
    assert 0 < params["blocks.0.qkv.weight"].abs().max() <= bound
    assert params["tok.weight"].abs().max() <= models.EMBED_BOUND


def test_float64_models():
    model = build_model("mlp", MLP, seed=1, dtype=torch.float64)
    assert all(p.dtype == torch.float64 for p in model.parameters())
    f32 = dict(build_model("mlp", MLP, seed=1).named_parameters())
    f64 = dict(model.named_parameters())
    # Both are the same float64 draws, rounded once: float32 is the rounding of float64.
    assert all(torch.equal(f64[n].float(), f32[n]) for n in f32)


def test_output_shapes():
    assert build_model("mlp", MLP, 1)(torch.zeros(5, 4)).shape == (5, 3)
    cnn = build_model("cnn", CNN, 1)
    assert cnn(torch.zeros(5, 1, 8, 8)).shape == (5, 10)
    assert cnn(torch.zeros(5, 8, 8)).shape == (5, 10)
    tr = build_model("char_transformer", TRANSFORMER, 1)
    assert tr(torch.zeros(5, 12, dtype=torch.long)).shape == (5, 12, 28)
    assert tr(torch.zeros(5, 7, dtype=torch.long)).shape == (5, 7, 28)


def test_transformer_is_causal():
    tr = build_model("char_transformer", TRANSFORMER, 1)
    x = torch.randint(0, 28, (2, 12), generator=torch.Generator().manual_seed(0))
    y = x.clone()
    y[:, 8:] = (y[:, 8:] + 1) % 28
    with torch.no_grad():
        a, b = tr(x), tr(y)
    assert torch.equal(a[:, :8], b[:, :8])
    assert not torch.equal(a[:, 8:], b[:, 8:])


def test_input_spec():
    assert model_input_spec("mlp", MLP).x_shapes == ((4,),)
    assert model_input_spec("cnn", CNN).x_shapes == ((1, 8, 8), (8, 8))
    spec = model_input_spec("char_transformer", TRANSFORMER)
    assert (spec.x_vocab, spec.y_shape, spec.classes) == (28, (12,), 28)
    with pytest.raises(SpecError):
        model_input_spec("mlp", {"in_dim": 4})


def test_load_params_refuses_a_mismatch():
    model = models.empty_model("mlp", MLP)
    params = models.initial_params("mlp", MLP, 1, torch.float32)
    with pytest.raises(SpecError, match="do not match"):
        models.load_params(model, {k: v for k, v in params.items() if k != "layers.0.bias"})
    with pytest.raises(SpecError, match="has shape"):
        models.load_params(model, {**params, "layers.0.bias": torch.zeros(3)})


def test_bad_seed():
    with pytest.raises(SpecError, match="seed"):
        build_model("mlp", MLP, seed=-1)
