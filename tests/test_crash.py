"""Crash safety: `kill -9` a dev node again and again while it commits blocks under a steady load
of transfers. Every block seen before a kill is still there afterwards with the same hash, the
node resumes producing blocks, `stepchain node verify` re-executes the whole chain, and every
token the test keys were given is accounted for to the unit."""
from __future__ import annotations

import random
import threading
import time

import pytest

from consensus import codec
from consensus.crypto import PrivateKey, format_address
from consensus.ledger import K_BURNED
from consensus.store import Store
from node.client import Client, RpcError, make_tx
from node.init import DEV_BALANCE, DEV_VALIDATOR_FUNDS, DEV_VALIDATOR_STAKE
from node.wallet import Keystore
from tests.nodes import PASSWORD, NodeProcess

pytestmark = pytest.mark.slow

KILLS = 5
N_KEYS = 4
FUND = 10**9
FEE = 1
TXS_PER_KEY = 5  # per load round, with consecutive nonces


class Load(threading.Thread):
    """Transfers among the test keys, as fast as the node takes them; survives the node's death."""

    def __init__(self, url: str, chain_id: str, keys: list[PrivateKey], seed: int):
        super().__init__(daemon=True)
        self.client = Client(url, timeout=5)
        self.chain_id, self.keys = chain_id, keys
        self.rng = random.Random(seed)
        self.stop = threading.Event()
        self.accepted = self.failed_rounds = 0

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                batch = []
                for key in self.keys:
                    nonce = self.client.account(format_address(key.address))["next_nonce"]
                    for i in range(TXS_PER_KEY):
                        to = self.rng.choice([k for k in self.keys if k is not key]).address
                        body = {"to": to, "amount": self.rng.randint(1, 1000)}
                        batch.append(make_tx(key, self.chain_id, "transfer", body, nonce + i, FEE).wire.hex())
                self.accepted += self.client.post("/broadcast_txs", {"txs": batch})["accepted"]
            except RpcError:  # the node is down (killed) or restarting
                self.failed_rounds += 1
                self.stop.wait(0.1)
            self.stop.wait(0.05)


def test_kill_9_under_load_loses_nothing(tmp_path):
    rng = random.Random()
    node = NodeProcess.init_dev(tmp_path).start()
    try:
        _crash_loop(node, rng)
    finally:
        node.kill()


def _crash_loop(node: NodeProcess, rng: random.Random) -> None:
    dev, chain_id, keys = _fund_test_keys(node)
    seen: dict[int, str] = {}  # height -> block hash, for every block observed committed
    _kill_under_load(node, rng, chain_id, keys, seen)

    # drain: the mempool empties, then empty blocks change no balance
    tip = _drain(node)
    accounts = {k.address: node.rpc.account(format_address(k.address)) for k in keys}
    dev_acct = node.rpc.account(format_address(dev.address))
    _observe(node, seen, tip)

    fees = _check_balances(node, keys, accounts, dev_acct, tip)
    _verify_from_genesis(node, seen, tip, accounts, dev_acct, fees)


def _fund_test_keys(node: NodeProcess) -> tuple[PrivateKey, str, list[PrivateKey]]:
    """N_KEYS fresh keys, each sent FUND by the dev key; returns (dev key, chain id, keys) once
    every funding tx is in a block."""
    dev = Keystore(node.home / "keystore").unlock("dev", PASSWORD)
    chain_id = node.rpc.status()["chain_id"]
    keys = [PrivateKey.generate() for _ in range(N_KEYS)]
    funding = [make_tx(dev, chain_id, "transfer", {"to": k.address, "amount": FUND}, i, FEE)
               for i, k in enumerate(keys)]
    for tx in funding:
        node.rpc.broadcast(tx)
    for tx in funding:
        node.rpc.wait_for_tx(tx.hash.hex())
    return dev, chain_id, keys


def _observe(node: NodeProcess, seen: dict[int, str], upto: int) -> None:
    """Record the hash of every block after the last one in `seen`, up to height `upto`."""
    for h in range(max(seen, default=0) + 1, upto + 1):
        seen[h] = node.rpc.get(f"/block/{h}")["hash"]


def _kill_under_load(node: NodeProcess, rng: random.Random, chain_id: str, keys: list[PrivateKey],
                     seen: dict[int, str]) -> None:
    """KILLS rounds of `kill -9` and restart while a Load thread sends transfers among `keys`."""
    load = Load(node.url, chain_id, keys, rng.randrange(2**32))
    load.start()
    try:
        for kill in range(KILLS):
            _kill_and_restart(node, rng, seen, kill)
    finally:
        load.stop.set()
        load.join(10)
    print(f"load: {load.accepted} txs accepted, {load.failed_rounds} rounds failed while the node was down")
    assert load.accepted > 0 and not load.is_alive()


def _kill_and_restart(node: NodeProcess, rng: random.Random, seen: dict[int, str], kill: int) -> None:
    """Kill the node at a random moment, restart it, and check that no block seen so far was lost
    or changed and that new blocks follow."""
    time.sleep(rng.uniform(0.3, 1.2))
    _observe(node, seen, node.rpc.status()["height"])
    time.sleep(rng.uniform(0.0, 0.4))  # a random moment, blocks being committed under load
    last = node.rpc.status()
    seen[last["height"]] = last["block_hash"]
    node.kill()

    node.start()
    now = node.rpc.status()
    assert now["height"] >= last["height"], f"kill {kill}: height went back {last['height']} -> {now['height']}"
    for h, block_hash in seen.items():
        got = node.rpc.get(f"/block/{h}")["hash"]
        assert got == block_hash, f"kill {kill}: block {h} changed: {block_hash} -> {got}"
    try:
        node.wait_height(now["height"] + 2, timeout=20)
    except AssertionError:
        raise AssertionError(
            f"kill {kill}: no new blocks after restart at height {now['height']}; if the log says "
            "'refusing to sign', the node was killed between signing and committing (see "
            "test_restart_after_crash_between_vote_and_commit):\n" + node.log()) from None


def _drain(node: NodeProcess) -> int:
    """Wait until the mempool is empty, then for one more block; returns that block's height."""
    deadline = time.monotonic() + 30
    while node.rpc.status()["mempool_size"]:
        assert time.monotonic() < deadline, "mempool does not drain"
        time.sleep(0.1)
    return node.wait_height(node.rpc.status()["height"] + 1)["height"]


def _replay_transfers(node: NodeProcess, keys: list[PrivateKey], tip: int) -> tuple[dict, dict]:
    """The balance and the number of txs sent that each test key must have, replayed from its
    transfers in blocks 1 to `tip`."""
    expected = {k.address: FUND for k in keys}
    sent = {k.address: 0 for k in keys}
    for h in range(1, tip + 1):
        for tx in node.rpc.get(f"/block/{h}")["txs"]:
            sender = next((a for a in expected if format_address(a) == tx["sender"]), None)
            if sender is None:
                continue
            to = next(a for a in expected if format_address(a) == tx["body"]["to"])
            assert tx["kind"] == "transfer" and tx["fee"] == FEE and tx["nonce"] == sent[sender]
            expected[sender] -= tx["body"]["amount"] + FEE
            expected[to] += tx["body"]["amount"]
            sent[sender] += 1
    return expected, sent


def _check_balances(node: NodeProcess, keys: list[PrivateKey], accounts: dict, dev_acct: dict, tip: int) -> int:
    """Replay the test keys' transfers from the blocks: every balance exact, every fee counted.
    Returns the fees the test keys paid."""
    expected, sent = _replay_transfers(node, keys, tip)
    for addr, acct in accounts.items():
        assert acct["balance"] == expected[addr] and acct["nonce"] == sent[addr], format_address(addr)
    fees = sum(a["nonce"] for a in accounts.values()) * FEE
    assert sum(a["balance"] for a in accounts.values()) + fees == N_KEYS * FUND
    assert fees >= 50 * FEE, f"the load committed only {fees} txs"
    assert (dev_acct["balance"], dev_acct["nonce"]) == (DEV_BALANCE - N_KEYS * (FUND + FEE), N_KEYS)
    return fees


def _verify_from_genesis(node: NodeProcess, seen: dict[int, str], tip: int, accounts: dict, dev_acct: dict,
                         fees: int) -> None:
    """A clean stop, then re-execute everything from genesis: the stored blocks are the ones seen,
    and every token of genesis is accounted for."""
    assert node.stop() == 0, node.log()
    log = node.log_path.read_text()
    assert "Traceback" not in log, log[-5000:]
    verified = node.cli("node", "verify", timeout=120)
    assert verified["height"] >= tip and verified["supply"] == DEV_BALANCE + DEV_VALIDATOR_STAKE + DEV_VALIDATOR_FUNDS
    store = Store(node.home / "data")
    try:
        for h, block_hash in seen.items():
            assert store.block(h).hash.hex() == block_hash
        burned = codec.decode(store.load_state()[K_BURNED])
    finally:
        store.close()
    assert burned == fees + N_KEYS * FEE  # the test keys' fees plus dev's funding fees
    # every token of genesis is somewhere: the test keys, dev, the node's validator stake, or burned
    held = sum(a["balance"] for a in accounts.values()) + dev_acct["balance"] + DEV_VALIDATOR_STAKE \
        + DEV_VALIDATOR_FUNDS
    assert held + burned == DEV_BALANCE + DEV_VALIDATOR_STAKE + DEV_VALIDATOR_FUNDS


def test_restart_after_crash_between_vote_and_commit(tmp_path):
    """What a `kill -9` leaves when it lands between the prevote's synced record and the block's
    commit: last_signed says (tip+1, round 0, prevote). The node must still make progress."""
    node = NodeProcess.init_dev(tmp_path).start()
    try:
        node.wait_height(2)
        assert node.stop() == 0
        store = Store(node.home / "data")
        try:
            height = store.tip()[0]
            store.set_last_signed([height + 1, 0, 1, b"\x00" * 32])  # 1: prevote, as engine.STEP_ORDER
        finally:
            store.close()
        node.start()
        node.wait_height(height + 2, timeout=10)
    finally:
        node.kill()
