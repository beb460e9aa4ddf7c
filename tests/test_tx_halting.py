"""No single signed tx can halt the network. Any key (unstaked, unfunded) signs txs shaped to
break encoding once they are wrapped in a block: nested just under the decoder's depth limit,
free-form fields, huge integers. Sent over RPC and straight into the P2P mesh, each is refused
at the door (the relaying peer is blamed), the 4 validators keep committing, and every
committed block stays readable and syncable by a new node."""
from __future__ import annotations

import asyncio
import json

import pytest

from consensus import codec
from consensus.crypto import PrivateKey
from consensus.types import Tx
from node.client import make_tx
from tests.nodes import init_full_node, p2p_id, running_network, wait_all
from tests.test_hostile_peers import Attacker, connected, eventually

pytestmark = pytest.mark.slow


def nested(depth: int):
    v: object = 0
    for _ in range(depth):
        v = [v]
    return v


def hostile_bodies(to: bytes, deep: int) -> list[tuple[str, dict]]:
    """Bodies that used to be admitted: each decodes, but none can ever execute. `deep` nests
    a field so that the whole message sits exactly at the decoder's depth limit."""
    return [
        ("transfer", {"to": to, "amount": 1, "memo": nested(deep)}),
        ("attest", {"job": b"j" * 32, "round": 0, "shard": nested(deep)}),
        ("submit_job", {"spec": {"model": "mlp", "model_args": {"hidden": nested(deep - 3)}}}),
        ("transfer", {"to": to, "amount": 0}),
        ("transfer", {"to": to[:5], "amount": 5}),
        ("stake", {"role": "validator", "amount": -7}),
    ]


@pytest.fixture(scope="module")
def net(tmp_path_factory):
    base = tmp_path_factory.mktemp("halting")
    with running_network(base) as nodes:
        yield nodes, base


RPC_DEEP = codec.MAX_DECODE_DEPTH - 2  # a tx alone: the tx list and its body on top
P2P_DEEP = codec.MAX_DECODE_DEPTH - 4  # in a message: [kind, [tx, ...]] on top of that


def signed_hostile_txs(chain_id: str, deep: int) -> list[Tx]:
    key = PrivateKey.generate()  # nobody: no stake, no balance
    to = PrivateKey.generate().address
    return [make_tx(key, chain_id, kind, body, nonce, 1)
            for nonce, (kind, body) in enumerate(hostile_bodies(to, deep))]


def test_hostile_txs_over_rpc_are_refused_and_the_network_keeps_committing(net):
    nodes, _ = net
    chain_id = nodes[0].rpc.status()["chain_id"]
    start = nodes[0].rpc.status()["height"]
    for tx in signed_hostile_txs(chain_id, RPC_DEEP):
        for n in nodes:
            status, body = n.http("POST", "/broadcast_tx", json.dumps({"tx": tx.wire.hex()}).encode())
            assert status == 400, (tx.kind, tx.body.keys(), body)
            assert "tx rejected" in json.loads(body)["error"]
    wait_all(nodes, start + 4, timeout=30)
    assert all(n.proc.poll() is None for n in nodes)


async def test_hostile_txs_over_p2p_are_refused_blamed_and_never_relayed(net):
    nodes, _ = net
    a = Attacker(nodes[0])
    try:
        hello = await a.join()
        await eventually(lambda: a.name in connected(nodes[0]), what="attacker connected")
        txs = signed_hostile_txs(hello["chain_id"], P2P_DEEP)
        start = nodes[0].rpc.status()["height"]
        assert codec.depth_of(["txs", [t.to_obj() for t in txs]]) == codec.MAX_DECODE_DEPTH
        await a.session.send(["txs", [t.to_obj() for t in txs[:2]]])
        score = await eventually(lambda: (connected(nodes[0]).get(a.name) or {}).get("score"),
                                 what="attacker penalised for invalid txs")
        assert score >= 20
        await asyncio.to_thread(wait_all, nodes, start + 4, 30)
        for n in nodes:
            for t in txs:
                status, _ = n.http("GET", f"/tx/{t.hash.hex()}")
                assert status == 404  # never admitted, never relayed, never committed
    finally:
        a.close()


def test_every_committed_block_reads_back_and_a_new_node_syncs_them(net):
    nodes, base = net
    tip = nodes[0].rpc.status()["height"]
    for h in range(1, tip + 1):
        status, body = nodes[0].http("GET", f"/block/{h}")
        assert status == 200, (h, body[:200])
    full = init_full_node(base, "late", nodes[0].home / "genesis.json", [p2p_id(nodes[0])])
    try:
        full.start()
        full.wait_height(tip, timeout=60)
        assert full.rpc.get(f"/block/{tip}")["hash"] == nodes[0].rpc.get(f"/block/{tip}")["hash"]
    finally:
        full.stop()
