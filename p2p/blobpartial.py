"""A blob being fetched, on disk: `.fetch-<hex>` (pre-sized, chunks written at their offsets)
and `.fetch-<hex>.have` (the size, the verified leaf list and a bitmap of verified chunks).

The bitmap is flushed every ``FLUSH_EVERY`` chunks and when the fetch stops, so a node that
crashes or restarts resumes from the chunks it had checked. It is not trusted on resume:
every chunk it marks is hashed again from the partial file and compared with its leaf hash
(a bit may have reached the disk before its chunk did), and the leaf list is checked against
the id, so nothing a crash leaves behind can end up in a blob. Only a complete, verified
file is moved under its id (``BlobStore.adopt``, after fsync), so there is never half a blob
under an id. Nothing here holds more than one chunk in memory.
"""
from __future__ import annotations

import os
import struct
from pathlib import Path

from consensus.blobid import CHUNK, chunk_count

from .blobfetch import LEAF, check_leaves, leaf_of
from .blobs import BlobStore

MAGIC = b"SCFETCH1"
FLUSH_EVERY = 16
KEEP_PARTIALS = 8   # unfinished fetches kept on disk for resuming; the oldest beyond go


class PartialBlob:
    def __init__(self, store: BlobStore, digest: bytes):
        self.store, self.digest = store, digest
        self.path = store.dir / f".fetch-{digest.hex()}"
        self.state_path = store.dir / f".fetch-{digest.hex()}.have"
        self.size: int | None = None
        self.leaves: bytes | None = None
        self._bits = bytearray()
        self._fd: int | None = None
        self._state_fd: int | None = None
        self._unflushed = 0

    # -- resuming -------------------------------------------------------------------------

    def load(self) -> list[int]:
        """What an earlier attempt left: the verified chunks (re-hashed from disk), or [] after
        discarding a state that does not hold up. Blocking (reads the marked chunks)."""
        try:
            raw = self.state_path.read_bytes()
            if raw[:8] != MAGIC or len(raw) < 16:
                raise ValueError("not a fetch state")
            (size,) = struct.unpack(">Q", raw[8:16])
            n = chunk_count(size)
            leaves, bits = raw[16:16 + LEAF * n], raw[16 + LEAF * n:]
            if len(bits) != -(-n // 8) or check_leaves(self.digest, size, leaves, self.store.max_bytes):
                raise ValueError("fetch state does not match the blob id")
            if self.path.stat().st_size != size:
                raise ValueError("partial file has the wrong size")
        except (OSError, ValueError, struct.error):
            self.discard()
            return []
        self._open(size, leaves, bytearray(bits))
        good = [i for i in range(n) if self._bit(i) and self._chunk_ok(i)]
        self._bits = bytearray(len(bits))
        for i in good:
            self._set(i)
        self.flush()
        return good

    def _chunk_ok(self, index: int) -> bool:
        data = os.pread(self._fd, min(CHUNK, self.size - index * CHUNK), index * CHUNK)
        return leaf_of(data) == self.leaves[index * LEAF:(index + 1) * LEAF]

    # -- writing --------------------------------------------------------------------------

    def start(self, size: int, leaves: bytes) -> None:
        """A fresh fetch: a sparse file of the blob's size and a state with no chunk marked."""
        self.discard()
        with open(self.path, "wb") as f:
            f.truncate(size)
        self.state_path.write_bytes(MAGIC + struct.pack(">Q", size) + leaves + bytes(-(-chunk_count(size) // 8)))
        self._open(size, leaves, bytearray(-(-chunk_count(size) // 8)))

    def _open(self, size: int, leaves: bytes, bits: bytearray) -> None:
        self.size, self.leaves, self._bits = size, leaves, bits
        self._fd = os.open(self.path, os.O_RDWR)
        self._state_fd = os.open(self.state_path, os.O_RDWR)

    @property
    def opened(self) -> bool:
        return self._fd is not None

    def write(self, offset: int, data: bytes) -> None:
        """A chunk's bytes at its offset (safe from a worker thread; its bit is set by `mark`)."""
        os.pwrite(self._fd, data, offset)

    def mark(self, index: int) -> None:
        """A chunk written and verified: its bit, flushed every few chunks."""
        self._set(index)
        self._unflushed += 1
        if self._unflushed >= FLUSH_EVERY:
            self.flush()

    def sync_data(self) -> None:
        """Push the chunks written so far to the disk (from a worker thread, while more arrive),
        so the fsync before the file goes under its id has little left to do."""
        os.fdatasync(self._fd)

    def flush(self) -> None:
        if self._state_fd is not None:
            os.pwrite(self._state_fd, bytes(self._bits), 16 + len(self.leaves))
            self._unflushed = 0

    def finish(self) -> Path:
        """Every chunk verified: sync the file, move it under its id with its leaves sidecar."""
        os.fsync(self._fd)
        self.close()
        target = self.store.adopt(self.path, self.digest, self.leaves)
        self.state_path.unlink(missing_ok=True)
        return target

    def close(self) -> None:
        """Stop for now (the state stays for a later resume)."""
        self.flush()
        for fd in (self._fd, self._state_fd):
            if fd is not None:
                os.close(fd)
        self._fd = self._state_fd = None

    def discard(self) -> None:
        self.close()
        self.path.unlink(missing_ok=True)
        self.state_path.unlink(missing_ok=True)

    def _bit(self, i: int) -> bool:
        return bool(self._bits[i >> 3] & (1 << (i & 7)))

    def _set(self, i: int) -> None:
        self._bits[i >> 3] |= 1 << (i & 7)

    @property
    def marked(self) -> int:
        return sum(bin(b).count("1") for b in self._bits)


def prune_partials(store: BlobStore, keep: int = KEEP_PARTIALS, spare: set[bytes] = frozenset()) -> None:
    """Bound the disk held by unfinished fetches: the oldest beyond `keep` are deleted (never
    those of the fetches in `spare`, which are running)."""
    spared = {f".fetch-{d.hex()}" for d in spare}

    def age(p: Path) -> tuple:
        try:
            return (p.stat().st_mtime, p.name)
        except FileNotFoundError:
            return (0.0, p.name)

    partials = [p for p in store.dir.glob(".fetch-*") if not p.name.endswith(".have")]
    for p in partials:  # a partial file without its state cannot be resumed
        if p.name not in spared and not (store.dir / f"{p.name}.have").exists():
            p.unlink(missing_ok=True)
    states = sorted((p for p in store.dir.glob(".fetch-*.have") if p.name[:-len(".have")] not in spared), key=age)
    for p in states[:max(0, len(states) + len(spared) - keep)]:
        p.unlink(missing_ok=True)
        (store.dir / p.name[:-len(".have")]).unlink(missing_ok=True)
