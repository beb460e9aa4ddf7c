"""plyvel storage: blocks, commits, state, tx index and metadata in one LevelDB.

Every committed block goes in with all of its state writes in one synced WriteBatch, so a
crash leaves either the whole block or none of it. The app-hash of every height and the
hash of its write-set are kept too, so the hash chain can be re-checked without replay.
"""
from __future__ import annotations

from pathlib import Path

import plyvel

from . import codec
from .crypto import sha256
from .ledger import write_set_hash
from .types import Block, Commit

P_BLOCK, P_HASH, P_COMMIT, P_STATE, P_TX, P_APP, P_WRITES, P_META = (
    b"B", b"H", b"C", b"S", b"T", b"A", b"W", b"M")
M_TIP = P_META + b"tip"
M_LAST_SIGNED = P_META + b"last_signed"


class StoreError(RuntimeError):
    pass


def _h(height: int) -> bytes:
    return height.to_bytes(8, "big")


class Store:
    def __init__(self, path: str | Path):
        Path(path).mkdir(parents=True, exist_ok=True)
        try:
            self.db = plyvel.DB(str(path), create_if_missing=True)
        except plyvel.IOError as exc:
            raise StoreError(f"cannot open the database at {path}: {exc} (is another node running?)") from None

    def close(self) -> None:
        self.db.close()

    # -- writing --------------------------------------------------------------------------

    def init_genesis(self, writes: dict[bytes, bytes | None], app_hash: bytes, genesis_hash: bytes) -> None:
        with self.db.write_batch(sync=True) as wb:
            for k, val in writes.items():
                if val is not None:
                    wb.put(P_STATE + k, val)
            wb.put(P_APP + _h(0), app_hash)
            wb.put(M_TIP, codec.encode([0, genesis_hash, app_hash]))

    def commit_block(self, block: Block, commit: Commit, writes: dict[bytes, bytes | None],
                     app_hash: bytes, index: dict[bytes, bytes] | None = None) -> None:
        """Persist a final block, its commit and its state changes atomically, with the node's
        own `index` entries (node/explorer_index.py: never state, never in an app hash)."""
        h = block.height
        with self.db.write_batch(sync=True) as wb:
            wb.put(P_BLOCK + _h(h), block.encode())
            wb.put(P_HASH + block.hash, _h(h))
            wb.put(P_COMMIT + _h(h), codec.encode(commit.to_obj()))
            for i, tx in enumerate(block.txs):
                wb.put(P_TX + tx.hash, _h(h) + i.to_bytes(4, "big"))
            for k, val in writes.items():
                if val is None:
                    wb.delete(P_STATE + k)
                else:
                    wb.put(P_STATE + k, val)
            wb.put(P_APP + _h(h), app_hash)
            wb.put(P_WRITES + _h(h), write_set_hash(writes))
            wb.put(M_TIP, codec.encode([h, block.hash, app_hash]))
            for k, val in (index or {}).items():
                wb.put(k, val)

    # -- reading --------------------------------------------------------------------------

    def is_initialized(self) -> bool:
        return self.db.get(M_TIP) is not None

    def tip(self) -> tuple[int, bytes, bytes]:
        """(height, block hash, app hash) of the last committed block (height 0: genesis)."""
        raw = self.db.get(M_TIP)
        if raw is None:
            raise StoreError("the database has no genesis: run `stepchain init` first")
        height, block_hash, app_hash = codec.decode(raw)
        return height, block_hash, app_hash

    def load_state(self) -> dict[bytes, bytes]:
        n = len(P_STATE)
        return {k[n:]: v for k, v in self.db.iterator(prefix=P_STATE)}

    def block(self, height: int) -> Block | None:
        raw = self.db.get(P_BLOCK + _h(height))
        return Block.decode(raw) if raw else None

    def block_bytes(self, height: int) -> bytes | None:
        return self.db.get(P_BLOCK + _h(height))

    def height_of(self, block_hash: bytes) -> int | None:
        raw = self.db.get(P_HASH + block_hash)
        return int.from_bytes(raw, "big") if raw else None

    def commit(self, height: int) -> Commit | None:
        raw = self.db.get(P_COMMIT + _h(height))
        return Commit.from_obj(codec.decode(raw)) if raw else None

    def tx_location(self, tx_hash: bytes) -> tuple[int, int] | None:
        raw = self.db.get(P_TX + tx_hash)
        return (int.from_bytes(raw[:8], "big"), int.from_bytes(raw[8:], "big")) if raw else None

    def app_hash(self, height: int) -> bytes | None:
        return self.db.get(P_APP + _h(height))

    def verify_hash_chain(self) -> int:
        """Check app_hash(h) = sha256(app_hash(h-1) || write-set hash(h)) and that each stored
        block carries it; returns the number of heights checked. Raises StoreError."""
        tip, tip_hash, tip_app = self.tip()
        prev = self.app_hash(0)
        for h in range(1, tip + 1):
            app, ws = self.app_hash(h), self.db.get(P_WRITES + _h(h))
            block = self.block(h)
            if app is None or ws is None or block is None:
                raise StoreError(f"height {h} is missing from the store")
            if app != sha256(prev + ws) or block.header.app_hash != app:
                raise StoreError(f"app hash chain broken at height {h}")
            prev = app
        if prev != tip_app or (tip > 0 and self.block(tip).hash != tip_hash):
            raise StoreError("tip metadata does not match the last block")
        return tip

    # -- validator safety -----------------------------------------------------------------

    def last_signed(self) -> list | None:
        raw = self.db.get(M_LAST_SIGNED)
        return codec.decode(raw) if raw else None

    def set_last_signed(self, record: list) -> None:
        self.db.put(M_LAST_SIGNED, codec.encode(record), sync=True)
