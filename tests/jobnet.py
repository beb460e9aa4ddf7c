"""The job network the end-to-end job tests share: two validators, a small 4-interval job
spec, and the waits and helpers those tests use (nodes themselves come from tests/nodes.py)."""
from __future__ import annotations

import time

from tests.nodes import init_network, set_genesis_params

SPEC = """
[model]
name = "mlp"
in_dim = 2
hidden = [16]
out_dim = 3

[data]
generator = "blobs"
seed = 3
n = 900
dim = 2
classes = 3
holdout = 0.2

[training]
optimizer = "adam"
lr = 0.02
batch_size = 32
shards = {shards}
rounds = 1
steps = 40
k = 10
profile = "cpu-f32-1thread"
seed = 5

[payment]
reward_per_shard = 50000
verification_fee = 100
commit_blocks = {commit_blocks}
verify_blocks = {verify_blocks}
"""
STAKE = 1_000_000


def job_network(tmp_path, **params):
    """Two validators (started) and a list the test appends its worker processes to; all are
    stopped afterwards, and every node must exit cleanly. `params` override genesis ones."""
    nodes = init_network(tmp_path, 2)
    # a 4-interval job where each verifier re-runs every interval (3 drawn + the last), so each
    # cheat is found by whoever is drawn
    set_genesis_params(nodes, **{"min_intervals": 4, "samples_per_shard": 3, "dispute_blocks": 30, **params})
    for n in nodes:
        n.start(wait=False)
    for n in nodes:
        n.wait_rpc()
    workers = []
    yield nodes, workers, tmp_path
    for w in workers:
        w.terminate()
        w.wait(20)
    for n in nodes:
        if n.proc is not None:
            assert n.stop() == 0, n.log()


def events_of(job: dict, kind: str) -> list[list]:
    return [e for e in job["events"] if e[1] == kind]


def wait_job(node, job_id: str, until, timeout: float = 240) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        job = node.rpc.get(f"/job/{job_id}")
        if until(job):
            return job
        assert time.monotonic() < deadline, f"job stuck: {job['events'][-5:]}\n{node.log()}"
        time.sleep(0.5)


def submit(node, tmp_path, name: str, **fmt) -> str:
    path = tmp_path / f"{name}.toml"
    path.write_text(SPEC.format(**fmt))
    return node.cli("job", "submit", "--from", "dev", str(path))["job"]


def wait_registered(node, addresses, role: str, timeout: float = 60) -> None:
    """Until every worker of `addresses` has registered its hash chain for `role` (a solver is
    assigned shards only then: its chain decides each shard's forced error)."""
    deadline = time.monotonic() + timeout
    while not all(node.rpc.account(a)["secrets"][role] for a in addresses):
        assert time.monotonic() < deadline, f"workers did not register {role} hash chains"
        time.sleep(0.5)
