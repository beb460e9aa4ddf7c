"""A shard's leaves on disk, written as training makes them.

A real model's checkpoint is gigabytes, so a solver never holds its trajectory: each leaf
goes to its own file the moment it is made (streamed from the live tensors, hashed on the
way, so its blob id costs no second pass), and the index of ids is kept beside them. The
directory lives until the shard is settled; then the solver drops it.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from consensus.blobid import blob_id

from . import checkpoint
from .checkpoint import TrainState

INDEX = "leaves.json"
DONE = "done.json"


class LeafDir:
    """Leaf files `<index>.ckpt` and their blob ids; what `training.train_leaves` stores into."""

    def __init__(self, directory: str | Path):
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        index = self.dir / INDEX
        self.ids: dict[int, bytes] = {}
        self.finite: dict[int, bool] = {}
        self.loss: dict[int, int] = {}  # each leaf's loss field (float64 bits of its interval's sum)
        saved = json.loads(index.read_text()) if index.exists() else {}
        if "loss" in saved:  # an index from before leaves held losses is trained again
            self.ids = {int(i): bytes.fromhex(h) for i, h in saved["ids"].items()}
            self.finite = {int(i): bool(f) for i, f in saved["finite"].items()}
            self.loss = {int(i): int(x) for i, x in saved["loss"].items()}

    def _declared(self) -> dict | None:
        try:
            done = json.loads((self.dir / DONE).read_text())
        except (FileNotFoundError, ValueError):
            return None
        return done if {"diverged_leaf", "losses"} <= set(done) and self.loss else None

    @property
    def done(self) -> int | None:
        """The diverged leaf declared once training finished (0: none), None while unfinished."""
        declared = self._declared()
        return None if declared is None else declared["diverged_leaf"]

    @property
    def declared_losses(self) -> list[int]:
        """The per-interval mean losses to commit (set by `finish`)."""
        return list(self._declared()["losses"])

    def interval_losses(self, count: int, k: int) -> list[int]:
        """What an honest commit declares: each interval's mean loss, from its end leaf."""
        return [checkpoint.interval_mean(self.loss[i], k) for i in range(1, count)]

    def finish(self, diverged_leaf: int, losses: list[int]) -> None:
        tmp = self.dir / f".{DONE}.part"
        tmp.write_text(json.dumps({"diverged_leaf": diverged_leaf, "losses": losses}))
        os.replace(tmp, self.dir / DONE)

    def path(self, index: int) -> Path:
        return self.dir / f"{index}.ckpt"

    def put(self, index: int, state: TrainState) -> Path:
        path = self.path(index)
        self.ids[index] = checkpoint.save(state, path)
        self.finite[index] = checkpoint.is_finite(state)
        self.loss[index] = state.loss
        self._save_index()
        return path

    def put_raw(self, index: int, raw: bytes) -> Path:
        """A leaf that is already bytes (a test cheat's forgery): stored as it is."""
        path = self.path(index)
        tmp = path.with_name(f".{path.name}.part")
        tmp.write_bytes(raw)
        os.replace(tmp, path)
        self.ids[index] = blob_id(raw)
        try:
            state = checkpoint.decode(raw)
            self.finite[index], self.loss[index] = checkpoint.is_finite(state), state.loss
        except checkpoint.CheckpointError:
            self.finite[index] = True  # not a checkpoint at all: nothing to declare about it
            self.loss[index] = 0
        self._save_index()
        return path

    def _save_index(self) -> None:
        tmp = self.dir / f".{INDEX}.part"
        tmp.write_text(json.dumps({"ids": {str(i): h.hex() for i, h in sorted(self.ids.items())},
                                   "finite": {str(i): f for i, f in sorted(self.finite.items())},
                                   "loss": {str(i): x for i, x in sorted(self.loss.items())}}))
        os.replace(tmp, self.dir / INDEX)

    def hashes(self, count: int) -> list[bytes]:
        """The blob ids of leaves 0..count-1 (KeyError if one was never stored)."""
        return [self.ids[i] for i in range(count)]

    def paths(self, count: int) -> list[Path]:
        return [self.path(i) for i in range(count)]

    def first_nonfinite(self, count: int) -> int | None:
        """What a commit declares: its first leaf with an inf or a NaN, or None."""
        return next((i for i in range(count) if not self.finite[i]), None)

    def remove(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)
