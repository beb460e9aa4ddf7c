"""consensus.state: the state-transition function, run block by block on an in-memory chain.

Genesis, transfers and what makes a tx invalid, the block context, and determinism. Staking,
evidence and jail are in test_state_staking.py; the shared checks in tests/statechecks.py.
"""
from __future__ import annotations

import dataclasses

import pytest

from consensus import codec, genesis
from consensus.crypto import sha256
from consensus.ledger import (K_BURNED, K_CHAIN, K_LAST_VALSET, Validator, get_valset, k_account, k_pubkey,
                              write_set_hash)
from consensus.state import BlockError, execute_block, genesis_writes, supply_check
from consensus.types import Tx
from tests.chainfactory import (ALICE, BOB, CAROL, CHAIN_ID, OUTSIDER, VAL, Chain, genesis_doc, make_tx, merge,
                                stake, transfer, unstake)
from tests.statechecks import W, assert_supply, burned, only_chain_bookkeeping


# -- genesis ----------------------------------------------------------------------------------

def test_genesis_state():
    c = Chain.create()
    assert c.balance(ALICE) == 1_000 and c.balance(BOB) == 500 and c.balance(CAROL) == 0
    assert c.balance(OUTSIDER) == 0 and c.nonce(ALICE) == 0
    assert c.stake_of(VAL) == 10_000
    assert c.valset() == {VAL.address: 10_000}
    assert c.valset(K_LAST_VALSET) == {VAL.address: 10_000}
    assert get_valset(c.view()) == [Validator(VAL.address, VAL.pubkey, 10_000)]
    assert c.chain_tip() == [0, c.genesis.hash, c.genesis.time_ms]
    assert c.genesis.total_supply == 1_000 + 1_000 + 500 + 0 + 10_000
    assert burned(c) == 0
    assert_supply(c)
    writes, app_hash = genesis_writes(c.genesis)
    assert app_hash == sha256(c.genesis.hash + write_set_hash(writes))


def test_genesis_rejects_bad_documents():
    doc = genesis_doc([(ALICE, 1)], [(VAL, 1)])
    with pytest.raises(genesis.GenesisError, match="at least one validator"):
        genesis.parse(dict(doc, stakes=[]))
    with pytest.raises(genesis.GenesisError, match="appears twice"):
        genesis.parse(dict(doc, accounts=doc["accounts"] * 2))
    with pytest.raises(genesis.GenesisError, match="unknown params: bogus"):
        genesis.parse(dict(doc, params={"bogus": 1}))
    with pytest.raises(genesis.GenesisError, match="chain_id"):
        genesis.parse(dict(doc, chain_id=""))
    with pytest.raises(genesis.GenesisError, match="no canonical form"):
        genesis.parse(dict(doc, extra=1.5))


def test_genesis_rejects_a_supply_the_codec_cannot_hold():
    doc = genesis_doc([(ALICE, 2**63), (BOB, 2**63)], [(VAL, 1)])
    try:
        g = genesis.parse(doc)
    except genesis.GenesisError:
        return
    try:
        genesis_writes(g)
    except codec.CodecError as exc:
        pytest.fail(f"parse accepted it; genesis_writes raised CodecError: {exc}", pytrace=False)


# -- transfers ---------------------------------------------------------------------------------

def test_transfer_moves_funds_and_burns_fee():
    c = Chain.create()
    prev = c.app_hash
    res = c.block([transfer(ALICE, BOB.address, 100, 0, fee=3)])
    assert len(res.included) == 1 and res.rejected == []
    assert c.balance(ALICE) == 897 and c.nonce(ALICE) == 1
    assert c.balance(BOB) == 600 and c.nonce(BOB) == 0
    assert burned(c) == 3
    assert codec.decode(c.state[k_pubkey(ALICE.address)]) == ALICE.pubkey
    assert res.app_hash == sha256(prev + write_set_hash(res.writes))
    assert c.chain_tip() == [1, bytes([1]) * 32, c.time_ms]
    assert_supply(c)


def test_transfer_to_new_address_and_to_self():
    c = Chain.create()
    c.block([transfer(ALICE, OUTSIDER.address, 10, 0), transfer(BOB, BOB.address, 50, 0, fee=2)])
    assert c.balance(OUTSIDER) == 10
    assert c.balance(ALICE) == 989
    assert c.balance(BOB) == 498 and c.nonce(BOB) == 1
    assert burned(c) == 3
    assert_supply(c)


def test_many_transfers_conserve_supply():
    c = Chain.create()
    for h in range(5):
        c.block([transfer(ALICE, BOB.address, 7 + h, h), transfer(BOB, CAROL.address, 3, h, fee=2)])
    assert c.balance(ALICE) == 1_000 - sum(7 + h for h in range(5)) - 5
    assert c.balance(CAROL) == 15
    assert burned(c) == 5 + 10
    assert_supply(c)


def test_bad_signature_rejected():
    c = Chain.create()
    good = transfer(ALICE, BOB.address, 100, 0)
    forged = dataclasses.replace(good, signature=BOB.sign(good.sign_bytes()))
    flipped = dataclasses.replace(good, signature=bytes([good.signature[0] ^ 1]) + good.signature[1:])
    altered = dataclasses.replace(good, body={"to": BOB.address, "amount": 999})
    unsigned = dataclasses.replace(good, signature=b"")
    for bad in (forged, flipped, altered, unsigned):
        res = c.execute([bad], skip_invalid=True)
        assert res.included == [] and res.rejected == [(bad, "bad signature")]
        only_chain_bookkeeping(res.writes, ALICE.address, BOB.address)
        with pytest.raises(BlockError, match="bad signature"):
            c.execute([bad])


def test_wrong_chain_id_rejected():
    c = Chain.create()
    tx = transfer(ALICE, BOB.address, 100, 0, chain_id="otherchain")
    res = c.execute([tx], skip_invalid=True)
    assert res.included == []
    assert "wrong chain_id 'otherchain'" in res.rejected[0][1]
    only_chain_bookkeeping(res.writes, ALICE.address, BOB.address)


def test_nonce_replay_rejected_in_a_later_block():
    c = Chain.create()
    tx = transfer(ALICE, BOB.address, 100, 0)
    c.block([tx])
    with pytest.raises(BlockError, match=r"bad nonce 0: expected 1 \(already used: replay\)"):
        c.execute([tx])
    res = c.block([tx], skip_invalid=True)
    assert res.included == [] and "replay" in res.rejected[0][1]
    assert c.balance(ALICE) == 899 and c.balance(BOB) == 600


def test_same_tx_twice_in_one_block_applies_once():
    c = Chain.create()
    tx = transfer(ALICE, BOB.address, 100, 0)
    res = c.block([tx, tx], skip_invalid=True)
    assert res.included == [tx] and len(res.rejected) == 1
    assert c.balance(BOB) == 600


def test_out_of_order_nonce_rejected():
    c = Chain.create()
    tx0, tx1 = transfer(ALICE, BOB.address, 1, 0), transfer(ALICE, BOB.address, 2, 1)
    with pytest.raises(BlockError, match="bad nonce 1: expected 0"):
        c.execute([tx1, tx0])
    res = c.block([tx1, tx0], skip_invalid=True)
    assert res.included == [tx0]
    assert res.rejected == [(tx1, "bad nonce 1: expected 0")]
    assert c.nonce(ALICE) == 1 and c.balance(BOB) == 501
    res = c.block([tx1])  # now it is next in line
    assert c.nonce(ALICE) == 2 and c.balance(BOB) == 503


def test_insufficient_funds_writes_nothing():
    c = Chain.create()
    too_much = transfer(BOB, CAROL.address, 500, 0, fee=1)  # 500 + 1 > 500
    res = c.execute([too_much], skip_invalid=True)
    assert res.included == []
    assert res.rejected == [(too_much, "insufficient funds: balance 499, needs 500")]
    only_chain_bookkeeping(res.writes, BOB.address, CAROL.address)
    assert res.writes.get(K_BURNED) is None or codec.decode(res.writes[K_BURNED]) == 0
    broke = transfer(CAROL, BOB.address, 1, 0)  # cannot even pay the fee
    res = c.execute([broke], skip_invalid=True)
    assert "insufficient funds: balance 0, needs 1" == res.rejected[0][1]
    exact = transfer(BOB, CAROL.address, 499, 0, fee=1)
    c.block([exact])
    assert c.balance(BOB) == 0 and c.balance(CAROL) == 499
    assert_supply(c)


def test_fee_below_min_fee_rejected():
    c = Chain.create(params={"min_fee": 5})
    low = transfer(ALICE, BOB.address, 1, 0, fee=4)
    res = c.execute([low], skip_invalid=True)
    assert res.rejected == [(low, "fee 4 is below the minimum 5")]
    only_chain_bookkeeping(res.writes, ALICE.address, BOB.address)
    c.block([transfer(ALICE, BOB.address, 1, 0, fee=5)])
    assert c.balance(ALICE) == 994 and burned(c) == 5


@pytest.mark.parametrize("kind, body, reason", [
    ("mint", {"to": BOB.address, "amount": 1}, "unknown tx kind 'mint'"),
    ("", {}, "unknown tx kind ''"),
    ("transfer", {"to": BOB.address}, "transfer takes exactly the fields amount, to; missing: amount"),
    ("transfer", {"to": BOB.address, "amount": 1, "memo": "hi"}, "exactly the fields"),
    ("transfer", {}, "exactly the fields"),
    ("transfer", {"to": BOB.address, "amount": "1"}, "transfer.amount must be an integer in [1,"),
    ("transfer", {"to": BOB.address, "amount": True}, "transfer.amount must be an integer in [1,"),
    ("transfer", {"to": BOB.address.hex(), "amount": 1}, "transfer.to must be 20 bytes"),
    ("transfer", {"to": BOB.address[:19], "amount": 1}, "transfer.to must be 20 bytes"),
    ("transfer", {"to": BOB.pubkey, "amount": 1}, "transfer.to must be 20 bytes"),
    ("transfer", {"to": BOB.address, "amount": 0}, "amount must be an integer in [1,"),
    ("transfer", {"to": BOB.address, "amount": -5}, "amount must be an integer in [1,"),
    ("stake", {"role": "king", "amount": 1}, "stake.role must be one of validator, solver, verifier"),
    ("stake", {"role": "validator", "amount": 0}, "amount must be an integer in [1,"),
    ("stake", {"role": b"validator", "amount": 1}, "stake.role must be one of"),
    ("unstake", {"role": "validator"}, "exactly the fields"),
    ("unstake", {"role": "solver", "amount": -1}, "amount must be an integer in [1,"),
    ("unjail", {"reason": "please"}, "unjail takes exactly the fields (none); unknown: reason"),
    ("unjail", {}, "not jailed"),
])
def test_unknown_kind_and_malformed_bodies_rejected(kind, body, reason):
    c = Chain.create()
    tx = make_tx(ALICE, kind, body, 0)
    res = c.execute([tx], skip_invalid=True)
    assert res.included == []
    assert len(res.rejected) == 1 and reason in res.rejected[0][1]
    only_chain_bookkeeping(res.writes, ALICE.address, BOB.address)
    with pytest.raises(BlockError, match="invalid tx"):
        c.execute([tx])


def test_skip_invalid_leaves_out_bad_txs_and_applies_the_rest():
    c = Chain.create()
    good1 = transfer(ALICE, CAROL.address, 10, 0)
    bad = transfer(BOB, CAROL.address, 10_000, 0)
    good2 = transfer(BOB, CAROL.address, 20, 0)  # same nonce as the failed one: still free
    with pytest.raises(BlockError, match=f"invalid tx {bad.hash.hex()[:16]}: insufficient funds"):
        c.execute([good1, bad, good2])
    res = c.block([good1, bad, good2], skip_invalid=True)
    assert res.included == [good1, good2]
    assert [t for t, _ in res.rejected] == [bad]
    assert c.balance(CAROL) == 30 and c.balance(BOB) == 479 and c.balance(ALICE) == 989
    assert_supply(c)


def test_max_block_txs():
    c = Chain.create(params={"max_block_txs": 2})
    txs = [transfer(ALICE, BOB.address, 1, n) for n in range(3)]
    with pytest.raises(BlockError, match="more than 2 txs"):
        c.execute(txs)
    res = c.block(txs, skip_invalid=True)
    assert res.included == txs[:2] and res.rejected == []
    assert c.nonce(ALICE) == 2


# -- block context ------------------------------------------------------------------------------

def test_block_context_checks():
    c = Chain.create()
    with pytest.raises(BlockError, match="height 2 does not follow 0"):
        c.execute(height=2)
    with pytest.raises(BlockError, match="height 0 does not follow 0"):
        c.execute(height=0)
    with pytest.raises(BlockError, match="block time must increase"):
        c.execute(time_ms=c.time_ms)
    with pytest.raises(BlockError, match="proposer is not in the validator set"):
        c.execute(proposer=ALICE.address)
    c.block()
    with pytest.raises(BlockError, match="height 1 does not follow 1"):
        c.execute(height=1)


def test_app_hash_chains_block_to_block():
    c = Chain.create()
    hashes = [c.app_hash]
    for _ in range(3):
        prev = c.app_hash
        res = c.block()
        assert res.app_hash == sha256(prev + write_set_hash(res.writes))
        hashes.append(res.app_hash)
    assert len(set(hashes)) == 4


# -- determinism ------------------------------------------------------------------------------

def busy_block_txs():
    return [transfer(ALICE, BOB.address, 10, 0), stake(BOB, "solver", 100, 0),
            transfer(ALICE, CAROL.address, 5, 1), unstake(BOB, "solver", 40, 1)]


def test_same_block_twice_gives_identical_results():
    c = Chain.create()
    c.block()
    base = dict(c.state)
    r1 = c.execute(busy_block_txs(), evidence=[])
    r2 = c.execute(busy_block_txs(), evidence=[])
    assert c.state == base  # executing does not touch the base
    assert r1.writes == r2.writes
    assert list(r1.writes) == list(r2.writes)
    assert r1.app_hash == r2.app_hash
    assert [t.hash for t in r1.included] == [t.hash for t in r2.included]
    # and a differently-ordered block gives a different result
    r3 = c.execute(busy_block_txs()[::-1], skip_invalid=True)
    assert r3.app_hash != r1.app_hash


def test_app_hash_independent_of_genesis_listing_order():
    accounts = [(VAL, 1_000), (ALICE, 1_000), (BOB, 500), (CAROL, 7)]
    validators = [(VAL, 10_000), (W, 3_000)]
    g1 = genesis.parse(genesis_doc(accounts, validators))
    g2 = genesis.parse(genesis_doc(accounts[::-1], validators[::-1]))
    w1, h1 = genesis_writes(g1)
    w2, h2 = genesis_writes(g2)
    assert g1.hash != g2.hash  # the raw documents differ, and so do the genesis app hashes
    assert h1 != h2
    assert codec.decode(w1.pop(K_CHAIN))[0::2] == codec.decode(w2.pop(K_CHAIN))[0::2]
    assert w1 == w2
    assert write_set_hash(w1) == write_set_hash(w2)
    # the same block on either state writes exactly the same
    s1, s2 = merge({}, genesis_writes(g1)[0]), merge({}, genesis_writes(g2)[0])
    c = Chain.create(accounts=accounts, validators=validators)
    ctx = c.ctx()
    r1 = execute_block(s1, b"\x00" * 32, CHAIN_ID, ctx, busy_block_txs())
    r2 = execute_block(s2, b"\x00" * 32, CHAIN_ID, ctx, busy_block_txs())
    assert r1.writes == r2.writes and r1.app_hash == r2.app_hash


def test_supply_check_detects_an_inconsistent_state():
    c = Chain.create()
    state = dict(c.state)
    state[k_account(OUTSIDER.address)] = codec.encode([1, 0])
    total, supply = supply_check(state)
    assert total == supply + 1


def test_sig_ok_hook_is_used():
    c = Chain.create()
    tx = transfer(ALICE, BOB.address, 1, 0)
    forged = dataclasses.replace(tx, signature=bytes(64))
    res = execute_block(c.state, c.app_hash, CHAIN_ID, c.ctx(), [forged], sig_ok=lambda t: True)
    assert res.included == [forged]


def test_tx_pubkey_of_wrong_length_is_a_bad_signature():
    c = Chain.create()
    tx = Tx(CHAIN_ID, "transfer", b"\x01" * 31, 0, 1, {"to": BOB.address, "amount": 1}, bytes(64))
    res = c.execute([tx], skip_invalid=True)
    assert res.rejected[0][1] == "bad signature"
