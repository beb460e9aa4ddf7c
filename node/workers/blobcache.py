"""A worker's blobs on its own disk: fetched from its node as streams, verified, kept a while.

Checkpoints of real models are gigabytes, so a worker never holds one as bytes: a blob is
downloaded into a file (the client checks its id as the bytes stream in, and writes it under
its id only if it matches), and every check reads that file. The cache is bounded: past
`max_bytes` the least recently used blobs are dropped (they can be fetched again).
"""
from __future__ import annotations

import os
from pathlib import Path

DEFAULT_MAX_BYTES = 16 << 30


class BlobCache:
    def __init__(self, client, directory: str | Path, max_bytes: int = DEFAULT_MAX_BYTES):
        self.client, self.dir, self.max_bytes = client, Path(directory), max_bytes
        self.held: set[Path] = set()
        self.dir.mkdir(parents=True, exist_ok=True)

    def fetch(self, digest: bytes) -> Path | None:
        """The blob as a verified file, or None when no node serves it. It is held (never
        trimmed) until `release`: a check fetches all it needs before it reads any of it."""
        path = self.dir / digest.hex()
        if path.exists():
            os.utime(path)  # recently used
            self.held.add(path)
            return path
        if self.client.get_blob_file(digest.hex(), path) is None:
            return None
        self.held.add(path)
        self.trim(keep=path)
        return path

    def release(self) -> None:
        """The blobs fetched so far are no longer in use (a worker moves on to another shard):
        trimming may drop them again. Until then the cache may pass its bound by one check's
        blobs."""
        self.held.clear()

    def used_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.dir.iterdir() if p.is_file())

    def trim(self, keep: Path | None = None) -> None:
        """Drop least recently used blobs until the cache is within its bound."""
        kept = self.held | ({keep} if keep else set())
        files = sorted((p for p in self.dir.iterdir() if p.is_file() and p not in kept),
                       key=lambda p: (p.stat().st_mtime, p.name))
        total = sum(p.stat().st_size for p in files) + sum(p.stat().st_size for p in kept if p.exists())
        for p in files:
            if total <= self.max_bytes:
                break
            total -= p.stat().st_size
            p.unlink(missing_ok=True)


def upload(client, leaf: bytes | Path) -> str:
    """Put a checkpoint on the node: bytes in one request, a file as a stream; its hex id."""
    if isinstance(leaf, Path):
        return client.put_blob_file(leaf)["hash"]
    return client.put_blob(leaf)
