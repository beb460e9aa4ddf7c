"""node.workers.verifier: which shards a verifier checks, and as what, given the job record.
The jobs come from a real chain (tests/jobworld.py), parsed as the workers parse the RPC's
`record` field: the same bytes, the same consensus.jobs.Job."""
from __future__ import annotations

from consensus import codec
from consensus.jobs import Job, k_job
from node.workers.verifier import check_task
from tests.jobworld import VERIFIERS, commit, draw, solver_of, submit, verifiers_of, world


def rpc_job(c, jid: bytes) -> Job:
    return Job.from_map(codec.decode(c.view().get(k_job(jid))))


def task(j: Job, k, whistleblower: bool) -> tuple | None:
    return check_task(j, 0, j.shards[0], k.address, whistleblower)


def test_a_whistleblower_drawn_after_an_early_check_checks_again_as_a_drawn_verifier():
    """Only a drawn verifier's attestation is paid: a whistleblower that checked the commitment
    before the draw must not count that early check as done once it is drawn."""
    c = world()
    jid = submit(c, shards=1, verify_blocks=3)
    commit(c, jid)
    early = rpc_job(c, jid)
    assert early.shards[0].status == "committed"  # verifiers not drawn yet
    before_draw = {k: task(early, k, whistleblower=True) for k in VERIFIERS}
    assert all(t is not None and t.selected is False for t in before_draw.values())

    draw(c)
    late = rpc_job(c, jid)
    assert late.shards[0].status == "verifying"
    drawn = verifiers_of(c, jid)
    for k in VERIFIERS:
        after_draw = task(late, k, whistleblower=True)
        if k in drawn:
            assert after_draw.selected is True and after_draw != before_draw[k]  # a new task: check and attest
        else:
            assert after_draw == before_draw[k]  # already checked: not again


def test_a_plain_verifier_checks_only_what_it_was_drawn_for():
    c = world()
    jid = submit(c, shards=1, verify_blocks=3)
    commit(c, jid)
    assert all(task(rpc_job(c, jid), k, whistleblower=False) is None for k in VERIFIERS)
    draw(c)
    j = rpc_job(c, jid)
    drawn = verifiers_of(c, jid)
    for k in VERIFIERS:
        t = task(j, k, whistleblower=False)
        assert (t is not None) == (k in drawn)
    root = j.shards[0].commit.root
    assert task(j, drawn[0], whistleblower=False) == (jid, 0, 0, root, True, 0)


def test_nobody_checks_a_shard_with_nothing_committed_and_a_solver_never_checks_its_own():
    c = world()
    jid = submit(c, shards=1, verify_blocks=3)
    j = rpc_job(c, jid)
    assert j.shards[0].status == "assigned"
    assert all(task(j, k, whistleblower=True) is None for k in VERIFIERS)
    commit(c, jid)
    assert task(rpc_job(c, jid), solver_of(c, jid), whistleblower=True) is None


def test_every_cheat_the_cli_offers_is_one_a_solver_can_play():
    """`solver run --cheat` lists its choices without importing torch; each must be a strategy
    verifier.adversary publishes, or a withholding one the solver worker plays itself."""
    from node.cli import CHEATS
    from node.workers.solver import WITHHOLDING
    from verifier.adversary import RATIONAL, STRATEGIES
    assert set(CHEATS) <= set(STRATEGIES) | set(RATIONAL) | set(WITHHOLDING)
    assert set(STRATEGIES) <= set(CHEATS) and set(WITHHOLDING) <= set(CHEATS)
