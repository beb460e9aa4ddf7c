"""The block builder against txs that could stop consensus: a node's real Chain (plyvel store,
mempool) must never produce a block it cannot encode or that is too big to travel, and a
validator refuses such a block from someone else. Also: dev networks never share a chain id,
so a tx signed for one is refused by another."""
from __future__ import annotations

import dataclasses

import pytest

from consensus import codec, genesis as genesis_mod
from consensus.crypto import PrivateKey
from consensus.state import BlockError
from consensus.types import MAX_BLOCK_BYTES, Block
from node.chain import Chain as NodeChain
from node.init import dev_genesis
from node.mempool import Entry, InvalidTx, Mempool
from tests.chainfactory import ALICE, BOB, VAL, genesis_doc, make_tx, transfer


@pytest.fixture
def node_chain(tmp_path):
    g = genesis_mod.parse(genesis_doc(((VAL, 10**9), (ALICE, 10**9), (BOB, 10**9)), ((VAL, 10_000),)))
    c = NodeChain(tmp_path / "data", g)
    yield c
    c.close()


def smuggle(pool: Mempool, tx) -> None:
    """Put a tx in the pool behind admission's back: what a bug in admission would let in."""
    from consensus.crypto import address_of
    sender = address_of(tx.sender)
    pool.by_hash[tx.hash] = Entry(tx, sender, tx.fee, pool.height)
    pool.by_sender.setdefault(sender, {})[tx.nonce] = tx


def deep(depth: int):
    v: object = 0
    for _ in range(depth):
        v = [v]
    return v


def test_a_block_that_would_not_encode_is_never_proposed(node_chain):
    poison = make_tx(ALICE, "transfer", {"to": BOB.address, "amount": 1, "x": deep(codec.MAX_ENCODE_DEPTH - 2)}, 0)
    good = transfer(BOB, ALICE.address, 5, 0)
    node_chain.mempool.add(good, node_chain.view())
    smuggle(node_chain.mempool, poison)
    block = node_chain.build_block(VAL)
    assert block.size_error() is None
    assert poison not in block.txs
    assert poison.hash not in node_chain.mempool.by_hash  # dropped, so the next block is not stuck either
    Block.decode(block.encode())  # and it travels


def test_reaped_txs_fit_the_byte_budget(node_chain):
    pool = node_chain.mempool
    for n in range(50):
        pool.add(transfer(ALICE, BOB.address, 1, n), node_chain.view())
    one = len(transfer(ALICE, BOB.address, 1, 0).wire)
    got = pool.reap(node_chain.view(), 10_000, max_bytes=10 * one + one // 2)
    assert len(got) == 10 and [t.nonce for t in got] == list(range(10))


def test_a_validator_refuses_an_oversized_block(node_chain):
    block = node_chain.build_block(VAL)
    assert block.size_error() is None
    huge = dataclasses.replace(block, txs=tuple(
        dataclasses.replace(transfer(ALICE, BOB.address, 1, n), chain_id="c" * 40_000) for n in range(90)))
    assert len(huge.encode()) > MAX_BLOCK_BYTES
    assert "exceeds" in huge.size_error()
    from consensus import merkle
    header = dataclasses.replace(block.header, txs_root=merkle.root([t.hash for t in huge.txs]))
    with pytest.raises(BlockError, match="exceeds"):
        node_chain.check_block(dataclasses.replace(huge, header=header))


def test_every_dev_network_has_its_own_chain_id_so_txs_do_not_replay():
    template = {"chain_id": "stepchain"}
    ids = {dev_genesis(template, [PrivateKey.generate()], [])["chain_id"] for _ in range(20)}
    assert len(ids) == 20 and all(i.startswith("stepchain-dev-") for i in ids)
    a, b = sorted(ids)[:2]
    tx = make_tx(ALICE, "transfer", {"to": BOB.address, "amount": 1}, 0, chain_id=a)
    state_b = genesis_mod.parse(genesis_doc(((VAL, 1), (ALICE, 10**6)), ((VAL, 10),), chain_id=b))
    from consensus.state import genesis_writes
    from consensus.ledger import View
    writes, _ = genesis_writes(state_b)
    with pytest.raises(InvalidTx, match="wrong chain_id"):
        Mempool(b).add(tx, View({k: v for k, v in writes.items() if v is not None}))


def test_pace_caps_a_block_at_what_executes_within_the_budget():
    from node.chain import Pace
    p = Pace(budget_s=1.0, floor=500)
    assert p.limit(10_000) == 10_000             # nothing learned yet
    p.observe(50, 10.0)                          # too few txs to learn from
    assert p.limit(10_000) == 10_000
    p.observe(1000, 1.0)                         # 1 ms a tx
    assert p.limit(10_000) == 1000
    for _ in range(20):
        p.observe(1000, 10.0)                    # a very slow machine: never below the floor
    assert p.limit(10_000) == 500 and p.limit(200) == 200


def test_the_builder_reaps_no_more_than_its_pace_allows(tmp_path, node_chain):
    """With other validators to wait for, the pace caps a block; a sole validator waits for nobody."""
    other = PrivateKey.generate()
    g = genesis_mod.parse(genesis_doc(((VAL, 10**9), (ALICE, 10**9)), ((VAL, 10_000), (other, 10_000))))
    pair = NodeChain(tmp_path / "pair", g)
    try:
        for chain in (pair, node_chain):
            for n in range(300):
                chain.mempool.add(transfer(ALICE, BOB.address, 1, n), chain.view())
            chain.pace.floor, chain.pace.s_per_tx = 10, chain.pace.budget_s / 120  # 120 txs fit
        proposer = VAL if pair.validators()[0].address == VAL.address else other
        assert len(pair.build_block(proposer).txs) == 120
        assert len(node_chain.build_block(VAL).txs) == 300
    finally:
        pair.close()


def test_committed_evidence_clears_every_pending_piece_against_that_validator(node_chain):
    from tests.chainfactory import double_sign_evidence
    a = double_sign_evidence(VAL, height=1)
    b = double_sign_evidence(VAL, height=2)
    node_chain.evidence = {a.hash: a, b.hash: b}
    block = node_chain.build_block(VAL)
    assert len(block.evidence) == 1  # one per offender
    from consensus.types import Commit
    node_chain.commit_block(block, Commit(block.height, 0, block.hash, ((VAL.address, b"\0" * 64),)))
    assert node_chain.evidence == {}


def test_a_dev_network_pins_every_parameter_in_its_genesis():
    """A network's state never hangs on the code's defaults: a default changed later must not
    move the app hash of a chain that replays. The template's own values win."""
    from consensus.genesis import DEFAULT_PARAMS
    g = dev_genesis({"chain_id": "stepchain", "params": {"min_fee": 7}}, [PrivateKey.generate()], [])
    assert g["params"] == {**DEFAULT_PARAMS, "min_fee": 7}
