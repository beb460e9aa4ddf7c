"""verifier: training really learns. An MLP, a CNN and a character transformer trained over
rounds of averaged shards beat their starting accuracy on held-out data; averaging is the
mean in shard order.

The tiny jobs are in tests/tinyjobs.py.
"""
from __future__ import annotations

import dataclasses

import pytest
import torch

from tests.tinyjobs import tiny, work
from verifier import checkpoint, data, training
from verifier.data import Dataset
from verifier.training import TrainSpec

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # see tests/conftest.py


# -- learning --------------------------------------------------------------------------------


def train_rounds(spec: TrainSpec, train: Dataset, hold: Dataset, rounds: int, shards: int) -> list[int]:
    """Held-out accuracy (ppm) at the start of each round and after the last."""
    state = training.init_state(spec)
    accs = [training.evaluate(spec, state, hold)]
    for r in range(rounds):
        finals = [checkpoint.decode(training.train_shard(work(spec, train, s, shards, r), state)[-1])
                  for s in range(shards)]
        state = training.average_states(finals)
        assert state.step == 0
        accs.append(training.evaluate(spec, state, hold))
    return accs


def test_mlp_learns_spirals():
    ds = data.generate("spirals", {"n": 2000, "classes": 3}, 7)
    train, hold = data.split_holdout(ds, 200_000)
    spec = TrainSpec("mlp", {"in_dim": 2, "hidden": [64, 64], "out_dim": 3}, "adam", 20_000, 64, 150, 50,
                     "cpu-f32-1thread", seed=1)
    accs = train_rounds(spec, train, hold, rounds=2, shards=2)
    assert accs[0] < 500_000
    assert accs[-1] > 800_000, accs


def test_cnn_learns_digits():
    ds = data.generate("digits", {"n": 1000, "side": 8, "classes": 10}, 7)
    train, hold = data.split_holdout(ds, 200_000)
    spec = TrainSpec("cnn", {"side": 8, "channels": 4, "out_dim": 10}, "adam", 10_000, 32, 60, 20,
                     "cpu-f32-1thread", seed=1)
    accs = train_rounds(spec, train, hold, rounds=2, shards=2)
    assert accs[-1] > accs[0] + 300_000 and accs[-1] > 500_000, accs


def test_char_transformer_learns_text():
    ds = data.generate("text", {"n": 1000, "context": 16}, 7)
    train, hold = data.split_holdout(ds, 200_000)
    spec = TrainSpec("char_transformer", {"vocab": 28, "context": 16, "d_model": 32, "heads": 2, "layers": 1},
                     "adam", 10_000, 16, 60, 20, "cpu-f32-1thread", seed=1)
    accs = train_rounds(spec, train, hold, rounds=2, shards=2)
    assert accs[-1] > accs[0] + 250_000 and accs[-1] > accs[1], accs


def test_average_states_is_the_mean_in_shard_order():
    spec, ds = tiny("mlp", profile="cpu-f64", steps=2, k=2)
    finals = [checkpoint.decode(training.train_shard(work(spec, ds, s, 3), training.init_state(spec))[-1])
              for s in range(3)]
    avg = training.average_states(finals)
    for n in avg.params:
        ref = (finals[0].params[n] + finals[1].params[n] + finals[2].params[n]) / 3
        assert torch.allclose(avg.params[n], ref, rtol=0, atol=1e-15)
    assert checkpoint.encode(training.average_states(finals)) == checkpoint.encode(avg)
    with pytest.raises(ValueError):
        training.average_states([])
    with pytest.raises(ValueError):
        training.average_states([finals[0], dataclasses.replace(finals[1], step=1)])
