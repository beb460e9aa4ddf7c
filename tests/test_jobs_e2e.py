"""A training job on a real network: every kind of cheating solver is caught and slashed,
a lazy verifier is caught, a wrong challenger pays, honest solvers are paid, the model
is fetched and checked. Also the user-facing errors of `job submit`."""
import pytest
import torch

from node.client import make_tx
from node.wallet import Keystore
from tests.jobnet import SPEC, STAKE, events_of, job_network, submit, wait_job, wait_registered
from tests.nodes import PASSWORD, new_funded_key, start_worker, wait_all
from verifier.adversary import STRATEGIES

pytestmark = pytest.mark.slow

def test_cheats_are_caught_honest_work_is_paid(net):
    nodes, workers, tmp_path = net
    n0 = nodes[0]
    cheaters = {}
    for s in STRATEGIES:
        cheaters[s] = new_funded_key(n0, f"cheat-{s}", 3 * STAKE)
        n0.cli("stake", "--from", f"cheat-{s}", "--role", "solver", "--amount", str(STAKE))
    # a drawn verifier locks 10x the reward: these can each be drawn for every shard at once
    verifiers = {"lazy": 20 * STAKE, "checker": 10 * STAKE, "whistle": 10 * STAKE}
    for name, amount in verifiers.items():
        new_funded_key(n0, name, 2 * amount)
        n0.cli("stake", "--from", name, "--role", "verifier", "--amount", str(amount))

    for s in STRATEGIES:
        workers.append(start_worker(n0, "solver", f"cheat-{s}", "--cheat", s, url=nodes[len(workers) % 2].url))
    wait_registered(n0, cheaters.values(), "solver")
    job_id = submit(n0, tmp_path, "cheats", shards=len(STRATEGIES), commit_blocks=60, verify_blocks=40)
    job = n0.rpc.get(f"/job/{job_id}")
    assert sorted(s["solver"] for s in job["shards"]) == sorted(cheaters.values())  # one shard each

    workers.append(start_worker(n0, "verifier", "lazy", "--lazy"))
    workers.append(start_worker(n0, "verifier", "checker", url=nodes[1].url))
    workers.append(start_worker(n0, "verifier", "whistle", "--whistleblower"))

    def all_caught(j):
        # a withholding solver is caught by an availability challenge, the others by recomputation
        slashed = {e[2] for e in events_of(j, "slashed") if "fraud proven" in e[4] or "did not serve" in e[4]}
        return set(cheaters.values()) <= slashed
    wait_job(n0, job_id, all_caught)

    honest = {name: new_funded_key(n0, name, 3 * STAKE) for name in ("honest1", "honest2")}
    for name in honest:
        n0.cli("stake", "--from", name, "--role", "solver", "--amount", str(STAKE))
        workers.append(start_worker(n0, "solver", name))
    job = wait_job(n0, job_id, lambda j: j["status"] == "done")

    slashed = events_of(job, "slashed")
    assert not any(e[2] in honest.values() for e in slashed), "an honest solver was slashed"
    assert any(e[2] == n0.cli("balance", "lazy")["address"] and "attested a faulty" in e[4] for e in slashed)
    paid = {}
    for _h, _k, who, amount, _note in events_of(job, "paid"):
        paid[who] = paid.get(who, 0) + amount
    assert sum(paid.get(a, 0) for a in honest.values()) == 50000 * len(STRATEGIES)
    assert not any(a in paid for a in cheaters.values())
    for s, addr in cheaters.items():
        assert n0.cli("balance", addr)["stake"]["solver"] < STAKE, s

    verified_loss_curves(n0, job)

    # the final model: fetched, checked against the chain, loadable, better than chance (33%)
    out = tmp_path / "model.pt"
    fetched = n0.cli("job", "fetch", job_id, "--out", str(out))
    assert fetched["metric_ppm"] > 600_000
    assert [r["round"] for r in fetched["rounds"]] == list(range(job["spec"]["rounds"]))
    assert fetched["rounds"][-1]["metric_ppm"] == fetched["metric_ppm"]
    assert fetched["rounds"][-1]["model_hash"] == fetched["model_hash"]
    saved = torch.load(out)
    assert saved["job"] == job_id and saved["model"] == "mlp" and saved["state_dict"]

    for w in workers[:len(STRATEGIES)]:  # the cheaters stop and leave
        w.terminate()
    for s in STRATEGIES:
        left = n0.cli("balance", f"cheat-{s}")["stake"]["solver"]
        n0.cli("unstake", "--from", f"cheat-{s}", "--role", "solver", "--amount", str(left), "--no-wait")
    wait_all(nodes, n0.rpc.status()["height"] + 2)
    wrong_challenger_pays(nodes, workers, tmp_path, honest)
    bad_commits_are_refused(n0, job_id)


def verified_loss_curves(n0, job: dict) -> None:
    """Every round keeps one curve per shard, from the solver that passed; the last interval is
    verified wherever an honest verifier attested it (every verifier checks it; it is not, when
    it held the shard's forced error or only the lazy verifier vouched for it), and `job status`
    plots them."""
    spec, curves = job["spec"], n0.rpc.get(f"/job/{job['id']}/curves")["curves"]
    assert sorted((c["round"], c["shard"]) for c in curves) == [(r, i) for r in range(spec["rounds"])
                                                                 for i in range(spec["shards"])]
    passed = {(r, i): s for r, finals in enumerate(job["finals"]) for i, s in enumerate(finals)}
    assert len(passed) == len(curves)
    for c in curves:
        assert len(c["points"]) == spec["steps"] // spec["k"]
        assert all(p["loss"] is not None and p["loss"] > 0 for p in c["points"])
    assert sum(c["points"][-1]["verified"] for c in curves) * 2 >= len(curves), curves
    text = n0.cli("job", "status", job["id"], json_out=False).stdout
    assert text.count("points verified") == len(curves) and "*" in text


def wrong_challenger_pays(nodes, workers, tmp_path, honest) -> None:
    """A verifier that challenges an honest interval loses stake to the solver."""
    n0 = nodes[0]
    troll = new_funded_key(n0, "troll", 3 * STAKE)
    n0.cli("stake", "--from", "troll", "--role", "verifier", "--amount", str(STAKE))
    job_id = submit(n0, tmp_path, "honest", shards=1, commit_blocks=60, verify_blocks=40)
    job = wait_job(n0, job_id, lambda j: j["shards"][0]["status"] in ("committed", "verifying"))
    commit = job["shards"][0]["commit"]
    from consensus import codec, merkle
    leaves = codec.decode(n0.rpc.get_blob(commit["manifest"]))
    body = {"job": bytes.fromhex(job_id), "round": 0, "shard": 0, "interval": 1,
            "start_leaf": leaves[1], "start_proof": merkle.proof(leaves, 1),
            "end_leaf": leaves[2], "end_proof": merkle.proof(leaves, 2)}
    key = Keystore(n0.home / "keystore").unlock("troll", PASSWORD)
    status = n0.rpc.status()
    tx = make_tx(key, status["chain_id"], "challenge", body, n0.rpc.account(troll)["next_nonce"], 1)
    n0.rpc.broadcast(tx)
    n0.rpc.wait_for_tx(tx.hash.hex())
    job = wait_job(n0, job_id, lambda j: any(e[2] == troll for e in events_of(j, "slashed")))
    solver = job["shards"][0]["solver"]
    assert solver in honest.values()
    assert any(e[2] == solver for e in events_of(job, "rewarded"))
    bond = 50000 * 300_000 // 1_000_000  # verifier_collateral_ppm of the shard's reward
    assert n0.cli("balance", "troll")["stake"]["verifier"] == STAKE - bond
    wait_job(n0, job_id, lambda j: j["status"] == "done")


def bad_commits_are_refused(n0, done_job_id: str) -> None:
    """Commits for a closed job or a shard not assigned to the sender never change state."""
    key = Keystore(n0.home / "keystore").unlock("honest1", PASSWORD)
    addr = n0.cli("balance", "honest1")["address"]
    before = n0.rpc.get(f"/job/{done_job_id}")
    body = {"job": bytes.fromhex(done_job_id), "round": 0, "shard": 0, "root": b"\x00" * 32, "leaves": 5,
            "manifest": b"\x00" * 32, "start": b"\x00" * 32, "start_proof": [], "final": b"\x00" * 32,
            "final_proof": [], "diverged_leaf": 0, "losses": [0] * 4}
    tx = make_tx(key, n0.rpc.status()["chain_id"], "commit_shard", body, n0.rpc.account(addr)["next_nonce"], 1)
    n0.rpc.broadcast(tx)
    with pytest.raises(Exception, match="not open"):
        n0.rpc.wait_for_tx(tx.hash.hex(), timeout=20)
    after = n0.rpc.get(f"/job/{done_job_id}")
    before.pop("height"), after.pop("height")  # the RPC stamps the height it answered at
    assert after == before


@pytest.fixture
def small_cap_net(tmp_path):
    """The job network with an 8 MiB blob cap, so that a dataset over it is a small file."""
    yield from job_network(tmp_path, max_blob_bytes=8 * 1024 * 1024)


def test_job_submit_rejects_bad_specs_before_signing(small_cap_net, tmp_path):
    nodes, _, _ = small_cap_net
    n0 = nodes[0]
    balance = n0.cli("balance", "dev")["balance"]

    def submit_error(text: str, name: str) -> str:
        path = tmp_path / f"{name}.toml"
        path.write_text(text)
        proc = n0.cli("job", "submit", "--from", "dev", str(path), check=False, json_out=False)
        assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
        return proc.stderr

    good = SPEC.format(shards=1, commit_blocks=10, verify_blocks=5)
    assert "unknown model" in submit_error(good.replace('name = "mlp"', 'name = "resnet9000"'), "model")
    assert "shape" in submit_error(good.replace("in_dim = 2", "in_dim = 5"), "shape")
    assert "k must divide" in submit_error(good.replace("k = 10", "k = 7"), "k")
    assert "not valid TOML" in submit_error("[model\n", "toml")
    assert "exceeds the balance" in submit_error(good.replace("reward_per_shard = 50000",
                                                              f"reward_per_shard = {balance}"), "budget")
    import numpy as np
    big = tmp_path / "big.npz"
    np.savez(big, x=np.zeros((600_000, 2), np.float32), y=np.zeros(600_000, np.int64))  # 9.6 MB > 8 MiB cap
    spec_file = good.replace('generator = "blobs"\nseed = 3\nn = 900\ndim = 2\nclasses = 3', f'file = "{big.name}"')
    assert "exceed" in submit_error(spec_file, "big")
    bad = tmp_path / "bad.npz"
    np.savez(bad, x=np.array([[1.0, float("nan")]], np.float32), y=np.array([0]))
    assert "NaN" in submit_error(good.replace('generator = "blobs"\nseed = 3\nn = 900\ndim = 2\nclasses = 3',
                                              f'file = "{bad.name}"'), "nan")
    assert n0.cli("balance", "dev")["balance"] == balance  # nothing was signed or spent
    wait_all(nodes, n0.rpc.status()["height"] + 1)


def test_a_job_no_solver_takes_can_be_cancelled(net, tmp_path):
    """With no solver staked the shards stay unassigned: the submitter cancels and gets the
    whole budget back (only the two tx fees and the pool fee are spent); nobody else can cancel it, and it cannot be cancelled twice."""
    nodes, _, _ = net
    n0 = nodes[0]
    before = n0.cli("balance", "dev")["balance"]
    job_id = submit(n0, tmp_path, "lonely", shards=2, commit_blocks=10, verify_blocks=5)
    job = wait_job(n0, job_id, lambda j: j["escrow"] > 0)
    assert [s["status"] for s in job["shards"]] == ["unassigned", "unassigned"]
    fee = events_of(job, "pool fee")[0][3]
    assert fee == job["escrow"] // 100   # 1% of the budget, to the jackpot pool
    assert n0.cli("balance", "dev")["balance"] == before - job["escrow"] - fee - 1

    new_funded_key(n0, "stranger", 1_000)
    for who, job_arg, reason in (("stranger", job_id, "only the job's submitter"),
                                 ("dev", "abc", "not a job id")):
        proc = n0.cli("job", "cancel", "--from", who, job_arg, check=False, json_out=False)
        assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
        assert reason in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr

    assert n0.cli("job", "cancel", "--from", "dev", job_id)["status"] == "committed"
    job = n0.cli("job", "status", job_id)
    assert job["status"] == "cancelled" and job["escrow"] == 0
    assert events_of(job, "cancelled")[0][3] == job["events"][0][3]  # the whole budget came back
    # two tx fees, the pool fee (never refunded) and funding the stranger
    assert n0.cli("balance", "dev")["balance"] == before - 2 - fee - (1_000 + 1)
    proc = n0.cli("job", "cancel", "--from", "dev", job_id, check=False, json_out=False)
    assert proc.returncode == 1 and "already cancelled" in proc.stderr, proc.stderr
    assert job_id not in n0.rpc.get("/jobs")["active"]
