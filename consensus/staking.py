"""Bond, unbond, release, slash, jail, and the validator set that follows from stakes.

Each role (validator, solver, verifier) has its own bonded stake. Unstaked tokens wait
``unbonding_blocks`` and then return to the balance automatically at the end of the block
they are due in; until then a slash still reaches them. Validator-set changes made in
block h take effect at h+2, so everyone knows who signs a block before it is proposed.
"""
from __future__ import annotations

from . import codec
from .crypto import sha256
from .ledger import (K_CANDIDATES, K_LAST_VALSET, K_VALSET, K_VALSET_DIRTY, K_VALSET_PENDING,
                     Validator, View, add_balance, add_burned, encode_valset, get_params, get_stake,
                     k_candidates, k_jail, k_pubkey, k_unbonding, k_unbonding_due, set_stake)

PPM = 1_000_000


def bond(v: View, addr: bytes, role: str, amount: int) -> None:
    set_stake(v, addr, role, get_stake(v, addr, role) + amount)
    _mark_candidate(v, addr, role)


def unbond(v: View, addr: bytes, role: str, amount: int, height: int) -> int:
    """Move stake into the unbonding queue; returns the height at which it is released."""
    set_stake(v, addr, role, get_stake(v, addr, role) - amount)
    due = height + get_params(v)["unbonding_blocks"]
    entries = v.read(k_unbonding(addr), [])
    entries.append([due, role, amount])
    v.write(k_unbonding(addr), entries)
    due_addrs = v.read(k_unbonding_due(due), [])
    if addr not in due_addrs:
        v.write(k_unbonding_due(due), sorted(due_addrs + [addr]))
    _mark_candidate(v, addr, role)
    return due


def release_unbonded(v: View, height: int) -> None:
    """Return every unbonding entry due at `height` to its owner's balance."""
    for addr in v.read(k_unbonding_due(height), []):
        entries = v.read(k_unbonding(addr), [])
        due_now = [e for e in entries if e[0] <= height]
        add_balance(v, addr, sum(e[2] for e in due_now))
        rest = [e for e in entries if e[0] > height]
        v.write(k_unbonding(addr), rest or None)
    v.write(k_unbonding_due(height), None)


def unbonding_entries(v: View, addr: bytes) -> list[list]:
    return v.read(k_unbonding(addr), [])


def slash(v: View, addr: bytes, role: str, ppm: int) -> int:
    """Burn `ppm` parts per million of addr's stake in `role`, bonded and unbonding alike."""
    bonded = get_stake(v, addr, role)
    cut = -(-bonded * ppm // PPM)  # rounded up: a slash of a small stake is never free
    set_stake(v, addr, role, bonded - cut)
    entries = v.read(k_unbonding(addr), [])
    for e in entries:
        if e[1] == role:
            part = -(-e[2] * ppm // PPM)
            e[2] -= part
            cut += part
    if entries:
        v.write(k_unbonding(addr), entries)
    add_burned(v, cut)
    _mark_candidate(v, addr, role)
    return cut


def slash_amount(v: View, addr: bytes, role: str, amount: int) -> int:
    """Burn up to `amount` of addr's stake in `role`: bonded first, then unbonding entries
    (a party cannot dodge a collateral slash by unstaking). Returns what was burned."""
    bonded = get_stake(v, addr, role)
    cut = min(bonded, amount)
    set_stake(v, addr, role, bonded - cut)
    entries = v.read(k_unbonding(addr), [])
    for e in entries:
        if e[1] == role and cut < amount:
            part = min(e[2], amount - cut)
            e[2] -= part
            cut += part
    if entries:
        v.write(k_unbonding(addr), entries)
    add_burned(v, cut)
    _mark_candidate(v, addr, role)
    return cut


def jail(v: View, addr: bytes, height: int, tombstone: bool = False) -> None:
    until = height + get_params(v)["jail_blocks"]
    _, was_tombstoned = v.read(k_jail(addr), [0, False])
    v.write(k_jail(addr), [until, tombstone or was_tombstoned])
    v.write(K_VALSET_DIRTY, True)


def jail_status(v: View, addr: bytes) -> tuple[int, bool] | None:
    """(jailed until height, tombstoned) or None when not jailed."""
    raw = v.read(k_jail(addr))
    return (raw[0], raw[1]) if raw else None


def unjail(v: View, addr: bytes) -> None:
    v.write(k_jail(addr), None)
    v.write(K_VALSET_DIRTY, True)


def _mark_candidate(v: View, addr: bytes, role: str) -> None:
    """Keep the sorted list of addresses with stake in `role` (what sampling walks)."""
    key = k_candidates(role)
    candidates = v.read(key, [])
    has_stake = get_stake(v, addr, role) > 0
    if has_stake and addr not in candidates:
        v.write(key, sorted(candidates + [addr]))
    elif not has_stake and addr in candidates:
        v.write(key, [a for a in candidates if a != addr])
    if role == "validator":
        v.write(K_VALSET_DIRTY, True)


def candidates(v: View, role: str) -> list[tuple[bytes, int]]:
    """(address, stake) of everyone staked in `role`, sorted by address."""
    return [(a, get_stake(v, a, role)) for a in v.read(k_candidates(role), [])]


def compute_validator_set(v: View) -> list[Validator]:
    """Top `max_validators` unjailed validator stakes, ties broken by address."""
    params = get_params(v)
    ranked = []
    for addr in v.read(K_CANDIDATES, []):
        power = get_stake(v, addr, "validator")
        if power >= params["min_validator_stake"] and v.get(k_jail(addr)) is None:
            ranked.append((-power, addr))
    ranked.sort()
    chosen = sorted(addr for _, addr in ranked[: params["max_validators"]])
    return [Validator(a, v.read(k_pubkey(a)), get_stake(v, a, "validator")) for a in chosen]


def end_block_validator_set(v: View, height: int) -> None:
    """Rotate sets: the signers of `height` become 'last'; a change from h-1 becomes active;
    a change made in this block is scheduled for height+2."""
    v.write(K_LAST_VALSET, v.read(K_VALSET))
    pending = v.read(K_VALSET_PENDING, [])
    for eff, vals in pending:
        if eff == height + 1 and vals:
            v.write(K_VALSET, vals)
    pending = [p for p in pending if p[0] > height + 1]
    if v.read(K_VALSET_DIRTY, False):
        pending.append([height + 2, encode_valset(compute_validator_set(v))])
        v.write(K_VALSET_DIRTY, None)
    v.write(K_VALSET_PENDING, pending or None)


def valset_hash(vals: list[Validator]) -> bytes:
    return sha256(codec.encode(encode_valset(vals)))


def total_power(vals: list[Validator]) -> int:
    return sum(x.power for x in vals)


def bonded_total(v: View, addr: bytes) -> dict[str, int]:
    from .genesis import ROLES
    return {r: get_stake(v, addr, r) for r in ROLES}
