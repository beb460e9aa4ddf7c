"""consensus.state, staking and its penalties: bonding and unbonding for each role, how staking
changes the validator set (two blocks later, top max_validators, minimum stake), double-sign
evidence (slash, jail, tombstone), downtime jail and unjail.

The shared checks are in tests/statechecks.py.
"""
from __future__ import annotations

import dataclasses

import pytest

from consensus import codec, staking
from consensus.ledger import (K_CANDIDATES, K_LAST_VALSET, K_VALSET_PENDING, Validator, View, get_valset, k_jail,
                              k_unbonding)
from consensus.state import BlockError
from consensus.types import PRECOMMIT, PREVOTE, DuplicateVoteEvidence
from tests.chainfactory import (ALICE, OUTSIDER, VAL, Chain, double_sign_evidence, signed_vote, stake, unjail,
                                unstake)
from tests.statechecks import W, assert_supply, burned, only_chain_bookkeeping, two_validators


# -- staking -------------------------------------------------------------------------------------

def test_stake_moves_balance_into_stake():
    c = Chain.create()
    c.block([stake(ALICE, "solver", 300, 0, fee=2)])
    assert c.balance(ALICE) == 698 and c.stake_of(ALICE, "solver") == 300
    assert c.stake_of(ALICE, "validator") == 0
    assert staking.bonded_total(c.view(), ALICE.address) == {"validator": 0, "solver": 300, "verifier": 0}
    assert_supply(c)
    res = c.execute([stake(ALICE, "verifier", 699, 1)], skip_invalid=True)
    assert "insufficient funds" in res.rejected[0][1]


def test_unstake_more_than_bonded_rejected():
    c = Chain.create()
    c.block([stake(ALICE, "solver", 100, 0)])
    over = unstake(ALICE, "solver", 101, 1)
    res = c.execute([over], skip_invalid=True)
    assert res.rejected == [(over, "cannot unstake 101: only 100 bonded as solver")]
    only_chain_bookkeeping(res.writes, ALICE.address)
    res = c.execute([unstake(ALICE, "verifier", 1, 1)], skip_invalid=True)
    assert "only 0 bonded as verifier" in res.rejected[0][1]


def test_unstake_returns_funds_exactly_after_unbonding_period():
    U = 5
    c = Chain.create(params={"unbonding_blocks": U})
    c.block([stake(ALICE, "solver", 200, 0)])                      # height 1
    c.block([unstake(ALICE, "solver", 150, 1)])                    # height 2
    due = 2 + U
    assert c.stake_of(ALICE, "solver") == 50
    assert staking.unbonding_entries(c.view(), ALICE.address) == [[due, "solver", 150]]
    balance = c.balance(ALICE)
    assert balance == 1_000 - 200 - 2
    assert_supply(c)
    while c.height < due - 1:
        c.block()
        assert c.balance(ALICE) == balance, f"released early at height {c.height}"
        assert staking.unbonding_entries(c.view(), ALICE.address) == [[due, "solver", 150]]
    c.block()
    assert c.height == due
    assert c.balance(ALICE) == balance + 150
    assert staking.unbonding_entries(c.view(), ALICE.address) == []
    assert k_unbonding(ALICE.address) not in c.state
    c.block()
    assert c.balance(ALICE) == balance + 150
    assert_supply(c)


def test_two_unstakes_release_at_their_own_heights():
    c = Chain.create(params={"unbonding_blocks": 3})
    c.block([stake(ALICE, "verifier", 100, 0)])            # 1
    c.block([unstake(ALICE, "verifier", 30, 1)])           # 2 -> due 5
    c.block([unstake(ALICE, "verifier", 20, 2)])           # 3 -> due 6
    base = c.balance(ALICE)
    c.empty_blocks(2)                                      # 4, 5
    assert c.balance(ALICE) == base + 30
    assert staking.unbonding_entries(c.view(), ALICE.address) == [[6, "verifier", 20]]
    c.block()                                              # 6
    assert c.balance(ALICE) == base + 50
    assert c.stake_of(ALICE, "verifier") == 50
    assert_supply(c)


def test_validator_set_change_from_staking_takes_effect_two_blocks_later():
    c = Chain.create()
    genesis_set = {VAL.address: 10_000}
    c.empty_blocks(2)
    res = c.block([stake(ALICE, "validator", 300, 0)])           # height h = 3
    h = c.height
    assert c.valset() == genesis_set
    assert codec.decode(c.state[K_CANDIDATES]) == sorted([VAL.address, ALICE.address])
    pending = codec.decode(res.writes[K_VALSET_PENDING])
    assert pending == [[h + 2, [[a, p, w] for a, p, w in sorted(
        [[VAL.address, VAL.pubkey, 10_000], [ALICE.address, ALICE.pubkey, 300]])]]]
    c.block()                                                     # h + 1: valset for h + 2 is now new
    assert c.valset() == {VAL.address: 10_000, ALICE.address: 300}
    assert c.valset(K_LAST_VALSET) == genesis_set
    assert K_VALSET_PENDING not in c.state
    c.block()                                                     # h + 2: signed by the new set
    assert c.valset(K_LAST_VALSET) == {VAL.address: 10_000, ALICE.address: 300}
    assert get_valset(c.view()) == sorted([Validator(VAL.address, VAL.pubkey, 10_000),
                                           Validator(ALICE.address, ALICE.pubkey, 300)],
                                          key=lambda v: v.address)


def test_validator_set_keeps_the_top_max_validators():
    c = Chain.create(accounts=((ALICE, 20_000),), params={"max_validators": 1})
    c.block([stake(ALICE, "validator", 9_000, 0)])
    c.block()
    assert c.valset() == {VAL.address: 10_000}  # ALICE is a candidate but not in the top 1
    assert codec.decode(c.state[K_CANDIDATES]) == sorted([VAL.address, ALICE.address])
    c.block([stake(ALICE, "validator", 1_100, 1)])  # 10_100 > 10_000
    assert c.valset() == {VAL.address: 10_000}
    c.block()
    assert c.valset() == {ALICE.address: 10_100}


def test_min_validator_stake():
    c = Chain.create(params={"min_validator_stake": 500})
    c.block([stake(ALICE, "validator", 499, 0)])
    c.block()
    assert c.valset() == {VAL.address: 10_000}
    c.block([stake(ALICE, "validator", 1, 1)])
    c.block()
    assert c.valset() == {VAL.address: 10_000, ALICE.address: 500}


# -- evidence and jail ------------------------------------------------------------------------------

def test_duplicate_vote_evidence_slashes_jails_and_tombstones():
    c = two_validators()
    c.block()
    ev = double_sign_evidence(W, height=1)
    burned_before = burned(c)
    res = c.block(evidence=[ev])
    h = c.height
    assert c.stake_of(W) == 5_000 - 250
    assert burned(c) == burned_before + 250
    assert staking.jail_status(c.view(), W.address) == (h + 20, True)
    assert c.valset() == {VAL.address: 10_000, W.address: 5_000}  # still in for the next block
    pending = codec.decode(res.writes[K_VALSET_PENDING])
    assert pending == [[h + 2, [[VAL.address, VAL.pubkey, 10_000]]]]
    c.block()
    assert c.valset() == {VAL.address: 10_000}
    assert_supply(c)
    # a second report of the same double-sign is not punished again
    c.block(evidence=[ev])
    c.block(evidence=[double_sign_evidence(W, height=1, kind=PRECOMMIT)])
    assert c.stake_of(W) == 4_750
    # a block may carry one piece of evidence per offender: a second is bloat, refused
    with pytest.raises(BlockError, match="one per validator"):
        c.block(evidence=[ev, double_sign_evidence(W, height=2, kind=PRECOMMIT)])
    # tombstoned: never unjailed, even long after jail_blocks
    c.empty_blocks(25)
    res = c.execute([unjail(W, 0)], skip_invalid=True)
    assert res.rejected[0][1] == "tombstoned for double-signing: this validator can never be unjailed"
    assert_supply(c)


def test_slash_reaches_unbonding_entries_of_that_role_only():
    c = two_validators(unbonding_blocks=10)
    c.block([unstake(W, "validator", 1_000, 0), stake(W, "solver", 400, 1)])  # h1: due 11
    c.block([unstake(W, "solver", 400, 2)])                                     # h2: due 12
    assert staking.unbonding_entries(c.view(), W.address) == [[11, "validator", 1_000], [12, "solver", 400]]
    b0 = burned(c)
    c.block(evidence=[double_sign_evidence(W, height=2)])                       # h3
    assert c.stake_of(W) == 4_000 - 200
    assert staking.unbonding_entries(c.view(), W.address) == [[11, "validator", 950], [12, "solver", 400]]
    assert burned(c) == b0 + 200 + 50
    assert_supply(c)
    bal = c.balance(W)
    while c.height < 11:
        c.block()
    assert c.balance(W) == bal + 950
    c.block()
    assert c.balance(W) == bal + 950 + 400
    assert_supply(c)


def test_slash_arithmetic_in_staking():
    c = two_validators(unbonding_blocks=10)
    v = View(c.state)
    staking.unbond(v, W.address, "validator", 1_001, 1)
    cut = staking.slash(v, W.address, "validator", 50_000)
    # each part is rounded up, so slashing a small stake is never free
    assert cut == 200 + 51  # ceil(3_999 * 5%) + ceil(1_001 * 5%)
    assert staking.get_stake(v, W.address, "validator") == 3_999 - 200
    assert staking.unbonding_entries(v, W.address) == [[11, "validator", 1_001 - 51]]


@pytest.mark.parametrize("mutate, message", [
    (lambda a, b: (a, dataclasses.replace(b, signature=bytes(64))), "bad signature"),
    (lambda a, b: (a, a), "identical"),
    (lambda a, b: (a, dataclasses.replace(b, round=1)), "not for the same validator and step"),
    (lambda a, b: (a, dataclasses.replace(b, height=2)), "not for the same validator and step"),
    (lambda a, b: (a, signed_vote(W, PRECOMMIT, 1, 0, b.block_hash)), "not for the same validator and step"),
    (lambda a, b: (a, signed_vote(VAL, PREVOTE, 1, 0, b.block_hash)), "not for the same validator and step"),
])
def test_bad_evidence_rejects_the_block(mutate, message):
    c = two_validators()
    good = double_sign_evidence(W, height=1)
    a, b = mutate(good.vote_a, good.vote_b)
    with pytest.raises(BlockError, match=message):
        c.execute(evidence=[DuplicateVoteEvidence(a, b)])


def test_evidence_signed_for_another_chain_or_unknown_validator_rejected():
    c = two_validators()
    with pytest.raises(BlockError, match="bad signature"):
        c.execute(evidence=[double_sign_evidence(W, chain_id="otherchain")])
    with pytest.raises(BlockError, match="bad signature"):  # no pubkey on chain
        c.execute(evidence=[double_sign_evidence(OUTSIDER)])


def test_jailed_for_downtime_can_unjail_only_after_jail_blocks():
    c = two_validators(downtime_window=4, jail_blocks=3)
    only_val = (VAL.address,)
    c.block()                                           # 1
    for _ in range(3):                                  # 2, 3, 4: W misses 1, 2, 3
        c.block(last_signers=only_val)
    assert c.height == 4
    assert staking.jail_status(c.view(), W.address) == (4 + 3, False)
    assert c.stake_of(W) == 5_000 - 1  # 0.01% of 5_000 is 0.5, rounded up
    c.block(last_signers=only_val)                      # 5: W leaves the set for height 6
    assert c.valset() == {VAL.address: 10_000}
    early = unjail(W, 0)
    res = c.execute([early], skip_invalid=True)         # 6
    assert res.rejected == [(early, "still jailed until height 7")]
    c.block([early], skip_invalid=True)                 # 6
    assert c.nonce(W) == 0
    res = c.block([unjail(W, 0)])                       # 7 == until: allowed
    assert res.included and c.nonce(W) == 1
    assert staking.jail_status(c.view(), W.address) is None
    assert c.valset() == {VAL.address: 10_000}
    c.block()                                           # 8: valset for 9 has W again
    assert c.valset() == {VAL.address: 10_000, W.address: c.stake_of(W)}
    assert_supply(c)


def test_liveness_signers_are_not_penalised():
    c = two_validators(downtime_window=4)
    c.empty_blocks(10)
    assert staking.jail_status(c.view(), W.address) is None
    assert c.stake_of(W) == 5_000


def test_k_jail_cleared_on_unjail_and_set_on_jail():
    c = two_validators(jail_blocks=2)
    v = View(c.state)
    staking.jail(v, W.address, 10)
    assert codec.decode(v.writes[k_jail(W.address)]) == [12, False]
    staking.jail(v, W.address, 11, tombstone=True)
    staking.jail(v, W.address, 12)
    assert staking.jail_status(v, W.address) == (14, True)  # a tombstone never goes away
    staking.unjail(v, W.address)
    assert staking.jail_status(v, W.address) is None
