"""Forced errors on a real network, every shard carrying one: the honest solver plants it and
reveals it, a whistleblower that catches it wins the jackpot, a lazy verifier that attested it
loses its collateral, and nobody honest is slashed."""
from __future__ import annotations

import pytest

from tests.jobnet import STAKE, events_of, submit, wait_job, wait_registered
from tests.nodes import new_funded_key, start_worker

pytestmark = pytest.mark.slow


def test_a_whistleblower_wins_the_jackpot_and_a_lazy_verifier_loses_stake(forced_net):
    nodes, workers, tmp_path = forced_net
    n0 = nodes[0]
    solver = new_funded_key(n0, "solver", 3 * STAKE)
    n0.cli("stake", "--from", "solver", "--role", "solver", "--amount", str(STAKE))
    roles = {"lazy": ["--lazy"], "whistle": ["--whistleblower", "--check", "all"]}
    for name in roles:
        new_funded_key(n0, name, 3 * STAKE)
        n0.cli("stake", "--from", name, "--role", "verifier", "--amount", str(STAKE))
    lazy, whistle = (n0.cli("balance", name)["address"] for name in roles)
    workers.append(start_worker(n0, "solver", "solver"))
    wait_registered(n0, [solver], "solver")
    job_id = submit(n0, tmp_path, "forced", shards=1, commit_blocks=60, verify_blocks=60)
    workers.append(start_worker(n0, "verifier", "lazy", "--lazy"))
    # the whistleblower starts once the lazy verifier, the only one drawn, has attested (had it
    # caught the forced error first, the reveal would have told the lazy one where it is); it
    # re-runs every interval of shards it was not drawn for
    wait_job(n0, job_id, lambda j: any(v["verifier"] == lazy and v["attested"] for v in j["shards"][0]["verifiers"]))
    workers.append(start_worker(n0, "verifier", "whistle", *roles["whistle"], url=nodes[1].url))
    job = wait_job(n0, job_id, lambda j: j["status"] != "active", timeout=240)

    assert job["status"] == "done"
    revealed = events_of(job, "revealed")
    assert len(revealed) == 1 and revealed[0][2] == solver and "forced error in interval" in revealed[0][4]
    [jackpot] = events_of(job, "jackpot")
    assert jackpot[2] == whistle and jackpot[3] > 0
    slashed = events_of(job, "slashed")
    assert [e[2] for e in slashed] == [lazy] and "forced error" in slashed[0][4]
    lock = 50000 * 10  # attest_collateral_ppm: 10 x the reward
    assert n0.cli("balance", "lazy")["stake"]["verifier"] == STAKE - lock
    assert n0.cli("balance", "whistle")["stake"]["verifier"] == STAKE
    # a forced-error shard passes and is paid like an honest one
    paid = {}
    for e in events_of(job, "paid"):
        paid[e[2]] = paid.get(e[2], 0) + e[3]
    assert paid[solver] == 50000 and lazy not in paid
    assert n0.cli("balance", "solver")["stake"]["solver"] == STAKE
