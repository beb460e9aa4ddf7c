"""The command line as a user drives it, against a real dev node: keys, transfers, staking,
unbonding, chain queries, a clean stop and restart, and `node verify` on the stopped node."""
from __future__ import annotations

import json
import re
import stat

import pytest

from consensus.genesis import ROLES
from node.init import DEV_BALANCE, DEV_VALIDATOR_FUNDS, DEV_VALIDATOR_STAKE
from tests.nodes import NodeProcess

pytestmark = pytest.mark.slow

FEE = 1  # the CLI's default fee, burned
UNBONDING_BLOCKS = 20  # genesis.json
COMMITTED = re.compile(r"tx ([0-9a-f]{64}) committed at height (\d+)")
HEX64 = re.compile(r"^[0-9a-f]{64}$")


def committed(proc) -> tuple[str, int]:
    """(tx hash, height) from a waiting tx command's text output."""
    m = COMMITTED.search(proc.stdout)
    assert m, proc.stdout
    return m.group(1), int(m.group(2))


def balance(node: NodeProcess, who: str) -> dict:
    return node.cli("balance", who)


def new_key(node: NodeProcess, name: str) -> str:
    out = node.cli("wallet", "new", name)
    assert out["name"] == name and re.fullmatch(r"sc1[0-9a-f]{40}", out["address"]), out
    return out["address"]


def test_wallet_new_list_show_export_import(tmp_path):
    node = NodeProcess.init_dev(tmp_path)  # the wallet needs no running node
    alice = new_key(node, "alice")
    key_file = node.home / "keystore" / "alice.json"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600

    listed = node.cli("wallet", "list")["keys"]
    assert sorted(k["name"] for k in listed) == ["alice", "dev"]
    assert {k["name"]: k["address"] for k in listed}["alice"] == alice
    text = node.cli("wallet", "list", json_out=False).stdout
    assert f"alice\t{alice}" in text and "dev\tsc1" in text

    shown = node.cli("wallet", "show", "alice")
    assert shown["address"] == alice and len(shown["pubkey"]) == 64
    assert alice in node.cli("wallet", "show", "alice", json_out=False).stdout

    # the sealed export holds no clear secret; importing it under another name gives the same key
    exported = node.cli("wallet", "export", "alice", json_out=False).stdout
    doc = json.loads(exported)
    assert doc["address"] == alice and "seed" not in doc
    secret = node.cli("wallet", "export", "alice", "--secret")["seed"]
    assert HEX64.match(secret) and secret not in exported
    export_file = tmp_path / "alice-export.json"
    export_file.write_text(exported)
    imported = node.cli("wallet", "import", "alice-copy", "--file", str(export_file))
    assert imported == {"name": "alice-copy", "address": alice}
    assert node.cli("wallet", "show", "alice-copy")["address"] == alice
    assert node.cli("wallet", "export", "alice-copy", "--secret")["seed"] == secret

    # the bare seed (text output of export --secret) on stdin restores the same address
    seed_text = node.cli("wallet", "export", "alice", "--secret", json_out=False).stdout
    assert seed_text.strip() == secret
    restored = node.cli("wallet", "import", "alice-restored", input=seed_text)
    assert restored == {"name": "alice-restored", "address": alice}
    text = node.cli("wallet", "import", "alice-again", input=secret + "\n", json_out=False).stdout
    assert alice in text

    # and into a different home altogether
    other = NodeProcess.init_dev(tmp_path, name="other")
    assert other.cli("wallet", "import", "alice", "--file", str(export_file))["address"] == alice
    names = [k["name"] for k in node.cli("wallet", "list")["keys"]]
    assert names == sorted(["dev", "alice", "alice-copy", "alice-restored", "alice-again"])


def test_transfer_exact_balances_and_queries(dev_node):
    n = dev_node
    alice = new_key(n, "alice")
    dev_before = balance(n, "dev")
    dev_addr = dev_before["address"]
    assert dev_before["balance"] == DEV_BALANCE and dev_before["nonce"] == 0
    assert dev_before["stake"] == {r: 0 for r in ROLES} and dev_before["unbonding"] == []
    empty = balance(n, alice)
    assert (empty["address"], empty["balance"], empty["nonce"]) == (alice, 0, 0)

    # text output: the hash and the height it was committed at
    proc = n.cli("transfer", "--from", "dev", "--to", alice, "--amount", "12345", json_out=False)
    tx_hash, height = committed(proc)
    assert f"sent 12345 to {alice}" in proc.stdout
    assert balance(n, "dev")["balance"] == DEV_BALANCE - 12345 - FEE
    assert balance(n, "alice")["balance"] == 12345

    # by key name, with --json
    out = n.cli("transfer", "--from", "dev", "--to", "alice", "--amount", "5")
    assert out["status"] == "committed" and HEX64.match(out["hash"]) and out["height"] > height
    # back from alice, with a larger fee
    proc = n.cli("transfer", "--from", "alice", "--to", "dev", "--amount", "100", "--fee", "3", json_out=False)
    _, back_height = committed(proc)
    a = balance(n, alice)
    assert (a["balance"], a["nonce"], a["stake"]) == (12345 + 5 - 100 - 3, 1, {r: 0 for r in ROLES})
    d = balance(n, dev_addr)
    assert (d["balance"], d["nonce"]) == (DEV_BALANCE - 12345 - 5 - 2 * FEE + 100, 2)

    # --no-wait returns at once; the tx lands anyway
    out = n.cli("transfer", "--from", "dev", "--to", alice, "--amount", "1", "--no-wait")
    assert out["status"] == "pending"
    assert n.rpc.wait_for_tx(out["hash"])["status"] == "committed"
    assert balance(n, alice)["balance"] == 12345 + 5 - 100 - 3 + 1

    # tx and block commands
    t = n.cli("tx", tx_hash)
    assert (t["hash"], t["status"], t["height"], t["kind"]) == (tx_hash, "committed", height, "transfer")
    assert (t["sender"], t["fee"], t["nonce"], t["body"]) == (dev_addr, FEE, 0, {"amount": 12345, "to": alice})
    assert n.cli("tx", tx_hash, json_out=False).stdout.strip() == f"tx {tx_hash} committed at height {height}"
    b = n.cli("block", str(height))
    assert b["height"] == height and tx_hash in [x["hash"] for x in b["txs"]] and b["num_txs"] == len(b["txs"])
    assert HEX64.match(b["hash"]) and HEX64.match(b["app_hash"]) and b["proposer"].startswith("sc1")
    if height > 1:
        assert n.cli("block", str(height - 1))["hash"] == b["prev_hash"]
    text = n.cli("block", str(height), json_out=False).stdout
    assert text.startswith(f"block {height} {b['hash']}") and f"app_hash {b['app_hash']}" in text
    assert n.cli("block")["height"] >= back_height

    s = n.cli("status")
    assert s["chain_id"].startswith("stepchain-dev-") and isinstance(s["height"], int) and s["height"] >= back_height
    assert HEX64.match(s["app_hash"]) and HEX64.match(s["block_hash"]) and s["validators"] == 1
    assert "chain stepchain-dev-" in n.cli("status", json_out=False).stdout
    text = n.cli("balance", "alice", json_out=False).stdout
    assert alice in text and f"balance: {12345 + 5 - 100 - 3 + 1}" in text


def test_stake_unstake_and_unbonding_release(dev_node):
    n = dev_node
    bob = new_key(n, "bob")
    n.cli("transfer", "--from", "dev", "--to", "bob", "--amount", "10000")
    expected = 10000
    stakes = {"solver": 1000, "verifier": 500, "validator": 300}
    for role, amount in stakes.items():
        proc = n.cli("stake", "--from", "bob", "--role", role, "--amount", str(amount), json_out=False)
        _, height = committed(proc)
        assert f"staked {amount} as {role}" in proc.stdout
        expected -= amount + FEE
        assert balance(n, "bob")["balance"] == expected
    b = balance(n, bob)
    assert b["stake"] == stakes and b["unbonding"] == [] and b["nonce"] == 3
    # a validator stake joins the set two blocks later
    n.wait_height(height + 2)
    vals = {v["address"]: v["power"] for v in n.rpc.get("/validators")["validators"]}
    assert vals[bob] == 300 and len(vals) == 2

    # unstake: out of the stake into unbonding, only the fee leaves the balance
    out = n.cli("unstake", "--from", "bob", "--role", "solver", "--amount", "400")
    solver_release = out["height"] + UNBONDING_BLOCKS
    out = n.cli("unstake", "--from", "bob", "--role", "validator", "--amount", "300")
    validator_release = out["height"] + UNBONDING_BLOCKS
    expected -= 2 * FEE
    b = balance(n, "bob")
    assert b["balance"] == expected
    assert b["stake"] == {"solver": 600, "verifier": 500, "validator": 0}
    assert b["unbonding"] == [{"release_height": solver_release, "role": "solver", "amount": 400},
                              {"release_height": validator_release, "role": "validator", "amount": 300}]
    assert "unbonding: 700" in n.cli("balance", "bob", json_out=False).stdout

    # the validator leaves the set at once (h+2); the tokens wait unbonding_blocks
    n.wait_height(validator_release - UNBONDING_BLOCKS + 2)
    assert bob not in {v["address"] for v in n.rpc.get("/validators")["validators"]}
    n.wait_height(solver_release - 1)
    b = balance(n, "bob")
    if b["height"] < solver_release:
        assert b["balance"] == expected and len(b["unbonding"]) == 2
    n.wait_height(solver_release, timeout=60)
    b = balance(n, "bob")
    if b["height"] < validator_release:
        assert b["balance"] == expected + 400
        assert b["unbonding"] == [{"release_height": validator_release, "role": "validator", "amount": 300}]
    n.wait_height(validator_release, timeout=60)
    b = balance(n, "bob")
    assert (b["balance"], b["unbonding"], b["nonce"]) == (expected + 700, [], 5)
    assert b["stake"] == {"solver": 600, "verifier": 500, "validator": 0}


def test_sigterm_restart_resumes_and_verify(dev_node):
    n = dev_node
    carol = new_key(n, "carol")
    n.cli("transfer", "--from", "dev", "--to", "carol", "--amount", "777")
    n.cli("stake", "--from", "dev", "--role", "verifier", "--amount", "1000")
    n.wait_height(5)
    before = n.rpc.status()
    seen = {h: n.rpc.get(f"/block/{h}")["hash"] for h in range(1, before["height"] + 1)}

    assert n.stop() == 0, n.log()
    stopped_at = re.findall(r"stopped at height (\d+)", n.log())
    assert stopped_at and int(stopped_at[-1]) >= before["height"], n.log()
    height = int(stopped_at[-1])
    assert "Traceback" not in n.log_path.read_text()

    # node verify re-executes the whole stored chain from genesis
    v = n.cli("node", "verify")
    assert v["height"] == height and HEX64.match(v["app_hash"])
    assert v["supply"] == DEV_BALANCE + DEV_VALIDATOR_STAKE + DEV_VALIDATOR_FUNDS
    text = n.cli("node", "verify", json_out=False).stdout
    assert text.strip() == f"ok: {height} blocks re-executed, app hash {v['app_hash']}"

    # restart: same tip, same app hash, same blocks, same balances; then it goes on
    n.start()
    resumed = re.findall(r"resuming at height (\d+) app_hash ([0-9a-f]+)", n.log())
    assert resumed and resumed[-1] == (str(height), v["app_hash"][:16]), n.log()
    tip = n.rpc.get(f"/block/{height}")
    assert tip["app_hash"] == v["app_hash"]
    assert n.rpc.status()["height"] >= height
    for h, block_hash in seen.items():
        assert n.rpc.get(f"/block/{h}")["hash"] == block_hash, h
    assert balance(n, carol)["balance"] == 777
    assert balance(n, "dev")["stake"]["verifier"] == 1000
    n.wait_height(height + 2)
    n.cli("transfer", "--from", "dev", "--to", "carol", "--amount", "3")  # nonces carry on
    assert balance(n, "carol")["balance"] == 780

    assert n.stop() == 0, n.log()
    v2 = n.cli("node", "verify")
    assert v2["height"] > height and v2["supply"] == v["supply"]
    # verify only reads: running it twice gives the same answer
    assert n.cli("node", "verify") == v2
