"""The chaos runs' safety verdict (tests/safety.py) on real stores: it must see a fork,
diverging execution, a forged commit and tokens created from nothing, not only say "fine"."""
from __future__ import annotations

import json
import shutil

import plyvel

from consensus import codec
from consensus.crypto import PrivateKey, format_address
from consensus.genesis import load as load_genesis
from consensus.store import P_APP, P_STATE
from consensus.types import PRECOMMIT, Commit
from node.chain import Chain
from node.client import make_tx
from node.init import REPO_GENESIS, dev_genesis, read_template
from tests.chainfactory import signed_vote
from tests.safety import check_safety

VALIDATOR, USER = PrivateKey(b"\x07" * 32), PrivateKey(b"\x08" * 32)


def genesis_file(tmp_path):
    path = tmp_path / "genesis.json"
    path.write_text(json.dumps(dev_genesis(read_template(REPO_GENESIS), [VALIDATOR], [format_address(USER.address)])))
    return load_genesis(path)


def grow(home, genesis, amounts, sign_with=VALIDATOR):
    """Commit one block per amount (a transfer of that many tokens) in a node home."""
    chain = Chain(home / "data", genesis)
    try:
        for amount in amounts:  # USER's n-th transfer (nonce n) goes in block n+1
            tx = make_tx(USER, chain.chain_id, "transfer", {"to": VALIDATOR.address, "amount": amount}, chain.height, 1)
            chain.mempool.add(tx, chain.view())
            block = chain.build_block(VALIDATOR)
            vote = signed_vote(sign_with, PRECOMMIT, block.height, 0, block.hash, chain.chain_id)
            chain.commit_block(block, Commit(block.height, 0, block.hash, ((VALIDATOR.address, vote.signature),)))
    finally:
        chain.close()


def test_identical_stores_pass_and_report_what_they_hold(tmp_path):
    g = genesis_file(tmp_path)
    grow(tmp_path / "a", g, [5, 6, 7])
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    report = check_safety([tmp_path / "a", tmp_path / "b"], g.chain_id)
    assert report.count == 0, report.violations
    assert report.heights == 3 and [c.tip for c in report.chains] == [3, 3]
    assert len(report.canonical().tx_height) == 3


def test_a_fork_at_one_height_is_a_violation(tmp_path):
    g = genesis_file(tmp_path)
    grow(tmp_path / "a", g, [5, 6])
    grow(tmp_path / "b", g, [5, 9])  # height 2 differs (and so may height 1's time)
    report = check_safety([tmp_path / "a", tmp_path / "b"], g.chain_id)
    assert any("different blocks committed" in v for v in report.violations), report.violations


def test_diverging_execution_forged_commits_and_minted_tokens_are_violations(tmp_path):
    g = genesis_file(tmp_path)
    grow(tmp_path / "a", g, [5])
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    grow(tmp_path / "c", g, [5], sign_with=USER)  # a commit not signed by the validator
    db = plyvel.DB(str(tmp_path / "b" / "data"))
    db.put(P_APP + (1).to_bytes(8, "big"), b"\x00" * 32)  # b claims another result for block 1
    key = P_STATE + b"acct/" + USER.address
    balance, nonce = codec.decode(db.get(key))[:2]
    db.put(key, codec.encode([balance + 1000, nonce]))  # and 1000 tokens from nowhere
    db.close()
    report = check_safety([tmp_path / "a", tmp_path / "b"], g.chain_id)
    assert any("different app hashes" in v for v in report.violations), report.violations
    assert any("app hash chain broken" in v for v in report.violations), report.violations
    assert any("tokens not conserved" in v for v in report.violations), report.violations
    forged = check_safety([tmp_path / "c"], g.chain_id)
    assert any("commit at height 1 is invalid" in v for v in forged.violations), forged.violations
