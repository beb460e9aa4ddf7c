"""Content-addressed blobs (datasets, checkpoints, models) and their exchange in chunks.

A blob's name is its id (consensus/blobid.py: the Merkle root over its 1 MiB chunks), so
whatever a peer sends is checked by hashing before it is stored or used. Blobs travel in
1 MiB chunks (well under the frame limit), each checked against its leaf hash on arrival
(p2p/blobfetch.py). Beside each blob ``<hex>.leaves`` keeps those leaf hashes (32 bytes per
MiB), written at commit or computed once by reading the blob, so a peer is told them
without the blob being hashed again; a sidecar is checked against the id before it is used.

``BlobWriter`` stores a blob as it arrives (an RPC upload streamed in pieces): written to a
temporary file and hashed incrementally, never held whole in memory, and moved under its
hash only once it is complete (a crash or an abort never leaves half a blob). Serving a
chunk reads that chunk from disk, not the whole blob.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

from consensus.blobid import CHUNK, BlobHasher, chunk_count

from .blobfetch import check_leaves

DEFAULT_MAX_BLOB = 64 * 1024 * 1024


class BlobError(ValueError):
    pass


class BlobStore:
    def __init__(self, directory: str | Path, max_bytes: int = DEFAULT_MAX_BLOB):
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.max_bytes = max_bytes

    def path(self, digest: bytes) -> Path:
        if len(digest) != 32:
            raise BlobError("a blob hash is 32 bytes")
        return self.dir / digest.hex()

    def has(self, digest: bytes) -> bool:
        return self.path(digest).exists()

    def get(self, digest: bytes) -> bytes | None:
        try:
            return self.path(digest).read_bytes()
        except FileNotFoundError:
            return None

    def put(self, data: bytes) -> bytes:
        """Store data under its hash (atomically: a crash never leaves half a blob)."""
        with self.writer() as w:
            w.write(data)
            return w.commit()

    def writer(self, expect: bytes | None = None) -> "BlobWriter":
        """A blob written piece by piece; `expect` is the hash it must turn out to have."""
        return BlobWriter(self, expect)

    def leaves_path(self, digest: bytes) -> Path:
        return self.dir / f"{digest.hex()}.leaves"

    def stored_leaves(self, digest: bytes) -> bytes | None:
        """The blob's chunk leaf hashes from its sidecar, if the blob and a correct sidecar exist."""
        size = self.size(digest)
        if size is None:
            return None
        try:
            leaves = self.leaves_path(digest).read_bytes()
        except FileNotFoundError:
            return None
        return leaves if check_leaves(digest, size, leaves, max(size, self.max_bytes)) is None else None

    def leaves(self, digest: bytes) -> bytes | None:
        """The leaf hashes, from the sidecar or (blocking: run it in a thread for a big blob) by
        reading the blob once and writing the sidecar; None without the blob (or if it is corrupt)."""
        leaves = self.stored_leaves(digest)
        if leaves is not None:
            return leaves
        h = BlobHasher()
        try:
            with open(self.path(digest), "rb") as f:
                while piece := f.read(8 * CHUNK):
                    h.update(piece)
        except FileNotFoundError:
            return None
        if h.digest() != digest:
            return None
        leaves = b"".join(h.chunk_hashes())
        self._write_leaves(digest, leaves)
        return leaves

    def _write_leaves(self, digest: bytes, leaves: bytes) -> None:
        fd, tmp = tempfile.mkstemp(dir=self.dir, prefix=".part-")
        with os.fdopen(fd, "wb") as f:
            f.write(leaves)
        os.replace(tmp, self.leaves_path(digest))

    def adopt(self, src: Path, digest: bytes, leaves: bytes) -> Path:
        """Move a fully verified file (a finished fetch) under its id, with its sidecar."""
        self._write_leaves(digest, leaves)
        target = self.path(digest)
        os.replace(src, target)
        return target

    def size(self, digest: bytes) -> int | None:
        try:
            return self.path(digest).stat().st_size
        except FileNotFoundError:
            return None

    def chunk(self, digest: bytes, index: int) -> tuple[bytes, int] | None:
        """(chunk bytes, total chunks), or None when we do not have the blob or chunk. Reads
        only that chunk."""
        size = self.size(digest)
        if size is None:
            return None
        total = chunk_count(size)
        if not 0 <= index < total:
            return None
        try:
            with open(self.path(digest), "rb") as f:
                f.seek(index * CHUNK)
                return f.read(CHUNK), total
        except FileNotFoundError:
            return None

    # -- disk use and collection (node/storage.py decides, node/blobgc.py executes) ----------
    SIDECARS = (".leaves",)  # files kept beside a blob, named <hex id><suffix>
    TEMP_PREFIX = ".part-"

    @staticmethod
    def _is_id(name: str) -> bool:
        return len(name) == 64 and all(ch in "0123456789abcdef" for ch in name)

    def _files(self) -> dict[str, tuple[int, float]]:
        """Every plain file in the directory: name -> (size, mtime). One scandir."""
        out: dict[str, tuple[int, float]] = {}
        with os.scandir(self.dir) as it:
            for entry in it:
                try:
                    if entry.is_file(follow_symlinks=False):
                        st = entry.stat(follow_symlinks=False)
                        out[entry.name] = (st.st_size, st.st_mtime)
                except FileNotFoundError:  # deleted while we looked
                    continue
        return out

    def list_blobs(self) -> list[tuple[bytes, int, float]]:
        """(id, bytes on disk with its sidecars, mtime) of every stored blob, sorted by id."""
        files = self._files()
        return [(bytes.fromhex(name), size + sum(files.get(name + s, (0, 0.0))[0] for s in self.SIDECARS), mtime)
                for name, (size, mtime) in sorted(files.items()) if self._is_id(name)]

    def list_temp(self) -> list[tuple[str, int, float]]:
        """(name, size, mtime) of the files that are not blobs: uploads in progress or
        abandoned, and sidecars whose blob is gone; sorted by name."""
        files = self._files()
        return [(name, size, mtime) for name, (size, mtime) in sorted(files.items())
                if self._is_temp(name, lambda base: base in files)]

    def _is_temp(self, name: str, has_blob) -> bool:
        if name.startswith(self.TEMP_PREFIX) and "/" not in name:
            return True
        return any(name.endswith(s) and self._is_id(name[:-len(s)]) and not has_blob(name[:-len(s)])
                   for s in self.SIDECARS)

    def delete(self, digest: bytes) -> int:
        """Remove a blob and its sidecars; the bytes freed (0 if it was not there)."""
        base = self.path(digest)
        return sum(self._unlink(base.with_name(base.name + s)) for s in ("", *self.SIDECARS))

    def delete_temp(self, name: str) -> int:
        """Remove one file that list_temp names (nothing else); the bytes freed."""
        if not self._is_temp(name, lambda base: (self.dir / base).exists()):
            raise BlobError(f"not a temporary blob file: {name!r}")
        return self._unlink(self.dir / name)

    @staticmethod
    def _unlink(path: Path) -> int:
        try:
            size = path.stat().st_size
            path.unlink()
            return size
        except FileNotFoundError:
            return 0

    def used_bytes(self) -> int:
        """Bytes of every file in the directory: blobs, sidecars and partial uploads."""
        return sum(size for size, _ in self._files().values())

    def touch(self, digest: bytes) -> None:
        """Date a blob now (uploaded again: its grace period starts over)."""
        try:
            os.utime(self.path(digest))
        except FileNotFoundError:
            pass


class BlobWriter:
    """One blob being stored as it arrives: at most `max_bytes`, hashed as it is written."""

    def __init__(self, store: BlobStore, expect: bytes | None):
        self.store, self.expect = store, expect
        self.size = 0
        self._hash = BlobHasher()
        fd, self._tmp = tempfile.mkstemp(dir=store.dir, prefix=".part-")
        self._file = os.fdopen(fd, "wb")
        self._done = False

    def write(self, data: bytes) -> None:
        self.size += len(data)
        if self.size > self.store.max_bytes:
            raise BlobError(f"blob exceeds the limit of {self.store.max_bytes} bytes")
        self._hash.update(data)
        self._file.write(data)

    def commit(self) -> bytes:
        """Keep the blob under its hash (refused if it is not the expected one)."""
        digest = self._hash.digest()
        if self.expect is not None and digest != self.expect:
            raise BlobError("blob does not match its hash")
        self._file.close()
        target = self.store.path(digest)
        if target.exists():
            os.unlink(self._tmp)
        else:
            self.store._write_leaves(digest, b"".join(self._hash.chunk_hashes()))
            os.replace(self._tmp, target)
        self._done = True
        return digest

    def abort(self) -> None:
        if not self._done:
            self._file.close()
            try:
                os.unlink(self._tmp)
            except FileNotFoundError:
                pass
            self._done = True

    def __enter__(self) -> "BlobWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.abort()

