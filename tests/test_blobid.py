"""consensus.blobid: a blob's id is the Merkle root over its 1 MiB chunks, computed the same
whatever pieces the bytes arrive in, and it commits to every chunk."""
import os

from hypothesis import given, settings, strategies as st

from consensus import merkle
from consensus.blobid import CHUNK, BlobHasher, blob_id, chunk_count


def _reference(data: bytes) -> bytes:
    chunks = [data[i:i + CHUNK] for i in range(0, len(data), CHUNK)]
    return merkle.root(chunks) if chunks else merkle.EMPTY_ROOT


def test_the_id_is_the_merkle_root_of_the_chunks_at_every_boundary():
    for n in (0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 3 * CHUNK + 5):
        data = os.urandom(n)
        assert blob_id(data) == _reference(data)
        assert chunk_count(n) == max(1, -(-n // CHUNK))


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 2 * CHUNK + 3), st.lists(st.integers(1, 3 * CHUNK), min_size=1, max_size=8))
def test_the_id_does_not_depend_on_the_pieces_the_bytes_come_in(size, cuts):
    data = bytes(range(256)) * (size // 256) + bytes(size % 256)
    h, at, i = BlobHasher(), 0, 0
    while at < size:
        step = cuts[i % len(cuts)]
        h.update(data[at:at + step])
        at, i = at + step, i + 1
    assert h.digest() == blob_id(data) and h.size == size


def test_a_changed_byte_in_any_chunk_changes_the_id_and_the_chunk_proves_against_it():
    data = bytearray(os.urandom(3 * CHUNK))
    root = blob_id(bytes(data))
    chunks = [bytes(data[i:i + CHUNK]) for i in range(0, len(data), CHUNK)]
    assert all(merkle.verify_proof(root, c, i, 3, merkle.proof(chunks, i)) for i, c in enumerate(chunks))
    data[2 * CHUNK + 7] ^= 1
    assert blob_id(bytes(data)) != root
    assert not merkle.verify_proof(root, bytes(data[2 * CHUNK:]), 2, 3, merkle.proof(chunks, 2))
