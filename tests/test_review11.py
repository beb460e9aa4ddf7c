"""Adversarial review of real-size jobs (compute side): hostile checkpoints, hostile dataset
files, and what a worker's bounded blob cache may drop while a check still needs it."""
from __future__ import annotations

import io
import struct
import zipfile

from pathlib import Path

import numpy as np
import pytest
import torch

from consensus import codec
from consensus.blobid import blob_id
from node.workers.blobcache import BlobCache
from p2p.blobs import BlobStore
from verifier import checkpoint, data, replay, training
from verifier.checkpoint import CheckpointError, TrainState


def _raw_checkpoint(shape: list[int]) -> bytes:
    return codec.encode({"format": 2, "loss": 0, "params": {"w": ["float32", shape, b""]}, "opt": {}, "step": 0,
                         "rng": b"\x01" * 32})


@pytest.mark.parametrize("shape", [[0, 2**63], [0, 2**64 - 1], [0, 2**62, 4], [0, 2**40, 2**40]])
def test_an_empty_tensor_with_giant_dimensions_is_a_checkpoint_error(shape, tmp_path):
    """A solver's leaf of 60 bytes whose empty tensor claims dimensions numpy cannot hold must be
    refused as a checkpoint (a verdict), not raise numpy's own error inside a verifier."""
    raw = _raw_checkpoint(shape)
    path = tmp_path / "leaf"
    path.write_bytes(raw)
    for src in (raw, path):
        with pytest.raises(CheckpointError):
            checkpoint.decode(src)
    with pytest.raises(CheckpointError):
        checkpoint.index(path)
    checkpoint.decode(_raw_checkpoint([0, 3]))  # an ordinary empty tensor still reads


# -- hostile dataset files ------------------------------------------------------------------------

def _npy(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array(buf, arr, allow_pickle=False)
    return buf.getvalue()


def _npz(members: dict[str, bytes], compress: int = zipfile.ZIP_STORED) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compress) as zf:
        for name, raw in members.items():
            zf.writestr(name, raw)
    return buf.getvalue()


def _outcome(src) -> str:
    """What loading gives: the arrays' digest, or that it was refused (any other error escapes)."""
    try:
        ds = data.load_npz(src)
    except data.DataError:
        return "refused"
    return codec.encode([np.ascontiguousarray(ds.x).tobytes(), np.ascontiguousarray(ds.y).tobytes()]).hex()


X = np.arange(20_000, dtype=np.float32).reshape(10_000, 2)
Y = (np.arange(10_000) % 3).astype(np.int64)


def _bad_crc() -> bytes:
    raw = bytearray(_npz({"x.npy": _npy(X), "y.npy": _npy(Y)}))
    raw[raw.find(X.tobytes()[:64]) + 100] ^= 1  # one bit of x's data: its CRC no longer matches
    return bytes(raw)


def _member_longer_than_stored() -> bytes:
    """x's header promises 10,000 rows, its stored member holds 9,000, and the central directory
    says it is 8,000 bytes longer than what is stored: its rows run on into y's member."""
    head = io.BytesIO()
    np.lib.format.write_array_header_1_0(head, {"descr": "<f4", "fortran_order": False, "shape": (10_000, 2)})
    raw = bytearray(_npz({"x.npy": head.getvalue() + X[:9000].tobytes(), "y.npy": _npy(Y)}))
    cd = raw.find(b"PK\x01\x02")
    size = struct.unpack("<I", raw[cd + 24:cd + 28])[0]
    raw[cd + 24:cd + 28] = struct.pack("<I", size + 8000)
    return bytes(raw)


@pytest.mark.parametrize("make", [_bad_crc, _member_longer_than_stored])
def test_a_dataset_reads_the_same_from_bytes_and_from_a_file(make, tmp_path):
    """A referee reads a dataset from bytes (p2p), solvers and verifiers from a mapped file: one
    blob must give one answer, or a hostile uploader splits them (workers train on data the
    referees refuse, and every dispute on the job stays undecided)."""
    raw = make()
    path = tmp_path / "data.npz"
    path.write_bytes(raw)
    assert _outcome(raw) == _outcome(path)


def _encrypted() -> bytes:
    raw = bytearray(_npz({"x.npy": _npy(X), "y.npy": _npy(Y)}))
    for sig, flag in ((b"PK\x03\x04", 6), (b"PK\x01\x02", 8)):
        at = raw.find(sig)
        raw[at + flag] |= 1
    return bytes(raw)


def _corrupt(compress: int) -> bytes:
    raw = bytearray(_npz({"x.npy": _npy(X), "y.npy": _npy(Y)}, compress))
    name_len = struct.unpack("<H", raw[26:28])[0]
    start = 30 + name_len
    raw[start + 4:start + 40] = b"\xff" * 36
    return bytes(raw)


@pytest.mark.parametrize("make", [_encrypted, lambda: _corrupt(zipfile.ZIP_DEFLATED),
                                  lambda: _corrupt(zipfile.ZIP_LZMA)], ids=["encrypted", "deflate", "lzma"])
def test_a_damaged_or_encrypted_dataset_is_a_data_error(make, tmp_path):
    """Every malformed dataset is a DataError (refused with a reason), never zipfile's
    RuntimeError or a decompressor's own error escaping into a worker or the submit check."""
    raw = make()
    path = tmp_path / "data.npz"
    path.write_bytes(raw)
    assert _outcome(raw) == _outcome(path) == "refused"


# -- a worker's bounded blob cache -----------------------------------------------------------------

class _StoreClient:
    """The one call BlobCache makes of the RPC client (get_blob_file: verified, written whole
    under its id), served from a real node blob store instead of over HTTP."""

    def __init__(self, store):
        self.store = store

    def get_blob_file(self, digest: str, path) -> int | None:
        raw = self.store.get(bytes.fromhex(digest))
        if raw is None:
            return None
        assert blob_id(raw).hex() == digest
        Path(path).write_bytes(raw)
        return len(raw)


def test_a_round_start_check_keeps_every_final_it_fetched(tmp_path):
    """A verifier checks a round's start against the average of all the previous round's finals:
    it fetches them all, then averages them. A cache bound below their sum must not drop the
    first finals while fetching the last (their paths then lead nowhere, and an honest start
    was judged wrong: a FAULT verdict, and a challenge, against an honest solver)."""
    spec = training.TrainSpec(model="mlp", model_args={"in_dim": 2, "hidden": [8], "out_dim": 3}, optimizer="adam",
                              lr_ppm=10_000, batch_size=4, steps=2, k=1, profile="cpu-f32-1thread", seed=3)
    base = training.init_state(spec)
    finals = [TrainState({n: t + i for n, t in base.params.items()}, base.opt, 2, bytes([i]) * 32) for i in range(3)]
    store = BlobStore(tmp_path / "node")
    ids = [store.put(checkpoint.encode(s)) for s in finals]
    size = len(checkpoint.encode(finals[0]))
    cache = BlobCache(_StoreClient(store), tmp_path / "cache", max_bytes=2 * size)
    paths = [cache.fetch(h) for h in ids]
    start = checkpoint.encode(training.average_states(finals))
    assert replay.verify_round_start(spec, paths, start)
    cache.release()  # the check is over: the next blob fetched brings the cache back within its bound
    assert cache.fetch(store.put(checkpoint.encode(base))) is not None
    assert cache.used_bytes() <= 2 * size


def test_a_dataset_of_long_doubles_is_refused(tmp_path):
    """np.longdouble is 80-bit on x86 and 128-bit on arm: the same blob would be two datasets."""
    import numpy as np
    buf = io.BytesIO()
    np.savez(buf, x=np.zeros((4, 2), dtype=np.longdouble), y=np.zeros(4, dtype=np.int64))
    with pytest.raises(data.DataError, match="more than 8 bytes"):
        data.load_npz(buf.getvalue())


def test_a_checkpoint_of_very_many_tiny_tensors_is_refused_before_it_is_read():
    many = {f"t{i:05d}": torch.zeros(0) for i in range(checkpoint.MAX_TENSORS + 1)}
    raw = checkpoint.encode(TrainState(many, {}, 0, bytes(32)))
    with pytest.raises(CheckpointError, match="map of names to tensors"):
        checkpoint.decode(raw)


def test_a_solver_drops_leaves_only_on_the_chains_word(tmp_path):
    """A node that is catching up (or lists no jobs for a moment) must not make a solver delete
    leaves a dispute may still ask for; a shard reassigned to it later is trained afresh."""
    from types import SimpleNamespace as NS

    from consensus.crypto import PrivateKey
    from consensus.jobs import JobStatus, ShardStatus
    from node.client import RpcError
    from node.workers.solver import Solver
    key = PrivateKey.generate()
    answers: dict = {}

    class Node:
        def job(self, job_hex):
            if job_hex not in answers:
                raise RpcError("node unavailable")
            return answers[job_hex]

    worker = Solver(Node(), key, tmp_path, progress=False)
    jid = b"\x07" * 32
    mine = NS(status=ShardStatus.COMMITTED, solver=key.address, secret_index=3)
    job = NS(id=jid, round=0, status=JobStatus.ACTIVE, shards=[mine])
    d = worker.shard_dir(job, 0)
    d.mkdir()
    worker.forget(set(), set())  # the node cannot say: kept
    answers[jid.hex()] = job
    worker.forget(set(), set())  # still ours and open: kept
    assert d.exists()
    mine.secret_index = 4  # reassigned (to us again, with another secret): the old leaves are stale
    assert worker.shard_dir(job, 0) != d
    worker.forget(set(), set())
    assert not d.exists()
    d2 = worker.shard_dir(job, 0)
    d2.mkdir()
    mine.status = ShardStatus.PASSED
    worker.forget(set(), set())
    assert not d2.exists()
