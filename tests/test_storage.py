"""node/storage.py and node/blobgc.py: which blobs a node keeps, and what its GC frees.

The pin set is computed from real chain states with jobs (tests/jobworld.py, no training);
collection runs on a real blob directory (p2p/blobs.py) with a test clock. A node process
is in tests/test_storage_e2e.py.
"""
from __future__ import annotations

import os
import random
import time

import pytest

from consensus import codec
from consensus.blobid import blob_id
from consensus.crypto import sha256
from node import storage as st
from node.blobgc import BlobKeeper, StorageFull
from node.home import Config, HomeError
from p2p.blobs import BlobError, BlobStore
from tests.chainfactory import commit_body
from tests.jobworld import (ALICE, block, blocks, challenge, commit, game_body, job, leaves_for, open_game, pass_round,
                            shard, solver_of, submit, tx, until, verifying_world, world)

POLICY = st.StoragePolicy(retention_blocks=5, grace_s=100.0)


def data(tag: bytes) -> dict:
    return {"blob": sha256(b"dataset/" + tag), "size": 1000}


def jobs_of(c) -> list:
    return [st.parse_job(c.state[st.JOB_PREFIX + j]) for j in st.job_ids(c.state.keys())]


def pins(c, manifests=None, policy=POLICY) -> st.Pins:
    return st.pin_set(jobs_of(c), c.height, policy, manifests or {})


def cancel(c, jid) -> None:
    block(c, tx(c, ALICE, "cancel_job", {"job": jid}))


# -- the pin set --------------------------------------------------------------------------------

def test_an_open_job_pins_its_dataset_and_a_generated_dataset_pins_nothing():
    c = world(solvers=())
    uploaded = submit(c, data=data(b"a"))
    submit(c)  # a built-in generator: no blob
    assert pins(c).ids == {data(b"a")["blob"]}
    assert pins(c).next_release is None
    assert job(c, uploaded)["status"] == "active"


def test_a_commit_pins_its_manifest_ends_and_the_leaves_its_manifest_lists():
    c = world()
    jid = submit(c, shards=1)
    until(c, lambda: shard(c, jid)["status"] == "assigned")
    leaves = commit(c, jid)[0]
    manifest = codec.encode(leaves)
    without = pins(c).ids
    assert without == {blob_id(manifest), leaves[0], leaves[-1]}  # the manifest is not held yet
    assert pins(c, {blob_id(manifest): manifest}).ids == {blob_id(manifest), *leaves}
    assert st.wanted_manifests(jobs_of(c), c.height, POLICY) == [blob_id(manifest)]


def test_a_manifest_that_does_not_match_the_committed_root_pins_no_leaves():
    """Adversarial: bytes stored under the manifest's id that list other blobs (or garbage)
    must not let anyone pin blobs of their choosing."""
    c = world()
    jid = submit(c, shards=1)
    until(c, lambda: shard(c, jid)["status"] == "assigned")
    leaves = commit(c, jid)[0]
    mid = blob_id(codec.encode(leaves))
    others = [sha256(b"spam" + bytes([i])) for i in range(len(leaves))]
    for raw in (codec.encode(others), codec.encode(leaves[:-1]), b"\xc1garbage", codec.encode([1] * len(leaves)),
                b"\x00" * (st.MAX_MANIFEST_BYTES + 1)):
        assert pins(c, {mid: raw}).ids == {mid, leaves[0], leaves[-1]}


def test_finals_of_every_round_stay_pinned_and_a_passed_rounds_other_leaves_do_not():
    c = world()
    jid = submit(c, shards=2, rounds=2, commit_blocks=5)
    first = pass_round(c, jid)
    assert job(c, jid)["round"] == 1
    finals = {first[0][-1], first[1][-1]}
    assert finals == set(job(c, jid)["finals"][0])
    held = {blob_id(codec.encode(ls)): codec.encode(ls) for ls in first.values()}
    now = pins(c, held).ids
    assert finals <= now
    assert not (set(first[0][:-1]) | set(first[1][:-1])) & now  # round 0 is settled: its other leaves go


def test_a_bisection_games_states_are_pinned_while_it_is_played():
    c, jid, leaves, solver, selected, challenger = verifying_world()
    challenge(c, jid, challenger, 3, leaves, play=False)
    game = open_game(c, jid, challenger)
    assert {game["lo_hash"], game["hi_hash"]} <= pins(c).ids
    mid = sha256(b"a state between two leaves")
    block(c, tx(c, solver, "midpoint", game_body(c, jid, challenger, hash=mid)))
    assert open_game(c, jid, challenger)["mid_hash"] == mid
    assert mid not in leaves and mid in pins(c).ids


def test_a_closed_job_pins_for_the_retention_period_then_releases():
    c = world(solvers=())
    jid = submit(c, data=data(b"x"))
    cancel(c, jid)
    closed = c.height
    assert st.closed_at(st.parse_job(c.state[st.JOB_PREFIX + jid])) == closed
    assert pins(c).ids == {data(b"x")["blob"]}
    assert pins(c).next_release == closed + POLICY.retention_blocks
    blocks(c, POLICY.retention_blocks - 1)
    assert pins(c).ids == {data(b"x")["blob"]}
    block(c)
    assert c.height == closed + POLICY.retention_blocks
    assert pins(c) == st.Pins(frozenset(), None)


def test_a_done_job_counts_its_retention_from_completion():
    c = world()
    jid = submit(c, shards=1, data=data(b"d"))
    leaves = pass_round(c, jid)[0]
    assert job(c, jid)["status"] == "done"
    done_at = next(e[0] for e in job(c, jid)["events"] if e[1] == "done")
    assert pins(c).next_release == done_at + POLICY.retention_blocks
    assert {data(b"d")["blob"], leaves[-1]} <= pins(c).ids  # the submitter fetches the finals
    blocks(c, done_at + POLICY.retention_blocks - c.height)
    assert pins(c).ids == frozenset()


def test_a_blob_two_jobs_reference_survives_the_close_of_one():
    c = world(solvers=())
    shared = data(b"shared")
    keep = submit(c, data=shared)
    gone = submit(c, data=shared, seed=2)
    cancel(c, gone)
    blocks(c, POLICY.retention_blocks + 1)
    assert pins(c).ids == {shared["blob"]}
    cancel(c, keep)
    blocks(c, POLICY.retention_blocks)
    assert pins(c).ids == frozenset()


# -- collection ---------------------------------------------------------------------------------

def _blob(tag: int, size: int = 10, mtime: float = 0.0) -> st.BlobFile:
    return st.BlobFile(sha256(bytes([tag])), size, mtime)


def test_collect_frees_unpinned_blobs_and_temporaries_past_the_grace_period_only():
    pinned_old, old, young = _blob(1, 100), _blob(2, 20), _blob(3, 7, mtime=950.0)
    temps = [st.TempFile(".part-old", 5, 0.0), st.TempFile(".part-new", 3, 990.0)]
    pins_ = st.Pins(frozenset({pinned_old.id}), None)
    out = st.collect([pinned_old, old, young], temps, pins_, now=1000.0, grace_s=100.0)
    assert out == st.Collection(delete=(old.id,), delete_temp=(".part-old",), freed_bytes=25,
                                pinned_bytes=100, kept_bytes=110)


def test_collect_never_deletes_a_pinned_blob_and_counts_a_future_file_as_new():
    future = _blob(4, mtime=5000.0)
    pins_ = st.Pins(frozenset({_blob(1).id}), None)
    out = st.collect([_blob(1, mtime=-1e9), future], [st.TempFile(".part-x", 1, 5000.0)], pins_, 1000.0, 0.0)
    assert out.delete == () and out.delete_temp == ()


def test_a_spammers_unreferenced_blobs_are_all_collected_and_the_report_does_not_depend_on_order():
    """Adversarial: many blobs no job references; the decision lists them sorted whatever
    order the directory listing gave."""
    c = world(solvers=())
    submit(c, data=data(b"real"))
    real = st.BlobFile(data(b"real")["blob"], 1000, 0.0)
    spam = [st.BlobFile(sha256(b"spam" + i.to_bytes(4, "big")), 50, 0.0) for i in range(500)]
    everything = spam + [real]
    outs = set()
    for seed in range(3):
        random.Random(seed).shuffle(everything)
        outs.add(st.collect(everything, [], pins(c), now=1000.0, grace_s=100.0))
    (out,) = outs
    assert out.delete == tuple(sorted(b.id for b in spam)) and out.freed_bytes == 500 * 50
    assert out.pinned_bytes == out.kept_bytes == 1000


# -- the blob directory -------------------------------------------------------------------------

def test_the_blob_store_lists_deletes_and_counts_blobs_sidecars_and_partial_uploads(tmp_path):
    store = BlobStore(tmp_path / "blobs")
    a, b = store.put(b"a" * 100), store.put(b"b" * 30)
    (store.dir / (a.hex() + ".leaves")).write_bytes(b"s" * 7)
    orphan = sha256(b"gone").hex() + ".leaves"
    (store.dir / orphan).write_bytes(b"o" * 3)
    w = store.writer()
    w.write(b"p" * 11)
    w._file.flush()
    assert [(d, s) for d, s, _ in store.list_blobs()] == sorted([(a, 107), (b, 30 + 32)])  # put wrote b's leaves
    temps = store.list_temp()
    assert sorted(n for n, _, _ in temps) == sorted([orphan, os.path.basename(w._tmp)])
    assert store.used_bytes() == 100 + 7 + 30 + 32 + 3 + 11
    with pytest.raises(BlobError):
        store.delete_temp(a.hex())          # a blob is not a temporary file
    with pytest.raises(BlobError):
        store.delete_temp(a.hex() + ".leaves")  # nor the sidecar of a blob we hold
    with pytest.raises(BlobError):
        store.delete_temp("../outside")
    assert store.delete(a) == 107 and not store.has(a) and not (store.dir / (a.hex() + ".leaves")).exists()
    assert store.delete(a) == 0
    assert store.delete_temp(orphan) == 3
    w.abort()
    assert store.used_bytes() == 30 + 32 and [d for d, _, _ in store.list_blobs()] == [b]


# -- the keeper: policy executed on a real directory ----------------------------------------------

class Clock:
    def __init__(self) -> None:
        self.now = time.time()  # files are dated by the real clock when written

    def __call__(self) -> float:
        return self.now


def keeper_for(c, tmp_path, **cfg) -> tuple[BlobKeeper, Clock]:
    clock = Clock()
    config = Config(blob_retention_blocks=5, blob_grace_s=100, **cfg)
    return BlobKeeper(c, BlobStore(tmp_path / "blobs"), config, clock=clock), clock


def _age(store: BlobStore, digest: bytes, at: float) -> None:
    os.utime(store.path(digest), (at, at))


def test_gc_keeps_what_active_jobs_pin_and_frees_the_rest(tmp_path):
    c = world()
    keeper, clock = keeper_for(c, tmp_path)
    store = keeper.store
    jid = submit(c, shards=1)
    until(c, lambda: shard(c, jid)["status"] == "assigned")
    # the solver uploads its checkpoints and manifest, then commits to them
    ids = [store.put(b"checkpoint %d" % i) for i in range(len(leaves_for(c, jid)))]
    manifest = store.put(codec.encode(ids))
    spam = [store.put(b"spam %d" % i) for i in range(20)]
    for d in [*ids, manifest, *spam]:
        _age(store, d, clock.now - 10)
    assert keeper.run_pass().delete == ()  # all within the grace period
    block(c, tx(c, solver_of(c, jid), "commit_shard", commit_body(jid, 0, 0, ids)))
    clock.now += 200
    out = keeper.run_pass()
    assert out.delete == tuple(sorted(spam))
    assert all(store.has(d) for d in [*ids, manifest]) and not any(store.has(d) for d in spam)
    assert keeper.report() == {"bytes": store.used_bytes(), "blobs": len(ids) + 1,
                               "pinned_bytes": store.used_bytes(), "limit": keeper.limit}


def test_a_closed_jobs_blobs_are_freed_after_retention_and_the_loop_is_woken(tmp_path):
    c = world(solvers=())
    keeper, clock = keeper_for(c, tmp_path)
    ds = keeper.store.put(b"a dataset")
    jid = submit(c, data={"blob": ds, "size": 9})
    clock.now += 1000
    keeper.on_commit(c.height)
    keeper._wake.clear()
    cancel(c, jid)
    keeper.on_commit(c.height)
    assert keeper._wake.is_set()  # a job closed: a pass is due
    keeper._wake.clear()
    assert keeper.run_pass().delete == () and keeper.store.has(ds)
    blocks(c, 4)
    keeper.on_commit(c.height)
    assert not keeper._wake.is_set()
    block(c)
    keeper.on_commit(c.height)
    assert keeper._wake.is_set()  # the retention ended
    assert keeper.run_pass().delete == (ds,) and not keeper.store.has(ds)


def test_uploads_are_refused_past_the_disk_bound_unless_a_gc_pass_makes_room(tmp_path):
    c = world(solvers=())
    keeper, clock = keeper_for(c, tmp_path, max_blob_disk_bytes=1000)
    ds = keeper.store.put(b"d" * 568)  # 600 bytes with its 32-byte leaf-hash sidecar
    submit(c, data={"blob": ds, "size": 568})
    junk = keeper.store.put(b"j" * 268)
    keeper.admit()
    with pytest.raises(StorageFull, match="blob storage is full: 900 of 1000 bytes"):
        keeper.charge(200)             # the junk is young: nothing to free
    clock.now += 1000
    keeper.admit()
    keeper.charge(200)                 # the pass freed the junk
    assert not keeper.store.has(junk) and keeper.store.has(ds)
    big = keeper.store.put(b"b" * 368)  # now 1000 bytes: at the bound, and all pinned
    submit(c, data={"blob": big, "size": 368}, seed=2)
    clock.now += 1000
    with pytest.raises(StorageFull):    # pinned blobs stay, whatever the pressure
        keeper.admit()
    assert keeper.store.has(ds) and keeper.store.has(big) and keeper.used == 1000


def test_blob_storage_settings_are_checked_in_the_config():
    for bad in ("blob_grace_s = -1", "max_blob_disk_bytes = -5", "blob_gc_interval_s = 0",
                'blob_retention_blocks = "a day"'):
        with pytest.raises(HomeError, match="blob_"):
            Config.from_toml(bad + "\n")
    cfg = Config.from_toml(Config().to_toml())
    assert (cfg.blob_retention_blocks, cfg.blob_grace_s, cfg.max_blob_disk_bytes) == (86_400, 3_600, 64 << 30)

