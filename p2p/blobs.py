"""Content-addressed blobs (datasets, checkpoints, models) and their exchange in chunks.

A blob's name is the sha256 of its bytes, so whatever a peer sends is checked by hashing
before it is stored or used. Blobs travel in 1 MiB chunks (well under the frame limit);
``Assembly`` collects one blob's chunks from one peer and refuses anything inconsistent.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

from consensus.crypto import sha256

CHUNK = 1024 * 1024
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
        if len(data) > self.max_bytes:
            raise BlobError(f"blob of {len(data)} bytes exceeds the limit of {self.max_bytes}")
        digest = sha256(data)
        target = self.path(digest)
        if not target.exists():
            fd, tmp = tempfile.mkstemp(dir=self.dir, prefix=".part-")
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.replace(tmp, target)
        return digest

    def chunk(self, digest: bytes, index: int) -> tuple[bytes, int] | None:
        """(chunk bytes, total chunks), or None when we do not have the blob or chunk."""
        data = self.get(digest)
        if data is None:
            return None
        total = max(1, -(-len(data) // CHUNK))
        if not 0 <= index < total:
            return None
        return data[index * CHUNK:(index + 1) * CHUNK], total


class Assembly:
    """One blob arriving chunk by chunk from one peer."""

    def __init__(self, digest: bytes, max_bytes: int):
        self.digest, self.max_bytes = digest, max_bytes
        self.parts: list[bytes] = []
        self.total: int | None = None

    def add(self, index: int, total: int, data: bytes) -> bytes | None:
        """Add the next chunk; returns the whole verified blob when complete."""
        if self.total is None:
            if not 1 <= total <= -(-self.max_bytes // CHUNK):
                raise BlobError("blob too large")
            self.total = total
        if total != self.total or index != len(self.parts) or len(data) > CHUNK:
            raise BlobError("chunk out of order or inconsistent")
        self.parts.append(data)
        if len(self.parts) < self.total:
            return None
        blob = b"".join(self.parts)
        if sha256(blob) != self.digest:
            raise BlobError("blob does not match its hash")
        return blob

    @property
    def next_index(self) -> int:
        return len(self.parts)
