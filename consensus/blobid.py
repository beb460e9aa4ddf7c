"""A blob's id: the Merkle root over its 1 MiB chunks (consensus/merkle.py, sha256 with leaf
and node prefixes), so the id commits to every chunk.

Why chunks and not sha256 of the whole blob: a peer's chunk can then be checked the moment
it arrives, with its inclusion proof (log2 of the chunk count hashes: 12 for 4 GiB), so a bad
chunk is refused at once and fetched from another peer, and an interrupted transfer resumes
from the chunks already verified. BLAKE3's verified streaming (bao) gives the same property;
this needs no dependency beyond the sha256 every other hash here uses, and the Merkle code
the chain already has. A blob of one chunk or less has the id leaf_hash(bytes); the empty
blob the Merkle tree's empty root.

Ids are computed as bytes arrive (`BlobHasher`): nothing holds a blob whole to name it.
"""
from __future__ import annotations

import hashlib

from . import merkle

CHUNK = 1 << 20


def blob_id(data: bytes) -> bytes:
    h = BlobHasher()
    h.update(data)
    return h.digest()


def chunk_count(size: int) -> int:
    return max(1, -(-size // CHUNK))


class BlobHasher:
    """The id of bytes fed in pieces of any size; also the chunk leaf hashes (for proofs).

    Each chunk is hashed as it streams in (one running sha256, no buffering), so naming a
    blob costs one pass of sha256 and no copies."""

    def __init__(self) -> None:
        self.size = 0
        self.leaves: list[bytes] = []   # leaf_hash of each complete chunk: 32 bytes per MiB
        self._open = hashlib.sha256(merkle.LEAF_PREFIX)
        self._filled = 0  # bytes of the open chunk

    def update(self, data) -> None:
        view = memoryview(data).cast("B")
        self.size += len(view)
        while view:
            take = min(len(view), CHUNK - self._filled)
            self._open.update(view[:take])
            self._filled += take
            view = view[take:]
            if self._filled == CHUNK:
                self.leaves.append(self._open.digest())
                self._open, self._filled = hashlib.sha256(merkle.LEAF_PREFIX), 0

    def chunk_hashes(self) -> list[bytes]:
        """Every chunk's leaf hash, the last (partial) one included."""
        tail = [self._open.digest()] if self._filled or not self.leaves else []
        return self.leaves + tail

    def digest(self) -> bytes:
        if self.size == 0:
            return merkle.EMPTY_ROOT
        return merkle.root_of_leaf_hashes(self.chunk_hashes())


def file_id(path, block: int = 4 * CHUNK) -> bytes:
    """The blob id of a file's bytes, read in blocks (never whole in memory)."""
    h = BlobHasher()
    with open(path, "rb") as f:
        while piece := f.read(block):
            h.update(piece)
    return h.digest()
