"""Downtime: a validator whose precommits are missing from more than half of the window is
slashed a little and jailed; one at exactly half is not."""
from consensus.staking import jail_status

from tests.chainfactory import VAL, Chain, key

LAZY = key(60)
WINDOW = 10


def chain_with_lazy_validator() -> Chain:
    return Chain.create(validators=((VAL, 10_000), (LAZY, 10_000)), params={"downtime_window": WINDOW})


def test_missing_more_than_half_the_window_slashes_and_jails():
    c = chain_with_lazy_validator()
    c.block()  # height 1 has no parent commit to judge
    for _ in range(WINDOW // 2 + 1):
        assert jail_status(c.view(), LAZY.address) is None
        c.block(last_signers=(VAL.address,))
    status = jail_status(c.view(), LAZY.address)
    assert status is not None and status[1] is False  # jailed, not tombstoned
    assert c.stake_of(LAZY) == 10_000 - 10_000 * 100 // 1_000_000
    assert jail_status(c.view(), VAL.address) is None and c.stake_of(VAL) == 10_000
    c.empty_blocks(2, last_signers=(VAL.address,))
    assert LAZY.address not in c.valset()  # removed from the set two blocks later
    assert c.supply_ok()


def test_half_the_window_is_tolerated_and_old_misses_expire():
    c = chain_with_lazy_validator()
    c.block()
    for _ in range(3):  # miss half the window, sign the other half, repeatedly
        for _ in range(WINDOW // 2):
            c.block(last_signers=(VAL.address,))
        for _ in range(WINDOW // 2):
            c.block(last_signers=(VAL.address, LAZY.address))
    assert jail_status(c.view(), LAZY.address) is None
    assert c.stake_of(LAZY) == 10_000
