"""Node-local indexes for the explorer, written with each committed block.

The explorer must stay fast with thousands of blocks and hundreds of jobs, so no RPC
request may scan the chain. These indexes are computed when a block is committed, from the
block, the state before it and the block's writes (sans-I/O: ``index_writes`` returns the
entries, the store puts them in the block's own write batch, so a crash keeps both or
neither). They live under their own key prefix, outside the app state: they never enter an
app hash, ``load_state`` never reads them, and ``stepchain node verify`` ignores them.

Entries (heights 8 bytes and positions 4 bytes big-endian, so keys sort by height):

* ``Xa<addr><height><index>`` -> tx hash: a tx that an account sent or is named in (a
  top-level address in its body: a transfer's ``to``, a dispute's ``challenger``);
* ``Xj<height><job id>`` -> b"": a job submitted at that height;
* ``Xt<job id><height><index>`` -> tx hash: a tx about a job (its submission included);
* ``Xe<addr><height><seq>`` -> [job id, kind, amount, note]: a job event naming an account
  (paid, slashed, jackpot ...), kept beyond the job record's last MAX_EVENTS;
* ``Xv<addr><height>`` -> [reason, amount, jailed until]: a validator jailed, with what its
  validator stake lost in that block (downtime, or a double sign: tombstoned).
"""
from __future__ import annotations

from typing import Mapping

from consensus import codec
from consensus.crypto import address_of
from consensus.jobs import k_job
from consensus.ledger import k_jail, k_stake
from consensus.types import Block

PREFIX = b"X"
P_ACCOUNT_TX, P_JOB, P_JOB_TX, P_EVENT, P_VALIDATOR = b"Xa", b"Xj", b"Xt", b"Xe", b"Xv"
JOB_KEY = k_job(b"")
JAIL_KEY = k_jail(b"")


def h8(n: int) -> bytes:
    return n.to_bytes(8, "big")


def i4(n: int) -> bytes:
    return n.to_bytes(4, "big")


def _addresses(sender: bytes, body) -> list[bytes]:
    """The accounts a tx is about, in a fixed order, once each."""
    found = [sender]
    if isinstance(body, dict):
        for key in sorted(k for k in body if isinstance(k, str)):
            value = body[key]
            if isinstance(value, bytes) and len(value) == 20 and value not in found:
                found.append(value)
    return found


def _decode(raw: bytes | None):
    try:
        return None if raw is None else codec.decode(raw)
    except ValueError:  # a value of a shape we do not know: no index entry, never a failed commit
        return None


def _tx_entries(block: Block, new_jobs: set[bytes]) -> dict[bytes, bytes]:
    out: dict[bytes, bytes] = {}
    height = h8(block.height)
    for i, tx in enumerate(block.txs):
        pos = height + i4(i)
        for addr in _addresses(address_of(tx.sender), tx.body):
            out[P_ACCOUNT_TX + addr + pos] = tx.hash
        job = tx.body.get("job") if isinstance(tx.body, dict) else None
        if tx.kind == "submit_job":  # a job's id is its submission's hash (consensus/jobs/txs.py)
            job = tx.hash if tx.hash in new_jobs else None
        if isinstance(job, bytes) and len(job) == 32:
            out[P_JOB_TX + job + pos] = tx.hash
    return out


def _job_entries(height: int, before: Mapping[bytes, bytes], writes: Mapping[bytes, bytes | None],
                 new_jobs: set[bytes]) -> dict[bytes, bytes]:
    out: dict[bytes, bytes] = {}
    seq = 0
    for key in sorted(k for k in writes if k.startswith(JOB_KEY)):
        job_id = key[len(JOB_KEY):]
        record = _decode(writes[key])
        if len(job_id) != 32 or not isinstance(record, dict):
            continue
        if key not in before:
            out[P_JOB + h8(height) + job_id] = b""
            new_jobs.add(job_id)
        for event in record.get("events") or []:
            if not (isinstance(event, list) and len(event) == 5 and event[0] == height):
                continue  # logged in an earlier block
            who = event[2]
            if isinstance(who, bytes) and len(who) == 20:
                out[P_EVENT + who + h8(height) + i4(seq)] = codec.encode([job_id, event[1], event[3], event[4]])
            seq += 1
    return out


def _validator_entries(height: int, before: Mapping[bytes, bytes],
                       writes: Mapping[bytes, bytes | None]) -> dict[bytes, bytes]:
    out: dict[bytes, bytes] = {}
    for key in sorted(k for k in writes if k.startswith(JAIL_KEY)):
        addr, now, was = key[len(JAIL_KEY):], _decode(writes[key]), _decode(before.get(key))
        if now is None or now == was or len(addr) != 20:
            continue  # unjailed, or unchanged
        stake_key = k_stake(addr, "validator")
        old = _decode(before.get(stake_key)) or 0
        new = _decode(writes[stake_key]) if stake_key in writes else old
        lost = old - (new or 0) if isinstance(old, int) and isinstance(new or 0, int) else 0
        reason = "double sign (tombstoned)" if now[1] else "downtime: missed too many blocks"
        out[P_VALIDATOR + addr + h8(height)] = codec.encode([reason, max(lost, 0), now[0]])
    return out


def index_writes(block: Block, before: Mapping[bytes, bytes],
                 writes: Mapping[bytes, bytes | None]) -> dict[bytes, bytes]:
    """Every index entry for one block: `before` is the state it ran on, `writes` its changes."""
    new_jobs: set[bytes] = set()
    out = _job_entries(block.height, before, writes, new_jobs)
    out.update(_tx_entries(block, new_jobs))
    out.update(_validator_entries(block.height, before, writes))
    return out


def all_job_ids(db) -> list[bytes]:
    """Every job this node has indexed, oldest first: read once, at start-up (metrics)."""
    with db.iterator(prefix=P_JOB, include_value=False) as it:
        return [key[len(P_JOB) + 8:] for key in it]


def page(db, prefix: bytes, limit: int, before: bytes | None = None) -> list[tuple[bytes, bytes]]:
    """Up to `limit` entries under `prefix`, newest first, strictly before the key suffix
    `before` (a cursor from an earlier page). Reads at most `limit` entries."""
    stop = prefix + before if before is not None else None
    it = db.iterator(prefix=prefix, reverse=True) if stop is None else \
        db.iterator(start=prefix, stop=stop, reverse=True)
    out = []
    try:
        for key, value in it:
            if len(out) >= limit:
                break
            out.append((key[len(prefix):], value))
    finally:
        it.close()
    return out
