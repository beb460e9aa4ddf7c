"""Load and validate genesis.json: chain id, parameters, initial balances and stakes.

The genesis hash identifies the network: peers compare it in their hello, and block 1
points at it as its prev_hash.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import codec
from .crypto import address_of, parse_address, sha256

ROLES = ("validator", "solver", "verifier")

DEFAULT_PARAMS: dict[str, int] = {
    "min_fee": 1,                     # base units per tx, burned
    "max_block_txs": 10_000,
    "max_validators": 50,
    "unbonding_blocks": 20,           # blocks between unstake and the funds returning
    "jail_blocks": 20,                # blocks a jailed validator waits before unjail
    "slash_double_sign_ppm": 50_000,  # 5%
    "slash_downtime_ppm": 100,        # 0.01%
    "downtime_window": 100,
    "min_validator_stake": 1,
    # compute jobs (docs/PROTOCOL.md says why each default is what it is)
    "min_solver_stake": 1,
    "min_verifier_stake": 1,
    "solver_capacity": 2,             # open shards one solver may hold at once
    "verifiers_per_shard": 2,         # each checks its own drawn intervals
    "samples_per_shard": 1,           # intervals each verifier draws, besides the last one
    "min_intervals": 50,              # a shard has at least this many intervals (steps / k)
    "draw_delay_blocks": 2,           # verifiers come from the beacon this long after a commit
    "collateral_ratio_ppm": 3_000_000,  # a solver locks 3x the shard's reward while it is open
    "attest_collateral_ppm": 10_000_000,  # a drawn verifier locks 10x the reward: lost for vouching
                                      # for a proven fault or a forced error
    "verifier_collateral_ppm": 300_000,  # a challenger locks 0.3x the reward as its bond
    "challenge_fee": 100,             # an availability challenge answered in time costs this
    "response_blocks": 10,            # a solver's time to serve a blob named by a challenge
    "dispute_blocks": 40,             # validators' time to referee a challenge (after any game)
    "move_blocks": 10,                # each move of a bisection game must come within this
    "forced_error_ppm": 200_000,      # one shard in 5 carries a forced error (a planted fault)
    "pool_fee_ppm": 10_000,           # 1% of every job's budget goes to the jackpot pool
    "jackpot": 1_000,                 # paid to the first challenger of a forced error ...
    "jackpot_pool_ppm": 100_000,      # ... but never more than 10% of the pool
    "missed_deadline_slash_ppm": 10_000,
    "winner_share_ppm": 500_000,      # of a forfeit, paid to the other party; the rest is burned
    "max_active_jobs": 32,
    "max_blob_bytes": 4 * 1024 * 1024 * 1024,  # datasets, checkpoints and models (streamed, chunk-verified)
}


class GenesisError(ValueError):
    pass


@dataclass(frozen=True)
class Genesis:
    chain_id: str
    time_ms: int
    params: dict[str, int]
    balances: tuple[tuple[bytes, int], ...]             # (address, amount)
    stakes: tuple[tuple[bytes, bytes, str, int], ...]   # (address, pubkey, role, amount)
    raw: dict

    @property
    def hash(self) -> bytes:
        return sha256(codec.encode(self.raw))

    @property
    def total_supply(self) -> int:
        return sum(a for _, a in self.balances) + sum(s[3] for s in self.stakes)


def _int(value: Any, what: str, minimum: int = 0) -> int:
    if type(value) is not int or value < minimum:
        raise GenesisError(f"{what} must be an integer >= {minimum}, got {value!r}")
    return value


def _params(raw: Any) -> dict[str, int]:
    if not isinstance(raw, dict):
        raise GenesisError("params must be an object")
    unknown = sorted(set(raw) - set(DEFAULT_PARAMS))
    if unknown:
        raise GenesisError(f"unknown params: {', '.join(unknown)}")
    params = dict(DEFAULT_PARAMS)
    params.update({k: _int(v, f"params.{k}") for k, v in raw.items()})
    if params["response_blocks"] >= params["dispute_blocks"]:
        raise GenesisError("params.response_blocks must be below params.dispute_blocks: referees need time "
                           "to check that a challenged blob was served")
    if params["forced_error_ppm"] > 1_000_000 or params["jackpot_pool_ppm"] > 1_000_000:
        raise GenesisError("params.forced_error_ppm and params.jackpot_pool_ppm are shares: at most 1000000")
    for name in ("draw_delay_blocks", "verifiers_per_shard", "min_intervals", "move_blocks"):
        if params[name] < 1:
            raise GenesisError(f"params.{name} must be at least 1")
    return params


def _stake(i: int, entry: Any) -> tuple[bytes, bytes, str, int]:
    if not isinstance(entry, dict):
        raise GenesisError(f"stakes[{i}] must be an object")
    try:
        pubkey = bytes.fromhex(entry.get("pubkey", ""))
    except ValueError:
        raise GenesisError(f"stakes[{i}].pubkey is not hex") from None
    if len(pubkey) != 32:
        raise GenesisError(f"stakes[{i}].pubkey must be 32 bytes of hex")
    addr = address_of(pubkey)
    if entry.get("address") not in (None, "") and parse_address(entry["address"]) != addr:
        raise GenesisError(f"stakes[{i}].address does not match its pubkey")
    role = entry.get("role")
    if role not in ROLES:
        raise GenesisError(f"stakes[{i}].role must be one of {', '.join(ROLES)}")
    return addr, pubkey, role, _int(entry.get("amount"), f"stakes[{i}].amount", 1)


def parse(raw: Any) -> Genesis:
    if not isinstance(raw, dict):
        raise GenesisError("genesis must be a JSON object")
    chain_id = raw.get("chain_id")
    if not isinstance(chain_id, str) or not 0 < len(chain_id) <= 64:
        raise GenesisError("chain_id must be a string of 1 to 64 characters")
    balances = []
    for i, entry in enumerate(raw.get("accounts", [])):
        if not isinstance(entry, dict):
            raise GenesisError(f"accounts[{i}] must be an object")
        try:
            addr = parse_address(str(entry.get("address")))
        except ValueError as exc:
            raise GenesisError(f"accounts[{i}]: {exc}") from None
        balances.append((addr, _int(entry.get("balance"), f"accounts[{i}].balance")))
    stakes = [_stake(i, e) for i, e in enumerate(raw.get("stakes", []))]
    if len({a for a, _ in balances}) != len(balances):
        raise GenesisError("an address appears twice in accounts")
    if not any(s[2] == "validator" for s in stakes):
        raise GenesisError("genesis needs at least one validator stake")
    if sum(a for _, a in balances) + sum(s[3] for s in stakes) >= 2**63:
        raise GenesisError("total supply must stay below 2**63 base units")
    try:
        codec.encode(raw)
    except codec.CodecError as exc:
        raise GenesisError(f"genesis has a value with no canonical form: {exc}") from None
    return Genesis(chain_id, _int(raw.get("genesis_time_ms", 0), "genesis_time_ms"),
                   _params(raw.get("params", {})), tuple(balances), tuple(stakes), raw)


def load(path: str | Path) -> Genesis:
    try:
        raw = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise GenesisError(f"genesis file not found: {path}") from None
    except json.JSONDecodeError as exc:
        raise GenesisError(f"genesis file {path} is not valid JSON: {exc}") from None
    return parse(raw)
