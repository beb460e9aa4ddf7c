"""Soundness on a real network: blobs withheld then served, blobs never served, a job whose
dataset nobody serves, and a colluding first challenger. Honest parties are never slashed."""
from __future__ import annotations

import pytest

from consensus import codec, merkle
from node.client import make_tx
from node.wallet import Keystore
from tests.jobnet import STAKE, events_of, submit, wait_job, wait_registered
from tests.nodes import PASSWORD, new_funded_key, start_worker

pytestmark = pytest.mark.slow


def stake(n0, name: str, role: str, amount: int | None = None) -> str:
    amount = amount or (10 * STAKE if role == "verifier" else STAKE)  # a draw locks 10x the reward
    addr = new_funded_key(n0, name, 3 * amount)
    n0.cli("stake", "--from", name, "--role", role, "--amount", str(amount))
    return addr


def slashed(job: dict) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for e in events_of(job, "slashed"):
        out.setdefault(e[2], []).append(e[4])
    return out


def test_withheld_blobs_served_when_challenged_cost_the_challenger_only_its_fee(net):
    """One solver withholds its checkpoints until an availability challenge names one, then
    serves them; another never serves. The first is cleared (the challenger pays only the
    fee), the second forfeits its collateral; the honest verifier is never slashed."""
    nodes, workers, tmp_path = net
    n0 = nodes[0]
    server, hoarder = stake(n0, "server", "solver"), stake(n0, "hoarder", "solver")
    checker = stake(n0, "checker", "verifier")
    workers.append(start_worker(n0, "solver", "server", "--cheat", "withhold-then-serve"))
    workers.append(start_worker(n0, "solver", "hoarder", "--cheat", "withhold", url=nodes[1].url))
    wait_registered(n0, (server, hoarder), "solver")
    job_id = submit(n0, tmp_path, "withheld", shards=2, commit_blocks=60, verify_blocks=20)
    job = wait_job(n0, job_id, lambda j: all(s["solver"] for s in j["shards"]))
    assert sorted(s["solver"] for s in job["shards"]) == sorted([server, hoarder])
    workers.append(start_worker(n0, "verifier", "checker"))

    job = wait_job(n0, job_id, lambda j: hoarder in slashed(j) and events_of(j, "served"))
    assert any("did not serve" in why for why in slashed(job)[hoarder])
    assert server not in slashed(job) and checker not in slashed(job)
    served = events_of(job, "served")
    assert served[0][2] == server and served[0][3] == 100  # the challenge fee, burned
    # the hoarder's shard is open again; an honest solver finishes the job
    stake(n0, "honest", "solver")
    workers.append(start_worker(n0, "solver", "honest"))
    job = wait_job(n0, job_id, lambda j: j["status"] == "done", timeout=300)
    assert server not in slashed(job) and checker not in slashed(job)
    paid = {e[2] for e in events_of(job, "paid")}
    assert server in paid and hoarder not in paid
    assert n0.cli("balance", "checker")["stake"]["verifier"] == 10 * STAKE
    assert n0.cli("balance", "hoarder")["stake"]["solver"] == STAKE - 3 * 50000  # its whole collateral


def test_a_job_whose_dataset_nobody_serves_is_declined_and_cancelled(net):
    """The spec names an uploaded dataset that was never uploaded: the solver cannot train,
    declines instead of missing its deadline (no slash), and the job is cancelled."""
    nodes, workers, tmp_path = net
    n0 = nodes[0]
    solver = stake(n0, "solver", "solver")
    from node.jobspec import parse
    import numpy as np
    from verifier import data as vdata
    ds = vdata.Dataset(np.random.default_rng(1).normal(size=(400, 2)).astype(np.float32),
                       np.arange(400, dtype=np.int64) % 3)
    (tmp_path / "ghost.npz").write_bytes(vdata.save_npz(ds))
    text = (tmp_path / "x.toml")
    from tests.jobnet import SPEC
    text.write_text(SPEC.format(shards=1, commit_blocks=200, verify_blocks=10).replace(
        'generator = "blobs"\nseed = 3\nn = 900\ndim = 2\nclasses = 3', 'file = "ghost.npz"'))
    spec, _blob = parse(text.read_text(), tmp_path)  # the blob is never uploaded
    key = Keystore(n0.home / "keystore").unlock("dev", PASSWORD)
    dev = n0.cli("balance", "dev")
    tx = make_tx(key, n0.rpc.status()["chain_id"], "submit_job", {"spec": spec}, n0.rpc.account(dev["address"])["next_nonce"], 1)
    n0.rpc.broadcast(tx)
    job_id = tx.hash.hex()
    n0.rpc.wait_for_tx(job_id)
    workers.append(start_worker(n0, "solver", "solver"))
    job = wait_job(n0, job_id, lambda j: j["status"] != "active", timeout=120)
    assert job["status"] == "cancelled"
    assert [e[2] for e in events_of(job, "declined")] == [solver]
    assert not events_of(job, "slashed")
    assert events_of(job, "cancelled")[0][3] == job["events"][0][3]  # the whole budget came back
    assert n0.cli("balance", "solver")["stake"]["solver"] == STAKE


def test_a_colluding_first_challenger_cannot_shield_a_cheat(net):
    """A cheater's accomplice opens a wrong challenge the moment the shard is committed,
    hoping to be the one dispute that clears it. The honest verifier's own challenge is open
    at the same time and proves the fraud."""
    nodes, workers, tmp_path = net
    n0 = nodes[0]
    cheater = stake(n0, "cheater", "solver")
    accomplice = stake(n0, "accomplice", "verifier")
    checker = stake(n0, "checker", "verifier")
    job_id = submit(n0, tmp_path, "shield", shards=1, commit_blocks=60, verify_blocks=20)
    workers.append(start_worker(n0, "solver", "cheater", "--cheat", "forge-final"))
    job = wait_job(n0, job_id, lambda j: j["shards"][0]["status"] in ("committed", "verifying"))
    commit = job["shards"][0]["commit"]
    leaves = codec.decode(n0.rpc.get_blob(commit["manifest"]))
    body = {"job": bytes.fromhex(job_id), "round": 0, "shard": 0, "interval": 0,  # an honest interval
            "start_leaf": leaves[0], "start_proof": merkle.proof(leaves, 0),
            "end_leaf": leaves[1], "end_proof": merkle.proof(leaves, 1)}
    key = Keystore(n0.home / "keystore").unlock("accomplice", PASSWORD)
    tx = make_tx(key, n0.rpc.status()["chain_id"], "challenge", body, n0.rpc.account(accomplice)["next_nonce"], 1)
    n0.rpc.broadcast(tx)
    n0.rpc.wait_for_tx(tx.hash.hex())
    workers.append(start_worker(n0, "verifier", "checker", "--whistleblower", url=nodes[1].url))
    job = wait_job(n0, job_id, lambda j: cheater in slashed(j))
    assert any("fraud proven" in why for why in slashed(job)[cheater])
    assert checker not in slashed(job)
    rewarded = {e[2] for e in events_of(job, "rewarded")}
    assert checker in rewarded


def test_a_solver_that_lies_about_its_loss_is_slashed(net):
    """A wrong loss is a fault like a wrong checkpoint: a solver that trains honestly but writes
    a 10% lower loss into every leaf, and declares it, is slashed with the fraud proven (the
    bisection game ends on the last step of an interval, whose state hash holds the loss). A
    lie in the declaration alone is caught by rule (tests/test_loss_curves.py)."""
    nodes, workers, tmp_path = net
    n0 = nodes[0]
    liar = stake(n0, "liar", "solver")
    checker = stake(n0, "checker", "verifier")
    job_id = submit(n0, tmp_path, "loss-liar", shards=1, commit_blocks=60, verify_blocks=30)
    workers.append(start_worker(n0, "solver", "liar", "--cheat", "loss-forged"))
    workers.append(start_worker(n0, "verifier", "checker", "--whistleblower", url=nodes[1].url))
    job = wait_job(n0, job_id, lambda j: liar in slashed(j))
    assert any("fraud proven" in why for why in slashed(job)[liar])
    assert checker not in slashed(job)
