"""node.workers.referee.judge: a referee never votes by default. What it cannot fetch leaves it
undecided (it retries); an availability challenge is "served" as soon as the blob can be
fetched and "not served" only after the solver's response deadline. The challenges come from
a real chain (tests/jobworld.py); the fetch is a dict of the blobs this referee can reach."""
from __future__ import annotations

from consensus import codec
from consensus.jobs import Job, k_job
from node.workers.common import Verdict
from node.workers.referee import judge
from tests.chainfactory import availability_body
from tests.jobworld import block, challenge, tx, verifying_world


def open_challenge(c, jid: bytes) -> tuple[Job, object]:
    job = Job.from_map(codec.decode(c.view().get(k_job(jid))))
    return job, job.shards[0].challenges[0]


def test_a_computation_challenge_whose_checkpoints_cannot_be_fetched_is_undecided():
    c, jid, leaves, solver, selected, challenger = verifying_world()
    challenge(c, jid, challenger, 3, leaves)
    job, ch = open_challenge(c, jid)
    verdict = judge(job, 0, ch, c.height, {}.get)
    assert verdict.verdict == Verdict.UNDECIDED and "not served" in verdict.why


def test_a_start_challenge_without_the_manifest_is_undecided():
    c, jid, leaves, solver, selected, challenger = verifying_world()
    challenge(c, jid, challenger, -1)
    job, ch = open_challenge(c, jid)
    assert judge(job, 0, ch, c.height, {}.get).verdict == Verdict.UNDECIDED


def test_an_unserved_blob_is_a_fault_only_after_the_response_deadline():
    c, jid, leaves, solver, selected, challenger = verifying_world()
    block(c, tx(c, challenger, "challenge", availability_body(jid, 0, 0, leaves, 7)))
    job, ch = open_challenge(c, jid)
    for height in (ch.opened, ch.respond_by):
        assert judge(job, 0, ch, height, {}.get).verdict == Verdict.UNDECIDED
    assert judge(job, 0, ch, ch.respond_by + 1, {}.get).verdict == Verdict.FAULT


def test_a_blob_that_can_be_fetched_is_served_at_once_but_only_if_its_hash_matches():
    c, jid, leaves, solver, selected, challenger = verifying_world()
    block(c, tx(c, challenger, "challenge", availability_body(jid, 0, 0, leaves, -1)))
    job, ch = open_challenge(c, jid)
    manifest = codec.encode(leaves)
    assert judge(job, 0, ch, ch.opened, {ch.start_leaf: manifest}.get).verdict == Verdict.SOUND
    # a peer that answers with other bytes has not served the blob
    assert judge(job, 0, ch, ch.respond_by + 1, {ch.start_leaf: manifest + b"x"}.get).verdict == Verdict.FAULT
