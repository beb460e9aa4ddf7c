"""A job whose checkpoints are over 200 MB, on the devnet, verified and settled: the solver
writes each leaf to disk and uploads it as a stream, the verifier (on the other validator)
fetches the leaves over P2P into files and recomputes, and every process stays far below
the size of the trajectory in memory."""
from __future__ import annotations

import pytest

from tests.jobnet import STAKE, events_of, job_network, wait_job, wait_registered
from tests.nodes import new_funded_key, start_worker

pytestmark = pytest.mark.slow

SPEC = """
[model]
name = "mlp"
in_dim = 1024
hidden = [4096, 4096]
out_dim = 10

[data]
generator = "blobs"
seed = 3
n = 400
dim = 1024
classes = 10
holdout = 0.1

[training]
optimizer = "adam"
lr = 0.001
batch_size = 8
shards = 1
rounds = 1
steps = 4
k = 2
profile = "cpu-f32-1thread"
seed = 5

[payment]
reward_per_shard = 50000
verification_fee = 100
commit_blocks = 200
verify_blocks = 100
"""
CHECKPOINT = 252_000_000  # 21M parameters with Adam in float32 (3 copies), about


def _peak_rss(proc) -> int:
    with open(f"/proc/{proc.pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0


@pytest.fixture
def big_net(tmp_path):
    yield from job_network(tmp_path, min_intervals=2, samples_per_shard=2)


def test_a_job_with_checkpoints_over_200_mb_is_verified_and_settled(big_net):
    nodes, workers, tmp_path = big_net
    n0, n1 = nodes
    solver = new_funded_key(n0, "big-solver", 3 * STAKE)
    n0.cli("stake", "--from", "big-solver", "--role", "solver", "--amount", str(STAKE))
    new_funded_key(n0, "big-verifier", 20 * STAKE)
    n0.cli("stake", "--from", "big-verifier", "--role", "verifier", "--amount", str(10 * STAKE))
    workers.append(start_worker(n0, "solver", "big-solver", "--device", "cpu"))
    wait_registered(n0, [solver], "solver")
    path = tmp_path / "big.toml"
    path.write_text(SPEC)
    job_id = n0.cli("job", "submit", "--from", "dev", str(path))["job"]
    verifier = start_worker(n0, "verifier", "big-verifier", url=n1.url)  # its blobs come over P2P
    workers.append(verifier)

    job = wait_job(n0, job_id, lambda j: j["status"] == "done", timeout=900)
    shard = job["shards"][0]
    assert shard["status"] == "passed", shard
    paid = {e[2] for e in events_of(job, "paid")}
    assert solver in paid and n0.cli("balance", "big-verifier")["address"] in paid
    assert not events_of(job, "slashed")
    blobs = sorted((n1.home / "blobs").glob("[0-9a-f]" * 64))
    assert any(p.stat().st_size > 200_000_000 for p in blobs), "the verifier's node never held a checkpoint"
    # Three leaves of ~252 MB each moved; no worker held them all (nor two and a trainer more).
    for proc in workers:
        if proc.poll() is None:
            assert _peak_rss(proc) < 2.5 * CHECKPOINT + 600_000_000, proc.args
