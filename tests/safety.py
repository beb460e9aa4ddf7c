"""After a chaos run: what every node's store says, checked against the others.

Reads each stopped node's plyvel store directly (consensus/store.py), so the verdict does
not depend on the RPC of a node that might be the broken one. A violation is:
- two different blocks, or two different app hashes, committed at one height on two nodes;
- a store whose app-hash chain does not verify (``Store.verify_hash_chain``);
- a stored commit without 2/3+ valid precommits for its block;
- a final state in which tokens are not conserved (``consensus.state.supply_check``).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from consensus.bft import verify_commit
from consensus.ledger import View, get_valset
from consensus.staking import valset_hash
from consensus.state import supply_check
from consensus.store import Store, StoreError

MAX_REPORTED = 20


@dataclass
class BlockInfo:
    hash: bytes
    app_hash: bytes  # what this node computed (the store's), not the header's claim
    round: int
    proposer: bytes
    time_ms: int
    txs: int


@dataclass
class NodeChain:
    """One node's committed chain, as its store holds it."""
    home: Path
    tip: int = 0
    blocks: list[BlockInfo] = field(default_factory=list)  # blocks[h-1] is height h
    tx_height: dict[str, int] = field(default_factory=dict)  # tx hash hex -> height
    problems: list[str] = field(default_factory=list)


def read_chain(home: Path, chain_id: str) -> NodeChain:
    out = NodeChain(Path(home))
    try:
        store = Store(Path(home) / "data")
    except StoreError as exc:
        out.problems.append(f"{home.name}: {exc}")
        return out
    try:
        out.tip = store.tip()[0]
        try:
            store.verify_hash_chain()
        except StoreError as exc:
            out.problems.append(f"{home.name}: {exc}")
        state = store.load_state()
        accounted, supply = supply_check(state)
        if accounted != supply:
            out.problems.append(f"{home.name}: tokens not conserved: {accounted} accounted, supply {supply}")
        _read_blocks(store, out, chain_id, tuple(get_valset(View(state))))
    finally:
        store.close()
    return out


def _read_blocks(store: Store, out: NodeChain, chain_id: str, valset: tuple) -> None:
    vhash = valset_hash(list(valset))
    for h in range(1, out.tip + 1):
        block, commit = store.block(h), store.commit(h)
        if block is None or commit is None:
            out.problems.append(f"{out.home.name}: height {h} has no block or commit")
            continue
        # The final validator set checks every commit made while it was in force; these runs
        # change no stakes, so that is all of them.
        if block.header.validators_hash == vhash:
            why = verify_commit(chain_id, commit, valset, h, block.hash)
            if why:
                out.problems.append(f"{out.home.name}: commit at height {h} is invalid: {why}")
        out.blocks.append(BlockInfo(block.hash, store.app_hash(h) or b"", commit.round, block.header.proposer,
                                    block.header.time_ms, len(block.txs)))
        for tx in block.txs:
            out.tx_height[tx.hash.hex()] = h


@dataclass
class SafetyReport:
    violations: list[str]
    heights: int  # the highest tip
    chains: list[NodeChain]

    @property
    def count(self) -> int:
        return len(self.violations)

    def canonical(self) -> NodeChain:
        """The longest chain (every other is a prefix of it when there is no violation)."""
        return max(self.chains, key=lambda c: c.tip)

    def summary(self) -> dict:
        return {"safety_violations": self.count, "violations": self.violations[:MAX_REPORTED],
                "heights_checked": self.heights, "tips": [c.tip for c in self.chains]}


def check_safety(homes: list[Path], chain_id: str) -> SafetyReport:
    """Read every store and compare them height by height."""
    chains = [read_chain(h, chain_id) for h in homes]
    violations = [p for c in chains for p in c.problems]
    top = max((c.tip for c in chains), default=0)
    for h in range(1, top + 1):
        seen = {(c.blocks[h - 1].hash, c.blocks[h - 1].app_hash): c.home.name
                for c in chains if len(c.blocks) >= h}
        if len({b for b, _ in seen}) > 1:
            violations.append(f"height {h}: different blocks committed: "
                              + ", ".join(f"{n}={b.hex()[:12]}" for (b, _), n in seen.items()))
        elif len(seen) > 1:
            violations.append(f"height {h}: one block, different app hashes on {sorted(seen.values())}")
    return SafetyReport(violations, top, chains)
