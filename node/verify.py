"""`stepchain node verify`: re-execute every stored block from genesis and compare app hashes.

This trusts nothing in the store but the blocks themselves: state is rebuilt in memory from
genesis, each block's commit is checked against the validator set we computed, and each
recomputed app hash must equal the one the block carries and the one stored for its height.
"""
from __future__ import annotations

from consensus.bft import verify_commit
from consensus.genesis import load as load_genesis
from consensus.ledger import K_LAST_VALSET, View, get_valset
from consensus.state import BlockContext, execute_block, genesis_writes, supply_check
from consensus.store import Store, StoreError

from .chain import signers_of
from .home import Home, HomeError


def verify_home(home: Home) -> dict:
    genesis = load_genesis(home.require().genesis_path)
    if not home.data_dir.exists():
        raise HomeError(f"the node at {home.path} has never run: there is no chain to verify yet")
    store = Store(home.data_dir)
    try:
        height, _, tip_app = store.tip()
        store.verify_hash_chain()
        writes, app_hash = genesis_writes(genesis)
        state = {k: v for k, v in writes.items() if v is not None}
        for h in range(1, height + 1):
            block = store.block(h)
            commit = store.commit(h)
            ctx = BlockContext(h, block.header.time_ms, block.header.proposer, block.header.beacon,
                               signers_of(block.last_commit))
            result = execute_block(state, app_hash, genesis.chain_id, ctx, block.txs, block.evidence)
            if result.app_hash != block.header.app_hash or result.app_hash != store.app_hash(h):
                raise StoreError(f"re-execution of height {h} gives a different app hash")
            for k, val in result.writes.items():
                if val is None:
                    state.pop(k, None)
                else:
                    state[k] = val
            why = verify_commit(genesis.chain_id, commit, get_valset(View(state), K_LAST_VALSET), h, block.hash)
            if why:
                raise StoreError(f"commit for height {h}: {why}")
            app_hash = result.app_hash
        if state != store.load_state():
            raise StoreError("stored state differs from the state rebuilt from blocks")
        accounted, supply = supply_check(state)
        if accounted != supply:
            raise StoreError(f"supply mismatch: {accounted} accounted for, {supply} created")
        return {"height": height, "app_hash": tip_app.hex(), "supply": supply}
    finally:
        store.close()
