"""node.mempool: admission checks, nonce-ordered reaping, and eviction after blocks."""
from __future__ import annotations

import dataclasses

import pytest

from consensus.ledger import Account, View, get_params, set_account
from node.mempool import Mempool, MempoolError, upfront_cost
from tests.chainfactory import ALICE, BOB, CAROL, CHAIN_ID, Chain, key, make_tx, stake, transfer, unstake


@pytest.fixture
def chain() -> Chain:
    return Chain.create()


@pytest.fixture
def state(chain) -> View:
    return chain.view()


def pool(**kw) -> Mempool:
    return Mempool(CHAIN_ID, **kw)


def pay(k, n, amount=1, fee=1, to=None):
    return transfer(k, (to or CAROL).address, amount, n, fee)


def test_admits_a_good_tx(state):
    mp = pool()
    tx = pay(ALICE, 0, 10)
    mp.add(tx, state)
    assert len(mp) == 1
    assert (mp.by_hash[tx.hash].tx, mp.by_hash[tx.hash].added_at) == (tx, 0)
    assert mp.by_sender[ALICE.address] == {0: tx}
    assert mp.verified(tx)


def test_rejects_duplicate(state):
    mp = pool()
    tx = pay(ALICE, 0)
    mp.add(tx, state)
    with pytest.raises(MempoolError, match="already in mempool"):
        mp.add(tx, state)
    assert len(mp) == 1


def test_rejects_wrong_chain(state):
    with pytest.raises(MempoolError, match="wrong chain_id 'elsewhere': this chain is 'testchain'"):
        pool().add(transfer(ALICE, BOB.address, 1, 0, chain_id="elsewhere"), state)


def test_rejects_unknown_kind(state):
    with pytest.raises(MempoolError, match="unknown tx kind 'mint'"):
        pool().add(make_tx(ALICE, "mint", {}, 0), state)


def test_rejects_low_fee():
    state = Chain.create(params={"min_fee": 3}).view()
    mp = pool()
    with pytest.raises(MempoolError, match="fee 2 is below the minimum 3"):
        mp.add(pay(ALICE, 0, fee=2), state)
    mp.add(pay(ALICE, 0, fee=3), state)
    assert len(mp) == 1


def test_rejects_replayed_nonce(chain):
    chain.block([pay(ALICE, 0), pay(ALICE, 1)])
    mp = pool()
    with pytest.raises(MempoolError, match=r"nonce 1 already used \(replay\): account nonce is 2"):
        mp.add(pay(ALICE, 1, amount=5), chain.view())
    mp.add(pay(ALICE, 2), chain.view())


def test_rejects_nonce_too_far_ahead(state):
    mp = pool(max_per_sender=3)
    mp.add(pay(ALICE, 2), state)  # gaps are allowed within the window
    with pytest.raises(MempoolError, match="nonce 3 is too far ahead of the account nonce 0"):
        mp.add(pay(ALICE, 3), state)
    assert len(mp) == 1


def test_rejects_pending_nonce_clash(state):
    mp = pool()
    mp.add(pay(ALICE, 0, amount=1), state)
    other = pay(ALICE, 0, amount=2)  # same nonce, different tx
    with pytest.raises(MempoolError, match="nonce 0 is already pending for this sender"):
        mp.add(other, state)
    assert not mp.verified(dataclasses.replace(other, signature=bytes(64)))


def test_rejects_insufficient_funds_across_pending(state):
    mp = pool()
    # BOB has 500: 300 + 1, then 150 + 1, then 48 + 1 = 501 > 500
    mp.add(pay(BOB, 0, 300), state)
    mp.add(make_tx(BOB, "stake", {"role": "solver", "amount": 150}, 1), state)
    with pytest.raises(MempoolError, match="insufficient funds: balance 500, pending txs need 501"):
        mp.add(pay(BOB, 2, 48), state)
    mp.add(pay(BOB, 2, 47), state)
    # unstake moves no balance: only its fee counts, and nothing is left for the fee
    with pytest.raises(MempoolError, match="insufficient funds"):
        mp.add(unstake(BOB, "solver", 10, 3), state)
    assert len(mp) == 3


def test_rejects_insufficient_funds_for_a_single_tx(state):
    with pytest.raises(MempoolError, match="insufficient funds: balance 0, pending txs need 2"):
        pool().add(pay(CAROL, 0, 1, fee=1, to=BOB), state)
    with pytest.raises(MempoolError, match="insufficient funds: balance 500, pending txs need 501"):
        pool().add(pay(BOB, 0, 500, fee=1), state)
    pool().add(pay(BOB, 0, 499, fee=1), state)


def test_upfront_cost(state):
    params = get_params(state)
    assert upfront_cost(pay(ALICE, 0, 10, fee=2), params) == 12
    assert upfront_cost(stake(ALICE, "solver", 7, 0, fee=3), params) == 10
    assert upfront_cost(unstake(ALICE, "solver", 7, 0, fee=3), params) == 3
    assert upfront_cost(make_tx(ALICE, "unjail", {}, 0, fee=4), params) == 4


def test_rejects_bad_signature(state):
    mp = pool()
    good = pay(ALICE, 0)
    for bad in (dataclasses.replace(good, signature=bytes(64)),
                dataclasses.replace(good, signature=BOB.sign(good.sign_bytes())),
                dataclasses.replace(good, fee=2)):
        with pytest.raises(MempoolError, match="bad signature"):
            mp.add(bad, state)
    assert len(mp) == 0
    mp.add(good, state)


def test_rejects_when_full(state):
    mp = pool(max_txs=2)
    mp.add(pay(ALICE, 0), state)
    mp.add(pay(BOB, 0), state)
    with pytest.raises(MempoolError, match="mempool full"):
        mp.add(pay(ALICE, 1), state)
    assert len(mp) == 2


def test_reap_orders_each_sender_by_nonce_from_account_nonce(chain):
    chain.block([pay(ALICE, 0)])  # ALICE's account nonce is now 1
    state = chain.view()
    mp = pool()
    a = {n: pay(ALICE, n) for n in (3, 1, 2, 5)}  # 4 missing: a gap
    b = {n: pay(BOB, n) for n in (1, 0)}
    for tx in [a[3], b[1], a[1], a[2], b[0], a[5]]:
        mp.add(tx, state)
    reaped = mp.reap(state, 100)
    assert reaped == [a[1], a[2], a[3], b[0], b[1]]  # senders in arrival order, stopping at the gap
    assert a[5] not in reaped
    assert mp.reap(state, 4) == [a[1], a[2], a[3], b[0]]
    assert mp.reap(state, 2) == [a[1], a[2]]
    assert mp.reap(state, 0) == []
    assert len(mp) == 6  # reaping does not remove


def test_reap_skips_a_sender_whose_next_nonce_is_missing(state):
    mp = pool()
    mp.add(pay(ALICE, 1), state)  # account nonce 0 is not pooled
    mp.add(pay(BOB, 0), state)
    assert mp.reap(state, 10) == [mp.by_sender[BOB.address][0]]


def test_reaped_txs_execute_as_a_block(chain):
    mp = pool()
    txs = [pay(ALICE, n, 10) for n in (2, 0, 1)] + [pay(BOB, 0, 5)]
    for tx in txs:
        mp.add(tx, chain.view())
    res = chain.block(mp.reap(chain.view(), 100))
    assert len(res.included) == 4 and res.rejected == []
    assert chain.balance(CAROL) == 35


def test_update_drops_used_nonces(chain):
    mp = pool()
    t0, t1, t2 = pay(ALICE, 0), pay(ALICE, 1), pay(ALICE, 2)
    b0 = pay(BOB, 0)
    for tx in (t0, t1, t2, b0):
        mp.add(tx, chain.view())
    chain.block([t0, t1, b0])
    mp.update(chain.view(), 1)
    assert len(mp) == 1 and mp.height == 1
    assert mp.by_sender == {ALICE.address: {2: t2}}
    assert t0.hash not in mp.by_hash and b0.hash not in mp.by_hash
    assert mp.reap(chain.view(), 10) == [t2]


def test_update_drops_txs_older_than_ttl(state):
    mp = pool(ttl_blocks=5)
    old = pay(ALICE, 5)  # never becomes runnable
    mp.add(old, state)
    mp.update(state, 3)
    newer = pay(BOB, 3)
    mp.add(newer, state)
    assert (mp.by_hash[newer.hash].tx, mp.by_hash[newer.hash].added_at) == (newer, 3)
    mp.update(state, 5)
    assert len(mp) == 2  # age 5 is not older than the TTL
    mp.update(state, 6)
    assert old.hash not in mp.by_hash and ALICE.address not in mp.by_sender
    assert len(mp) == 1
    mp.update(state, 8)
    assert len(mp) == 1
    mp.update(state, 9)
    assert len(mp) == 0 and not mp.by_sender


def test_update_then_readd_of_same_nonce(chain):
    """Once the account nonce passes it, a new tx for a dropped nonce is a replay."""
    mp = pool()
    t0 = pay(ALICE, 0)
    mp.add(t0, chain.view())
    chain.block([t0])
    mp.update(chain.view(), 1)
    with pytest.raises(MempoolError, match="replay"):
        mp.add(t0, chain.view())


def test_remove_invalid(state):
    mp = pool()
    t0, t1 = pay(ALICE, 0), pay(ALICE, 1)
    mp.add(t0, state)
    mp.add(t1, state)
    mp.remove_invalid([(t0, "whatever"), (pay(BOB, 0), "never pooled")])
    assert len(mp) == 1 and mp.by_sender[ALICE.address] == {1: t1}


def test_verified():
    state = Chain.create().view()
    mp = pool()
    tx = pay(ALICE, 0)
    mp.add(tx, state)
    assert mp.verified(tx)
    assert pay(BOB, 0) not in mp.by_hash.values() and mp.verified(pay(BOB, 0))  # good, not pooled
    assert not mp.verified(dataclasses.replace(pay(BOB, 0), signature=bytes(64)))


def test_admission_uses_the_given_state():
    """A balance credited in the state (e.g. by a just-committed block) is usable at once."""
    state = Chain.create().view()
    rich = key(77)
    with pytest.raises(MempoolError, match="insufficient funds"):
        pool().add(pay(rich, 0, 100), state)
    v = View(state)
    set_account(v, rich.address, Account(101, 0))
    pool().add(pay(rich, 0, 100), v)
