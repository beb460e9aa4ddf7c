"""The second validator and the checks that the consensus.state tests make after a block:
the supply is conserved, the burned total, and that a refused tx wrote nothing for its parties.
"""
from __future__ import annotations

from consensus import codec
from consensus.ledger import K_BURNED, k_account, k_pubkey
from consensus.state import supply_check
from tests.chainfactory import ALICE, VAL, Chain, key

W = key(5)  # a second validator


def two_validators(**params) -> Chain:
    """VAL (10_000, always the proposer) and W (5_000, funded) as validators."""
    return Chain.create(accounts=((VAL, 1_000), (ALICE, 1_000), (W, 1_000)),
                        validators=((VAL, 10_000), (W, 5_000)), params=params or None)


def burned(c: Chain) -> int:
    return codec.decode(c.state[K_BURNED])


def assert_supply(c: Chain) -> None:
    total, supply = supply_check(c.state)
    assert total == supply == c.genesis.total_supply


def only_chain_bookkeeping(writes: dict, *addrs: bytes) -> None:
    """No account, pubkey or stake write for any of `addrs`."""
    for a in addrs:
        assert k_account(a) not in writes
        assert k_pubkey(a) not in writes
        assert not any(k.startswith(b"stake/" + a) for k in writes)

