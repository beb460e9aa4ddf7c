"""The state-transition function: genesis, blocks and transactions.

Read it like a spec. ``execute_block`` checks the block's context, applies evidence, then
each tx, then end-of-block duties, and returns the block's write-set and app hash. Each
``process_*`` function checks its preconditions (raising ``TxError`` before anything is
written) and then changes state. Nothing here reads the clock, uses floats or depends on
dict or set order; the only randomness is the beacon carried in the header.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable, Mapping

from . import jobs, staking
from .crypto import address_of, sha256, verify
from .genesis import Genesis
from .ledger import (K_BURNED, K_CANDIDATES, K_CHAIN, K_LAST_VALSET, K_PARAMS, K_SUPPLY, K_VALSET,
                     Account, View, add_balance, add_burned, encode_valset, get_account, get_chain, get_params,
                     get_stake, get_valset, k_liveness, k_pubkey, set_account, write_set_hash)
from .txschema import MAX_AMOUNT, SchemaError, check_body
from .types import DuplicateVoteEvidence, Tx

MAX_NONCE = 2**63 - 1
MAX_EVIDENCE_PER_BLOCK = 64  # one per offender is enough to tombstone it


class TxError(ValueError):
    """The tx is invalid against current state; it is left out and nothing is written."""


class BlockError(ValueError):
    """The block breaks a rule; validators refuse it."""


@dataclass(frozen=True)
class BlockContext:
    height: int
    time_ms: int
    proposer: bytes
    beacon: bytes
    last_signers: tuple[bytes, ...] = ()  # validators whose precommit for the parent is in this block


@dataclass
class BlockResult:
    writes: dict[bytes, bytes | None]
    included: list[Tx]
    rejected: list[tuple[Tx, str]]
    app_hash: bytes


SigCheck = Callable[[Tx], bool]


def check_signature(tx: Tx) -> bool:
    return verify(tx.sender, tx.sign_bytes(), tx.signature)


# -- genesis -------------------------------------------------------------------------------

def genesis_writes(g: Genesis) -> tuple[dict[bytes, bytes | None], bytes]:
    """The initial state and app hash (the hash of genesis, so both chain from one root)."""
    v = View({})
    v.write(K_PARAMS, g.params)
    v.write(K_SUPPLY, g.total_supply)
    v.write(K_BURNED, 0)
    v.write(K_CHAIN, [0, g.hash, g.time_ms])
    for addr, amount in g.balances:
        add_balance(v, addr, amount)
    for addr, pubkey, role, amount in g.stakes:
        v.write(k_pubkey(addr), pubkey)
        staking.bond(v, addr, role, amount)
    vals = encode_valset(staking.compute_validator_set(v))
    v.write(K_VALSET, vals)
    v.write(K_LAST_VALSET, vals)
    v.write(staking.K_VALSET_DIRTY, None)
    return v.writes, sha256(g.hash + write_set_hash(v.writes))


# -- transactions --------------------------------------------------------------------------

def _spend(v: View, sender: bytes, amount: int) -> None:
    acct = get_account(v, sender)
    if acct.balance < amount:
        raise TxError(f"insufficient funds: balance {acct.balance}, needs {amount}")
    set_account(v, sender, Account(acct.balance - amount, acct.nonce))


def process_transfer(v: View, tx: Tx, sender: bytes, height: int) -> None:
    amount = tx.body["amount"]
    _spend(v, sender, amount)
    add_balance(v, tx.body["to"], amount)


def process_stake(v: View, tx: Tx, sender: bytes, height: int) -> None:
    role, amount = tx.body["role"], tx.body["amount"]
    _spend(v, sender, amount)
    staking.bond(v, sender, role, amount)


def process_unstake(v: View, tx: Tx, sender: bytes, height: int) -> None:
    role, amount = tx.body["role"], tx.body["amount"]
    bonded = get_stake(v, sender, role)
    if amount > bonded:
        raise TxError(f"cannot unstake {amount}: only {bonded} bonded as {role}")
    if role == "solver" and v.read(jobs.k_load(sender), 0):
        raise TxError("cannot unstake solver stake while holding an assigned shard")
    locked = jobs.locked(v, sender, role)
    if amount > bonded - locked:
        raise TxError(f"cannot unstake {amount}: {locked} of the {bonded} bonded as {role} is locked as "
                      "collateral for open shards")
    staking.unbond(v, sender, role, amount, height)


def process_unjail(v: View, tx: Tx, sender: bytes, height: int) -> None:
    status = staking.jail_status(v, sender)
    if status is None:
        raise TxError("not jailed")
    until, tombstoned = status
    if tombstoned:
        raise TxError("tombstoned for double-signing: this validator can never be unjailed")
    if height < until:
        raise TxError(f"still jailed until height {until}")
    staking.unjail(v, sender)


TX_HANDLERS: dict[str, Callable[[View, Tx, bytes, int], None]] = {
    "transfer": process_transfer,
    "stake": process_stake,
    "unstake": process_unstake,
    "unjail": process_unjail,
    **jobs.TX_HANDLERS,
}


def check_stateless(tx: Tx, chain_id: str) -> None:
    """Everything about a tx that no state can change: the network it is for, its kind, the
    exact shape of its body. A node checks this at the door, and again in every block."""
    if tx.chain_id != chain_id:
        raise TxError(f"wrong chain_id {tx.chain_id!r}: this chain is {chain_id!r}")
    if tx.nonce > MAX_NONCE or tx.fee > MAX_AMOUNT:
        raise TxError("nonce or fee out of range")
    try:
        check_body(tx.kind, tx.body)
    except SchemaError as exc:
        raise TxError(str(exc)) from None


def check_tx_envelope(v: View, tx: Tx, chain_id: str, sig_ok: SigCheck = check_signature) -> bytes:
    """Checks every tx must pass whatever its kind; returns the sender address."""
    check_stateless(tx, chain_id)
    if tx.fee < get_params(v)["min_fee"]:
        raise TxError(f"fee {tx.fee} is below the minimum {get_params(v)['min_fee']}")
    if not sig_ok(tx):
        raise TxError("bad signature")
    sender = address_of(tx.sender)
    nonce = get_account(v, sender).nonce
    if tx.nonce != nonce:
        raise TxError(f"bad nonce {tx.nonce}: expected {nonce}"
                      + (" (already used: replay)" if tx.nonce < nonce else ""))
    return sender


def apply_tx(block_view: View, tx: Tx, chain_id: str, height: int, sig_ok: SigCheck) -> None:
    """Apply one tx fully or not at all: fee and nonce first, then the kind's handler."""
    v = View(block_view)
    sender = check_tx_envelope(v, tx, chain_id, sig_ok)
    _spend(v, sender, tx.fee)
    acct = get_account(v, sender)
    set_account(v, sender, Account(acct.balance, acct.nonce + 1))
    if v.get(k_pubkey(sender)) is None:
        v.write(k_pubkey(sender), tx.sender)
    add_burned(v, tx.fee)
    try:
        TX_HANDLERS[tx.kind](v, tx, sender, height)
    except jobs.JobError as exc:
        raise TxError(str(exc)) from None
    v.commit()


# -- evidence ------------------------------------------------------------------------------

def process_duplicate_vote(v: View, ev: DuplicateVoteEvidence, chain_id: str, height: int) -> None:
    """Slash, jail and tombstone a validator that signed two different votes for one step."""
    a, b = ev.vote_a, ev.vote_b
    if (a.validator, a.height, a.round, a.kind) != (b.validator, b.height, b.round, b.kind):
        raise BlockError("evidence votes are not for the same validator and step")
    if a.block_hash == b.block_hash:
        raise BlockError("evidence votes are identical")
    pubkey = v.read(k_pubkey(a.validator))
    if pubkey is None or not all(verify(pubkey, x.sign_bytes(chain_id), x.signature) for x in (a, b)):
        raise BlockError("evidence has a bad signature")
    status = staking.jail_status(v, a.validator)
    if status and status[1]:
        return  # already tombstoned: punished once
    staking.slash(v, a.validator, "validator", get_params(v)["slash_double_sign_ppm"])
    staking.jail(v, a.validator, height, tombstone=True)


# -- blocks --------------------------------------------------------------------------------

def check_block_context(v: View, ctx: BlockContext) -> None:
    height, _, last_time = get_chain(v)
    if ctx.height != height + 1:
        raise BlockError(f"height {ctx.height} does not follow {height}")
    if ctx.time_ms <= last_time:
        raise BlockError("block time must increase")
    if not any(x.address == ctx.proposer for x in get_valset(v, K_VALSET)):
        raise BlockError("proposer is not in the validator set")


def process_liveness(v: View, ctx: BlockContext) -> None:
    """Record who did not sign the parent; more than half of the window missed → slash and jail."""
    if ctx.height < 2:
        return
    params = get_params(v)
    window = params["downtime_window"]
    signers = set(ctx.last_signers)
    for val in get_valset(v, K_LAST_VALSET):
        if staking.jail_status(v, val.address) is not None:
            continue
        key = k_liveness(val.address)
        missed = v.read(key, [])
        kept = [h for h in missed if h > ctx.height - 1 - window]
        if val.address not in signers:
            kept.append(ctx.height - 1)
        if len(kept) > window // 2:
            staking.slash(v, val.address, "validator", params["slash_downtime_ppm"])
            staking.jail(v, val.address, ctx.height)
            kept = []
        if kept != missed:
            v.write(key, kept or None)


def end_block(v: View, ctx: BlockContext) -> None:
    process_liveness(v, ctx)
    jobs.process_jobs(v, ctx.height, ctx.beacon)
    staking.release_unbonded(v, ctx.height)
    staking.end_block_validator_set(v, ctx.height)
    v.write(K_CHAIN, [ctx.height, ctx.beacon, ctx.time_ms])


def execute_block(base: Mapping[bytes, bytes], prev_app_hash: bytes, chain_id: str, ctx: BlockContext,
                  txs: Iterable[Tx], evidence: Iterable[DuplicateVoteEvidence] = (),
                  sig_ok: SigCheck = check_signature, skip_invalid: bool = False) -> BlockResult:
    """Run a block on top of `base`. A proposer passes skip_invalid=True to leave bad txs out;
    a validator passes False so that any invalid tx makes the whole block invalid."""
    v = View(base)
    check_block_context(v, ctx)
    evidence = list(evidence)
    offenders = [ev.vote_a.validator for ev in evidence]
    if len(evidence) > MAX_EVIDENCE_PER_BLOCK or len(set(offenders)) != len(offenders):
        raise BlockError(f"a block carries at most {MAX_EVIDENCE_PER_BLOCK} pieces of evidence, one per validator")
    for ev in evidence:
        process_duplicate_vote(v, ev, chain_id, ctx.height)
    included, rejected = [], []
    max_txs = get_params(v)["max_block_txs"]
    for tx in txs:
        if len(included) >= max_txs:
            if not skip_invalid:
                raise BlockError(f"more than {max_txs} txs")
            break
        try:
            apply_tx(v, tx, chain_id, ctx.height, sig_ok)
            included.append(tx)
        except TxError as exc:
            if not skip_invalid:
                raise BlockError(f"invalid tx {tx.hash.hex()[:16]}: {exc}") from None
            rejected.append((tx, str(exc)))
    end_block(v, ctx)
    return BlockResult(v.writes, included, rejected, sha256(prev_app_hash + write_set_hash(v.writes)))


# -- queries used by the node and tests ----------------------------------------------------

def supply_check(entries: Mapping[bytes, bytes]) -> tuple[int, int]:
    """(tokens accounted for + burned, genesis supply): equal in every valid state."""
    from . import codec
    total = 0
    for key, raw in entries.items():
        if key.startswith(b"acct/"):
            total += codec.decode(raw)[0]
        elif key.startswith(b"stake/"):
            total += codec.decode(raw)
        elif key.startswith(b"unbond/"):
            total += sum(e[2] for e in codec.decode(raw))
        elif key.startswith(b"escrow/") or key == b"pool":
            total += codec.decode(raw)
    burned = codec.decode(entries[K_BURNED])
    return total + burned, codec.decode(entries[K_SUPPLY])


def validator_candidates(v: View) -> list[bytes]:
    return v.read(K_CANDIDATES, [])
