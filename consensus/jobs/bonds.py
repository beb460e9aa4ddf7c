"""Collateral and hash-chain secrets: what a solver or verifier puts at stake for a shard.

Collateral. Taking a shard locks `collateral_ratio_ppm` x its reward of the solver's bonded
stake; being drawn to verify it locks `attest_collateral_ppm` x the reward of the verifier's,
and challenging it `verifier_collateral_ppm` x the reward. A lock lasts while the shard can
still be disputed; unstaking cannot free it, and a proven fault forfeits it. So what a party
risks always grows with what it answers for, whatever its total stake. A drawn verifier's lock
is the large one: attesting a forced error without having computed it loses it, and forced
errors are rare, so it must outweigh what skipping the work saves (docs/PROTOCOL.md).

Secrets. Every verifier registers the tip of a hash chain (consensus/hashchain.py); every
solver the Merkle root of independent secrets (consensus/forced.py: revealing one must not
expose another). Each assignment reserves the solver's next secret, which, with the assignment
block's beacon, decides whether the shard carries a forced error.
The chain reserves the next element at each verifier selection, and the verifier reveals it
when it attests: its intervals are drawn from that element, the commit root and the beacon of
the selection block, which neither the solver (when it committed) nor the verifier (when it
registered) could know together.
"""
from __future__ import annotations

from dataclasses import dataclass

from .. import forced, hashchain, staking
from ..ledger import View, add_balance, add_burned, get_params, get_stake
from .errors import JobError
from .records import Record, k_load

ROLES = ("solver", "verifier")
K_POOL = b"pool"  # the protocol's jackpot pool: funded by job fees and lazy verifiers' stakes


def k_lock(addr: bytes, role: str) -> bytes: return b"lock/" + role.encode() + b"/" + addr
def k_secrets(addr: bytes, role: str) -> bytes: return b"secrets/" + role.encode() + b"/" + addr


def solver_collateral(params: dict, spec: dict) -> int:
    return spec["reward_per_shard"] * params["collateral_ratio_ppm"] // staking.PPM


def attest_collateral(params: dict, spec: dict) -> int:
    return spec["reward_per_shard"] * params["attest_collateral_ppm"] // staking.PPM


def challenge_bond(params: dict, spec: dict) -> int:
    return spec["reward_per_shard"] * params["verifier_collateral_ppm"] // staking.PPM


def verifier_pool(v: View, params: dict, spec: dict, shard) -> list[tuple[bytes, int]]:
    """(verifier, stake) of everyone a draw for this shard may pick: staked, with free stake
    for the collateral and a challenge bond (a drawn verifier must always be able to challenge
    what it finds) and secrets left, neither its solver nor one that stayed silent on it."""
    need = attest_collateral(params, spec) + challenge_bond(params, spec)
    return [(a, w) for a, w in staking.candidates(v, "verifier")
            if w >= params["min_verifier_stake"] and a != shard.solver and a not in shard.silent
            and free_stake(v, a, "verifier") >= need and has_secrets(v, a, "verifier")]


def locked(v: View, addr: bytes, role: str) -> int:
    return v.read(k_lock(addr, role), 0)


def free_stake(v: View, addr: bytes, role: str) -> int:
    """Bonded stake not locked as collateral (what unstaking and new locks may use)."""
    return max(0, get_stake(v, addr, role) - locked(v, addr, role))


def lock(v: View, addr: bytes, role: str, amount: int) -> None:
    if amount > free_stake(v, addr, role):
        raise JobError(f"needs {amount} of free {role} stake as collateral, has {free_stake(v, addr, role)}")
    v.write(k_lock(addr, role), locked(v, addr, role) + amount or None)


def unlock(v: View, addr: bytes, role: str, amount: int) -> None:
    v.write(k_lock(addr, role), max(0, locked(v, addr, role) - amount) or None)


def forfeit_to_pool(v: View, addr: bytes, role: str, amount: int) -> int:
    """The locked `amount` is slashed into the jackpot pool (what lazy verifiers lose pays
    the jackpots that catch them). Returns the cut."""
    unlock(v, addr, role, amount)
    cut = staking.slash_amount(v, addr, role, amount)
    add_burned(v, -cut)
    add_pool(v, cut)
    return cut


def pool(v: View) -> int:
    return v.read(K_POOL, 0)


def add_pool(v: View, amount: int) -> None:
    v.write(K_POOL, pool(v) + amount or None)


def forfeit(v: View, addr: bytes, role: str, amount: int, winner: bytes | None) -> tuple[int, int]:
    """The locked `amount` is slashed; `winner_share_ppm` of it goes to `winner`, the rest is
    burned. Returns (cut, share)."""
    unlock(v, addr, role, amount)
    cut = staking.slash_amount(v, addr, role, amount)
    share = cut * get_params(v)["winner_share_ppm"] // staking.PPM if winner else 0
    if share:
        add_balance(v, winner, share)
        add_burned(v, -share)
    return cut, share


@dataclass
class SecretChain(Record):
    anchor: bytes   # the highest element revealed so far (the tip at first)
    index: int      # its index
    length: int     # elements the registration holds
    next: int       # the next element a selection will reserve


def register(v: View, addr: bytes, role: str, tip: bytes, length: int) -> None:
    """A new chain replaces the old one only when nothing is locked: an open selection still
    needs the element it reserved. Nor while a solver holds a shard: one paying no reward locks
    no collateral, yet its reserved secret is still owed (and a new root would let the solver
    choose, after the fact, which interval was its forced error)."""
    if locked(v, addr, role) or (role == "solver" and v.read(k_load(addr), 0)):
        raise JobError("new secrets can be registered only with no collateral locked and no shard held in that role")
    v.write(k_secrets(addr, role), SecretChain(tip, 0, length, 1).to_map())


def _chain(v: View, addr: bytes, role: str) -> SecretChain | None:
    raw = v.read(k_secrets(addr, role))
    return SecretChain.from_map(raw) if raw is not None else None


def has_secrets(v: View, addr: bytes, role: str) -> bool:
    chain = _chain(v, addr, role)
    if chain is None or chain.next > chain.length:
        return False
    return role == "solver" or chain.next - chain.index <= hashchain.MAX_GAP  # a solver's are independent


def reserve(v: View, addr: bytes, role: str) -> int:
    """The index of the element that will answer the draw being made now."""
    chain = _chain(v, addr, role)
    index, chain.next = chain.next, chain.next + 1
    v.write(k_secrets(addr, role), chain.to_map())
    return index


def reveal_solver_secret(v: View, addr: bytes, index: int, value: bytes, proof) -> None:
    """Accept `value` as secret `index` of the solver's registered Merkle root, or raise."""
    chain = _chain(v, addr, "solver")
    if chain is None or index >= chain.next or not forced.check_secret(chain.anchor, chain.length, index, value, proof):
        raise JobError(f"not secret {index} of the registered solver secrets (with its proof)")


def reveal(v: View, addr: bytes, role: str, index: int, value: bytes) -> None:
    """Accept `value` as element `index` of addr's chain, or raise JobError."""
    chain = _chain(v, addr, role)
    if chain is None:
        raise JobError("no hash chain registered")
    try:
        if index <= chain.index:
            if value != hashchain.derive(chain.anchor, chain.index, index):
                raise hashchain.HashChainError(f"not element {index} of the registered hash chain")
            return
        hashchain.check_reveal(chain.anchor, chain.index, value, index)
    except hashchain.HashChainError as exc:
        raise JobError(str(exc)) from None
    chain.anchor, chain.index = value, index
    v.write(k_secrets(addr, role), chain.to_map())
