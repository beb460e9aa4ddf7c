"""Checkpoints of real models stream: written and read piece by piece, hashed on the way, with
the same canonical bytes (and so the same leaf hashes) as the codec has always produced."""
from __future__ import annotations

import dataclasses
import io
import subprocess
import sys
import textwrap
import zipfile

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from consensus import codec
from consensus.blobid import blob_id, file_id
from verifier import checkpoint, data, training
from verifier.checkpoint import CheckpointError, TrainState
from verifier.leaves import LeafDir


def _codec_bytes(state: TrainState) -> bytes:
    """The checkpoint as the generic codec writes it: the streamed bytes are exactly these."""
    def entry(t):
        name = "float64" if t.dtype == torch.float64 else "float32"
        return [name, list(t.shape), t.contiguous().numpy().astype("<f8" if name == "float64" else "<f4").tobytes()]
    return codec.encode({"format": 2, "loss": state.loss, "params": {n: entry(t) for n, t in state.params.items()},
                         "opt": {n: entry(t) for n, t in state.opt.items()}, "step": state.step, "rng": state.rng})


shapes = st.lists(st.integers(0, 5), min_size=0, max_size=3)


@st.composite
def states(draw):
    def tensors(prefix, min_size):
        names = draw(st.lists(st.text("abcxyz./", min_size=1, max_size=6), min_size=min_size, max_size=4, unique=True))
        out = {}
        for n in names:
            shape = draw(shapes)
            dtype = draw(st.sampled_from([torch.float32, torch.float64]))
            out[prefix + n] = torch.randn(shape, dtype=dtype, generator=torch.Generator().manual_seed(len(out)))
        return out
    return TrainState(tensors("", 1), tensors("m/", 0), draw(st.integers(0, 2**40)), draw(st.binary(min_size=32, max_size=32)),
                      draw(st.integers(0, 2**64 - 1)))


@settings(max_examples=80, deadline=None, derandomize=True, database=None)
@given(state=states())
def test_streamed_bytes_are_the_codec_bytes_and_read_back(state, tmp_path_factory):
    raw = checkpoint.encode(state)
    assert raw == _codec_bytes(state)  # leaf hashes of existing chains do not move
    assert checkpoint.digest(state) == blob_id(raw)
    path = tmp_path_factory.mktemp("ckpt") / "leaf"
    assert checkpoint.save(state, path) == blob_id(raw) == file_id(path) == checkpoint.checkpoint_hash(path)
    for src in (raw, path):
        back = checkpoint.decode(src)
        assert checkpoint.encode(back) == raw
        assert back.step == state.step and back.rng == state.rng and back.loss == state.loss


def _state(n: int = 1000) -> TrainState:
    return TrainState({"w": torch.arange(n, dtype=torch.float32), "b": torch.zeros(3, dtype=torch.float64)},
                      {"m/w": torch.ones(n, dtype=torch.float32)}, 7, b"\x01" * 32)


def test_non_canonical_framing_is_refused():
    raw = checkpoint.encode(_state())
    obj = codec.decode(raw, max_size=len(raw))
    import msgpack
    # The same value with a non-minimal header: a uint8 for a step that fits in a fixint.
    loose = raw[:-1] + b"\xcc\x07"
    assert msgpack.unpackb(loose, strict_map_key=False)["step"] == 7
    with pytest.raises(CheckpointError, match="canonical"):
        checkpoint.decode(loose)
    with pytest.raises(CheckpointError, match="after the end"):
        checkpoint.decode(raw + b"\x00")
    with pytest.raises(CheckpointError, match="truncated"):
        checkpoint.decode(raw[:-5])
    # params listed out of order: the codec would sort them, so these bytes are not canonical
    swapped = msgpack.packb({"format": 2, "loss": 0, "opt": obj["opt"], "params": dict(reversed(list(obj["params"].items()))),
                             "rng": obj["rng"], "step": 7}, use_bin_type=True)
    with pytest.raises(CheckpointError, match="canonical order"):
        checkpoint.decode(swapped)


def test_a_small_file_cannot_make_the_reader_allocate_gigabytes(tmp_path):
    # A header promising a 2^30-float (4 GiB) tensor in a file of a few hundred bytes: refused
    # before anything of that size is allocated.
    big = checkpoint._str("w") + checkpoint._array_header(3) + checkpoint._str("float32") + \
        checkpoint._array_header(1) + checkpoint._uint((1 << 30) - 1) + checkpoint._bin_header(((1 << 30) - 1) * 4)
    raw = (checkpoint._map_header(6) + checkpoint._str("format") + b"\x02" + checkpoint._str("loss") + b"\x00"
               + checkpoint._str("opt") + b"\x80"
           + checkpoint._str("params") + checkpoint._map_header(1) + big + b"\x00" * 64)
    path = tmp_path / "bomb"
    path.write_bytes(raw)
    for src in (raw, path):
        with pytest.raises(CheckpointError, match="truncated"):
            checkpoint.decode(src)


def test_a_trainer_that_owns_its_start_trains_in_it_without_a_copy():
    spec = training.TrainSpec(model="mlp", model_args={"in_dim": 2, "hidden": [8], "out_dim": 3}, optimizer="adam",
                              lr_ppm=10_000, batch_size=4, steps=2, k=1, profile="cpu-f32-1thread", seed=1)
    state = checkpoint.decode(checkpoint.encode(training.init_state(spec)))
    owned = training.Trainer(spec, state, own=True)
    assert owned.params[0].data_ptr() == state.params[owned.names[0]].data_ptr()
    copied = training.Trainer(spec, state)
    assert copied.params[0].data_ptr() != state.params[copied.names[0]].data_ptr()
    assert copied.digest() == checkpoint.digest(state) == blob_id(copied.encode())


MEMORY_SCRIPT = textwrap.dedent("""
    import resource, sys, torch
    from verifier import checkpoint
    from verifier.checkpoint import TrainState
    n = 64 << 20  # 256 MiB of float32
    state = TrainState({"w": torch.ones(n)}, {}, 1, bytes(32))
    def peak(): return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    base = peak()
    checkpoint.save(state, sys.argv[1])
    saved = peak() - base
    del state
    base = peak()
    back = checkpoint.decode(sys.argv[1])
    print(saved, peak() - base, back.params["w"].numel() * 4)
""")


def test_saving_holds_no_copy_and_loading_holds_one(tmp_path):
    out = subprocess.run([sys.executable, "-c", MEMORY_SCRIPT, str(tmp_path / "big")], capture_output=True,
                         text=True, timeout=120, check=True)
    saved, loaded, size = map(int, out.stdout.split())
    assert saved < 32 << 20, f"saving a {size}-byte state grew the peak by {saved} bytes"
    assert loaded < size + (32 << 20), f"loading a {size}-byte state grew the peak by {loaded} bytes"


def test_leaf_dir_keeps_ids_and_divergence_across_reopening(tmp_path):
    leaves = LeafDir(tmp_path / "shard")
    a, b = _state(), TrainState({"w": torch.tensor([float("nan")])}, {}, 8, b"\x02" * 32)
    pa, pb = leaves.put(0, a), leaves.put(1, b)
    assert leaves.done is None
    b = dataclasses.replace(b, loss=checkpoint.float_bits(6.0))
    pb = leaves.put(1, b)
    leaves.finish(1, leaves.interval_losses(2, 4))
    again = LeafDir(tmp_path / "shard")
    assert again.done == 1 and again.first_nonfinite(2) == 1
    assert again.declared_losses == [checkpoint.float_bits(1.5)]  # leaf 1's sum 6.0 over k = 4 steps
    assert again.hashes(2) == [file_id(pa), file_id(pb)] == [checkpoint.digest(a), checkpoint.digest(b)]
    again.remove()
    assert not (tmp_path / "shard").exists()


def _npz(x: np.ndarray, y: np.ndarray, compress: bool) -> bytes:
    buf = io.BytesIO()
    (np.savez_compressed if compress else np.savez)(buf, x=x, y=y)
    return buf.getvalue()


@pytest.mark.parametrize("compress", [False, True])
def test_dataset_files_are_mapped_and_views_copy_nothing(tmp_path, compress):
    x = np.arange(6000, dtype=np.float32).reshape(1000, 6)
    y = (np.arange(1000) % 3).astype(np.int64)
    raw = _npz(x, y, compress)
    path = tmp_path / "d.npz"
    path.write_bytes(raw)
    from_file, from_bytes = data.load_npz(path), data.load_npz(raw)
    assert isinstance(from_file.base_x, np.memmap) is (not compress)  # compressed members are read
    assert np.array_equal(from_file.x, from_bytes.x) and np.array_equal(from_file.y, y)
    train, hold = data.split_holdout(from_file, 200_000)
    assert train.base_x is from_file.base_x and len(train) + len(hold) == 1000  # views, not copies
    shard = data.shard_indices(len(train), 4, 1)
    gx, gy = train.take(shard)
    assert np.array_equal(gx, train.x[shard]) and np.array_equal(gy, train.y[shard])


def test_a_damaged_dataset_file_is_refused_with_a_reason(tmp_path):
    raw = bytearray(_npz(np.zeros((10, 2), np.float32), np.zeros(10, np.int64), False))
    with zipfile.ZipFile(io.BytesIO(bytes(raw))) as zf:
        offset = zf.getinfo("x.npy").header_offset
    raw[offset:offset + 4] = b"XXXX"
    path = tmp_path / "bad.npz"
    path.write_bytes(bytes(raw))
    with pytest.raises(data.DataError):
        data.load_npz(path)
    nan = tmp_path / "nan.npz"
    nan.write_bytes(_npz(np.full((10, 2), np.nan, np.float32), np.zeros(10, np.int64), False))
    with pytest.raises(data.DataError, match="NaN"):
        data.load_npz(nan)


def test_averaging_files_tensor_by_tensor_is_bit_for_bit_the_average_of_states(tmp_path):
    states = [TrainState({"w": torch.randn(50, generator=torch.Generator().manual_seed(i)),
                          "b": torch.randn(3, dtype=torch.float64, generator=torch.Generator().manual_seed(9 + i))},
                         {"m/w": torch.rand(50, generator=torch.Generator().manual_seed(20 + i))}, 4, bytes([i]) * 32)
              for i in range(3)]
    paths = []
    for i, s in enumerate(states):
        paths.append(tmp_path / f"final-{i}")
        checkpoint.save(s, paths[-1])
    assert checkpoint.encode(training.average_files(paths)) == checkpoint.encode(training.average_states(states))
    index = checkpoint.index(paths[0])
    assert torch.equal(checkpoint.read_tensor(paths[0], index.params["b"]), states[0].params["b"])
    bad = TrainState({"w": torch.full((50,), float("inf")), "b": states[0].params["b"]}, states[0].opt, 4, bytes(32))
    checkpoint.save(bad, tmp_path / "bad")
    with pytest.raises(ValueError, match="not finite"):
        training.average_files([paths[0], tmp_path / "bad"])


def test_tolerance_verdicts_from_files_are_the_verdicts_from_bytes(tmp_path):
    """From files a tolerance verifier reads the start and the claim back one tensor at a time
    (it holds neither while it trains); the verdicts and reasons are the ones from bytes."""
    import dataclasses

    from verifier import replay
    from verifier.work import RoundShard, ShardWork
    spec = training.TrainSpec(model="mlp", model_args={"in_dim": 2, "hidden": [16], "out_dim": 3}, optimizer="adam",
                              lr_ppm=20_000, batch_size=8, steps=20, k=10, profile="tolerance", seed=2)
    work = ShardWork(spec, data.generate("spirals", {"n": 120, "classes": 3}, 1), RoundShard(b"\x03" * 32, 0, 0, 1))
    leaves = training.train_shard(work, training.init_state(spec))
    end = checkpoint.decode(leaves[2])
    nudged = dataclasses.replace(end, params={n: t * 1.01 for n, t in end.params.items()})
    wrong_step = dataclasses.replace(end, step=end.step + 1)
    cases = {"honest": leaves[2], "nudged": checkpoint.encode(nudged), "step": checkpoint.encode(wrong_step)}
    start_path = tmp_path / "start"
    start_path.write_bytes(leaves[1])
    verdicts = {}
    for name, claimed in cases.items():
        path = tmp_path / name
        path.write_bytes(claimed)
        from_bytes = replay.verify_interval(work, 1, leaves[1], claimed)
        from_files = replay.verify_interval(work, 1, start_path, path)
        assert from_files == from_bytes, name
        verdicts[name] = from_files[0]
    assert verdicts == {"honest": True, "nudged": False, "step": False}
    assert checkpoint.decode(start_path).step == 10  # the file is untouched by training in its copy
