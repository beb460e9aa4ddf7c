"""The explorer's node-local indexes, computed from a block, the state before it and its writes
(sans-I/O): which entries a block produces, and the newest-first pages read from them."""
from __future__ import annotations

from dataclasses import dataclass

import plyvel

from consensus import codec
from consensus.jobs import k_job
from consensus.ledger import k_jail, k_stake
from node import explorer_index as ix
from tests.chainfactory import key, make_tx, transfer


@dataclass
class _Block:  # what index_writes reads of a block
    height: int
    txs: tuple


def test_a_transfer_is_indexed_for_its_sender_and_recipient_and_nothing_else():
    a, b = key(1), key(2)
    tx = transfer(a, b.address, 5, nonce=0)
    out = ix.index_writes(_Block(7, (tx,)), {}, {})
    assert out == {ix.P_ACCOUNT_TX + a.address + ix.h8(7) + ix.i4(0): tx.hash,
                   ix.P_ACCOUNT_TX + b.address + ix.h8(7) + ix.i4(0): tx.hash}


def test_a_new_job_its_submission_and_its_events_of_this_block_are_indexed():
    dev, solver = key(3), key(4)
    submit = make_tx(dev, "submit_job", {"spec": {}}, nonce=0)
    job_id = submit.hash  # as the chain names a job
    record = {"id": job_id, "submitter": dev.address, "events": [
        [8, "assigned", solver.address, 300, "shard 0"], [9, "slashed", solver.address, 300, "fraud <b>proven</b>"],
        [9, "paid", None, 1, "nobody"]]}
    out = ix.index_writes(_Block(9, (submit,)), {}, {k_job(job_id): codec.encode(record)})
    assert out[ix.P_JOB + ix.h8(9) + job_id] == b""
    assert out[ix.P_JOB_TX + job_id + ix.h8(9) + ix.i4(0)] == submit.hash
    events = {k: codec.decode(v) for k, v in out.items() if k.startswith(ix.P_EVENT)}
    assert events == {ix.P_EVENT + solver.address + ix.h8(9) + ix.i4(0):
                      [job_id, "slashed", 300, "fraud <b>proven</b>"]}  # only this block's, only accounts
    again = ix.index_writes(_Block(10, ()), {k_job(job_id): codec.encode(record)}, {k_job(job_id): codec.encode(record)})
    assert again == {}  # an existing job, no event of block 10: nothing new


def test_a_jailing_records_the_reason_and_the_stake_lost():
    v = key(5).address
    before = {k_stake(v, "validator"): codec.encode(1000)}
    writes = {k_jail(v): codec.encode([40, True]), k_stake(v, "validator"): codec.encode(950)}
    out = ix.index_writes(_Block(20, ()), before, writes)
    assert {k: codec.decode(x) for k, x in out.items()} == {
        ix.P_VALIDATOR + v + ix.h8(20): ["double sign (tombstoned)", 50, 40]}
    assert ix.index_writes(_Block(21, ()), {k_jail(v): codec.encode([40, True])}, {k_jail(v): None}) == {}  # unjailed


def test_pages_are_newest_first_and_cursors_give_each_entry_once(tmp_path):
    db = plyvel.DB(str(tmp_path / "db"), create_if_missing=True)
    try:
        addr, other = key(6).address, key(7).address
        for h in range(1, 8):
            db.put(ix.P_ACCOUNT_TX + addr + ix.h8(h) + ix.i4(0), bytes([h]) * 32)
        db.put(ix.P_ACCOUNT_TX + other + ix.h8(5) + ix.i4(0), b"x" * 32)  # another account's: never listed
        seen, cursor = [], None
        for _ in range(5):
            rows = ix.page(db, ix.P_ACCOUNT_TX + addr, 3, cursor)
            seen += [v[0] for _, v in rows]
            if len(rows) < 3:
                break
            cursor = rows[-1][0]
        assert seen == [7, 6, 5, 4, 3, 2, 1]
    finally:
        db.close()


def test_two_jobs_one_submitter_one_block_each_lists_its_own_submission():
    """A job's id is its submit_job tx's hash: with two submissions from one account in a block,
    each job's tx list names its own, never the other's."""
    dev = key(8)
    first = make_tx(dev, "submit_job", {"spec": {"n": 1}}, nonce=0)
    second = make_tx(dev, "submit_job", {"spec": {"n": 2}}, nonce=1)
    writes = {k_job(tx.hash): codec.encode({"id": tx.hash, "submitter": dev.address, "events": []})
              for tx in (first, second)}
    out = ix.index_writes(_Block(12, (first, second)), {}, writes)
    job_txs = {k[len(ix.P_JOB_TX):len(ix.P_JOB_TX) + 32]: v for k, v in out.items() if k.startswith(ix.P_JOB_TX)}
    assert job_txs == {first.hash: first.hash, second.hash: second.hash}
    assert {k[-32:] for k in out if k.startswith(ix.P_JOB)} == {first.hash, second.hash}
