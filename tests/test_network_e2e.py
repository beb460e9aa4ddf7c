"""Several validators on 127.0.0.1: agreement, crashes, partitions, equivocation, sync, joining."""
import time

import pytest

from tests.nodes import block_hashes, init_full_node, init_network, p2p_id, wait_all

pytestmark = pytest.mark.slow


@pytest.fixture
def network(tmp_path):
    nodes = init_network(tmp_path, 4)
    yield nodes
    for n in nodes:
        if n.proc is not None:
            assert n.stop() == 0, n.log()


def start_all(nodes):
    for n in nodes:
        n.start(wait=False)
    for n in nodes:
        n.wait_rpc()


def agree(nodes, upto):
    chains = [block_hashes(n, upto) for n in nodes]
    assert all(c == chains[0] for c in chains), "nodes disagree on a block or app hash"
    return chains[0]


def settled_heights(nodes, quiet: float = 2.0, timeout: float = 15.0) -> list[int]:
    """The nodes' heights once none has moved for `quiet` seconds: a block whose precommits
    were sent just before a crash may still be committed by the survivors."""
    deadline = time.monotonic() + timeout
    last, since = None, time.monotonic()
    while True:
        now = [n.rpc.status()["height"] for n in nodes]
        if now != last:
            last, since = now, time.monotonic()
        elif time.monotonic() - since >= quiet:
            return now
        assert time.monotonic() < deadline, f"heights never settled: {now}"
        time.sleep(0.2)


def test_validators_agree_and_survive_crashes(network):
    start_all(network)
    wait_all(network, 3)
    agree(network, 3)

    network[3].kill()  # 1 of 4 down: 3/4 of the power still finalizes
    h = max(n.rpc.status()["height"] for n in network[:3])
    wait_all(network[:3], h + 3, timeout=60)

    at_kill = max(n.rpc.status()["height"] for n in network[:2])
    network[2].kill()  # 2 of 4 down: no 2/3 majority, nothing may be finalized
    stalled = settled_heights(network[:2])
    # at most the block finished between the read and the kill, and one node2 had precommitted
    assert max(stalled) <= at_kill + 2, "blocks were finalized without a 2/3 majority"
    time.sleep(4.0)
    assert [n.rpc.status()["height"] for n in network[:2]] == stalled
    agree(network[:2], min(stalled))

    network[2].start(wait=False)
    network[3].start(wait=False)
    target = max(stalled) + 3
    wait_all(network, target, timeout=90)
    agree(network, target)


def test_partitioned_node_rejoins_one_chain(network):
    start_all(network)
    wait_all(network, 2)
    isolated_at = time.monotonic()
    network[0].rpc.post("/admin/isolate", {"seconds": 12})
    cut_at = network[0].rpc.status()["height"]
    wait_all(network[1:], cut_at + 3, timeout=60)
    assert time.monotonic() - isolated_at < 12, "the machine is too slow for this test's window"
    assert network[0].rpc.status()["height"] <= cut_at + 1  # alone it cannot finalize
    assert network[0].rpc.get("/peers")["peers"] == []
    time.sleep(max(0.0, 12 - (time.monotonic() - isolated_at)))
    target = max(n.rpc.status()["height"] for n in network) + 2
    wait_all(network, target, timeout=60)
    agree(network, target)


def test_equivocating_validator_is_slashed_jailed_and_tombstoned(network):
    cheat = network[3]
    cfg = cheat.home / "config.toml"
    cfg.write_text(cfg.read_text().replace('misbehave = ""', 'misbehave = "double-prevote"'))
    start_all(network)
    cheat_addr = p2p_id(cheat).split("@")[0]
    deadline = time.monotonic() + 60
    while True:
        acct = network[0].cli("balance", cheat_addr)
        if acct["jailed"]:
            break
        assert time.monotonic() < deadline, network[0].log()
        time.sleep(0.5)
    assert acct["jailed"]["tombstoned"] is True
    genesis_stake = 10**12
    assert acct["stake"]["validator"] == genesis_stake - genesis_stake * 50_000 // 1_000_000
    h = network[0].rpc.status()["height"]
    wait_all(network[:3], h + 3)  # the set change takes effect two blocks later
    vals = network[0].rpc.get("/validators")["validators"]
    assert cheat_addr not in [v["address"] for v in vals] and len(vals) == 3
    agree(network[:3], h + 3)


def test_full_node_syncs_then_becomes_a_validator(network, tmp_path):
    start_all(network)
    wait_all(network, 12, timeout=60)
    full = init_full_node(tmp_path, "full", network[0].home / "genesis.json", [p2p_id(network[0])])
    full.start()
    tip = network[0].rpc.status()["height"]
    full.wait_height(tip, timeout=60)
    agree([network[0], full], tip)

    node_addr = full.cli("balance", "node")["address"]
    network[0].cli("transfer", "--from", "dev", "--to", node_addr, "--amount", "5000000000000")
    out = full.cli("stake", "--from", "node", "--role", "validator", "--amount", "1000000000000")
    staked_at = out["height"]
    wait_all(network + [full], staked_at + 3, timeout=60)
    vals = full.rpc.get("/validators")["validators"]
    assert node_addr in [v["address"] for v in vals] and len(vals) == 5
    # its precommits now appear in commits: some later block is signed by all five
    deadline = time.monotonic() + 30
    while True:
        h = full.rpc.status()["height"]
        if full.rpc.get(f"/block/{h}")["last_commit"]["signatures"] == 5:
            break
        assert time.monotonic() < deadline, full.log()
        time.sleep(0.3)
    assert full.stop() == 0
