"""Pure helpers shared by the unit tests: deterministic keys, signed txs, a genesis, and a
tiny in-memory "chain" that runs blocks through consensus.state.execute_block and merges
their write-sets. No processes, no sockets, no disk."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable

from consensus import genesis as genesis_mod
from consensus.crypto import PrivateKey, format_address
from consensus.ledger import (K_CHAIN, K_LAST_VALSET, K_VALSET, Account, View, get_account, get_stake,
                              get_valset)
from consensus.state import BlockContext, BlockResult, execute_block, genesis_writes, supply_check
from consensus.types import PRECOMMIT, PREVOTE, DuplicateVoteEvidence, Tx, Vote

CHAIN_ID = "testchain"
GENESIS_TIME_MS = 1_700_000_000_000


def key(i: int) -> PrivateKey:
    """A deterministic key: seed = 32 copies of byte i (i in 1..255)."""
    assert 0 < i < 256
    return PrivateKey(bytes([i]) * 32)


def make_tx(k: PrivateKey, kind: str, body: dict, nonce: int, fee: int = 1,
            chain_id: str = CHAIN_ID) -> Tx:
    unsigned = Tx(chain_id, kind, k.pubkey, nonce, fee, body)
    return Tx(chain_id, kind, k.pubkey, nonce, fee, body, k.sign(unsigned.sign_bytes()))


def transfer(k: PrivateKey, to: bytes, amount: int, nonce: int, fee: int = 1, **kw) -> Tx:
    return make_tx(k, "transfer", {"to": to, "amount": amount}, nonce, fee, **kw)


def stake(k: PrivateKey, role: str, amount: int, nonce: int, fee: int = 1) -> Tx:
    return make_tx(k, "stake", {"role": role, "amount": amount}, nonce, fee)


def unstake(k: PrivateKey, role: str, amount: int, nonce: int, fee: int = 1) -> Tx:
    return make_tx(k, "unstake", {"role": role, "amount": amount}, nonce, fee)


def unjail(k: PrivateKey, nonce: int, fee: int = 1) -> Tx:
    return make_tx(k, "unjail", {}, nonce, fee)


def signed_vote(k: PrivateKey, kind: str, height: int, round_: int, block_hash: bytes,
                chain_id: str = CHAIN_ID) -> Vote:
    unsigned = Vote(kind, height, round_, block_hash, k.address)
    return Vote(kind, height, round_, block_hash, k.address, k.sign(unsigned.sign_bytes(chain_id)))


def double_sign_evidence(k: PrivateKey, height: int = 1, round_: int = 0, kind: str = PREVOTE,
                         chain_id: str = CHAIN_ID) -> DuplicateVoteEvidence:
    a = signed_vote(k, kind, height, round_, b"\xaa" * 32, chain_id)
    b = signed_vote(k, kind, height, round_, b"\xbb" * 32, chain_id)
    return DuplicateVoteEvidence(a, b)


def genesis_doc(accounts: Iterable[tuple[PrivateKey, int]], validators: Iterable[tuple[PrivateKey, int]],
                params: dict | None = None, chain_id: str = CHAIN_ID, extra_stakes=()) -> dict:
    """A genesis JSON document: funded accounts and validator stakes (plus optional other roles)."""
    return {
        "chain_id": chain_id,
        "genesis_time_ms": GENESIS_TIME_MS,
        "params": dict(params or {}),
        "accounts": [{"address": format_address(k.address), "balance": bal} for k, bal in accounts],
        "stakes": [{"pubkey": k.pubkey.hex(), "role": "validator", "amount": amt} for k, amt in validators]
                  + [{"pubkey": k.pubkey.hex(), "role": role, "amount": amt} for k, role, amt in extra_stakes],
    }


def merge(base: dict, writes: dict) -> dict:
    """A new state: base with non-None writes applied and None writes deleted."""
    out = dict(base)
    for k, v in writes.items():
        if v is None:
            out.pop(k, None)
        else:
            out[k] = v
    return out


# Standard cast used by several test files.
VAL = key(1)      # the genesis validator
ALICE = key(2)
BOB = key(3)
CAROL = key(4)
OUTSIDER = key(9)  # never funded

DEFAULT_BALANCES = ((VAL, 1_000), (ALICE, 1_000), (BOB, 500), (CAROL, 0))


@dataclass
class Chain:
    """An in-memory chain: state dict, app hash, height and time, advanced one block at a time."""
    genesis: genesis_mod.Genesis
    state: dict
    app_hash: bytes
    proposer: bytes
    height: int = 0
    time_ms: int = GENESIS_TIME_MS
    results: list[BlockResult] = field(default_factory=list)

    @classmethod
    def create(cls, accounts=DEFAULT_BALANCES, validators=((VAL, 10_000),), params=None,
               chain_id: str = CHAIN_ID, extra_stakes=()) -> "Chain":
        g = genesis_mod.parse(genesis_doc(accounts, validators, params, chain_id, extra_stakes))
        writes, app_hash = genesis_writes(g)
        state = merge({}, writes)
        return cls(g, state, app_hash, proposer=list(validators)[0][0].address)

    @property
    def chain_id(self) -> str:
        return self.genesis.chain_id

    def ctx(self, height: int | None = None, time_ms: int | None = None, proposer: bytes | None = None,
            last_signers: tuple[bytes, ...] | None = None) -> BlockContext:
        h = self.height + 1 if height is None else height
        if last_signers is None:  # everyone who signed the parent signed it
            last_signers = tuple(v.address for v in get_valset(self.view(), K_LAST_VALSET))
        return BlockContext(h, self.time_ms + 1_000 if time_ms is None else time_ms,
                            self.proposer if proposer is None else proposer,
                            bytes([h % 256]) * 32, last_signers)

    def execute(self, txs=(), evidence=(), skip_invalid: bool = False, **ctx_kw) -> BlockResult:
        """Run a block on the current state without applying it."""
        return execute_block(self.state, self.app_hash, self.chain_id, self.ctx(**ctx_kw), list(txs),
                             list(evidence), skip_invalid=skip_invalid)

    def block(self, txs=(), evidence=(), skip_invalid: bool = False, **ctx_kw) -> BlockResult:
        """Run a block and apply its writes."""
        ctx = self.ctx(**ctx_kw)
        res = execute_block(self.state, self.app_hash, self.chain_id, ctx, list(txs), list(evidence),
                            skip_invalid=skip_invalid)
        self.state = merge(self.state, res.writes)
        self.app_hash = res.app_hash
        self.height, self.time_ms = ctx.height, ctx.time_ms
        self.results.append(res)
        return res

    def empty_blocks(self, n: int, **ctx_kw) -> None:
        for _ in range(n):
            self.block(**ctx_kw)

    # -- reads ------------------------------------------------------------------------------

    def view(self) -> View:
        return View(self.state)

    def account(self, k_or_addr) -> Account:
        return get_account(self.view(), getattr(k_or_addr, "address", k_or_addr))

    def balance(self, k_or_addr) -> int:
        return self.account(k_or_addr).balance

    def nonce(self, k_or_addr) -> int:
        return self.account(k_or_addr).nonce

    def stake_of(self, k_or_addr, role: str = "validator") -> int:
        return get_stake(self.view(), getattr(k_or_addr, "address", k_or_addr), role)

    def valset(self, key_: bytes = K_VALSET) -> dict[bytes, int]:
        return {v.address: v.power for v in get_valset(self.view(), key_)}

    def chain_tip(self) -> list:
        return self.view().read(K_CHAIN)

    def supply_ok(self) -> bool:
        total, supply = supply_check(self.state)
        return total == supply


__all__ = ["CHAIN_ID", "Chain", "PRECOMMIT", "PREVOTE", "merge", "key", "make_tx", "transfer", "stake",
           "unstake", "unjail", "signed_vote", "double_sign_evidence", "genesis_doc", "VAL", "ALICE", "BOB",
           "CAROL", "OUTSIDER"]


# -- compute jobs: specs and commits over fake checkpoint hashes -------------------------------

def job_spec(**overrides) -> dict:
    """A structurally valid on-chain job spec (what `stepchain job submit` sends), small numbers:
    2 shards x 1 round of 100 steps with a checkpoint every 2 steps (50 intervals, the least the
    chain's default min_intervals allows; 51 leaves)."""
    spec = {"model": "mlp", "model_args": {"in_dim": 2, "hidden": [8], "out_dim": 3},
            "data": {"generator": "spirals", "args": {"n": 60, "classes": 3}, "seed": 7},
            "optimizer": "sgd", "profile": "cpu-f32-1thread", "metric": "accuracy",
            "batch_size": 8, "shards": 2, "rounds": 1, "steps": 100, "k": 2, "lr_ppm": 10_000, "seed": 1,
            "tolerance_ppm": 1_000, "holdout_ppm": 200_000, "reward_per_shard": 100, "verification_fee": 10,
            "commit_blocks": 3, "verify_blocks": 2}
    spec.update(overrides)
    return spec


def fake_leaves(n: int, tag: bytes = b"") -> list[bytes]:
    """n distinct 32-byte stand-ins for checkpoint hashes (the chain never sees checkpoints)."""
    from consensus.crypto import sha256
    return [sha256(b"checkpoint/" + tag + i.to_bytes(4, "big")) for i in range(n)]


def manifest_of(leaves: list[bytes]) -> bytes:
    """The id of a shard's manifest blob (the list of its leaf hashes)."""
    from consensus import codec
    from consensus.blobid import blob_id
    return blob_id(codec.encode(leaves))


def commit_body(job_id: bytes, round_: int, shard: int, leaves: list[bytes], **overrides) -> dict:
    """A commit_shard body as an honest solver builds it: the Merkle root over `leaves`, the
    manifest's hash, and the first and last leaves with their inclusion proofs."""
    from consensus import merkle
    body = {"job": job_id, "round": round_, "shard": shard, "root": merkle.root(leaves), "leaves": len(leaves),
            "manifest": manifest_of(leaves),
            "start": leaves[0], "start_proof": merkle.proof(leaves, 0),
            "final": leaves[-1], "final_proof": merkle.proof(leaves, len(leaves) - 1), "diverged_leaf": 0,
            "losses": [0] * (len(leaves) - 1)}
    body.update(overrides)
    return body


def challenge_body(job_id: bytes, round_: int, shard: int, interval: int, leaves: list[bytes] | None = None,
                   **overrides) -> dict:
    """A challenge body; for interval >= 0 it carries both ends of the interval with proofs."""
    from consensus import merkle
    body = {"job": job_id, "round": round_, "shard": shard, "interval": interval}
    if interval >= 0 and leaves is not None:
        body.update(start_leaf=leaves[interval], start_proof=merkle.proof(leaves, interval),
                    end_leaf=leaves[interval + 1], end_proof=merkle.proof(leaves, interval + 1))
    body.update(overrides)
    return body


def availability_body(job_id: bytes, round_: int, shard: int, leaves: list[bytes], leaf: int,
                      **overrides) -> dict:
    """An availability challenge: leaf -1 names the manifest, any other leaf its checkpoint
    hash with the inclusion proof."""
    from consensus import merkle
    body = {"job": job_id, "round": round_, "shard": shard, "leaf": leaf,
            "unavailable": manifest_of(leaves) if leaf == -1 else leaves[leaf],
            "proof": [] if leaf == -1 else merkle.proof(leaves, leaf)}
    body.update(overrides)
    return body
