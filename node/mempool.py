"""Pending transactions: checked once on entry, ordered by sender nonce, bounded, evicted when stale.

The signature is verified here and nowhere else on this node: a tx that is in the pool has
a good signature, so block execution asks ``verified(tx)`` first and only verifies txs it
has never seen (the hash covers the signature, so equal hashes mean equal bytes).
"""
from __future__ import annotations

from collections import OrderedDict

from consensus.crypto import address_of
from consensus.jobs import JobError, budget, check_spec
from consensus.ledger import View, get_account, get_params
from consensus.state import TX_HANDLERS, TxError, check_signature
from consensus.types import Tx


REJECTED_KEPT = 10_000


class MempoolError(ValueError):
    pass


def upfront_cost(tx: Tx, params: dict | None = None) -> int:
    """Tokens the tx takes from the sender's balance (fee plus any amount it moves or escrows)."""
    amount = tx.body.get("amount", 0) if tx.kind in ("transfer", "stake") else 0
    if tx.kind == "submit_job" and params is not None:
        try:
            check_spec(tx.body.get("spec"))
            amount = budget(tx.body["spec"], params)
        except (JobError, KeyError, TypeError):
            amount = 0  # malformed: it will fail in execution, costing only its fee
    return tx.fee + (amount if type(amount) is int and amount > 0 else 0)


class Mempool:
    def __init__(self, chain_id: str, max_txs: int = 100_000, max_per_sender: int = 1_000,
                 ttl_blocks: int = 100):
        self.chain_id = chain_id
        self.max_txs = max_txs
        self.max_per_sender = max_per_sender
        self.ttl_blocks = ttl_blocks
        self.by_hash: dict[bytes, tuple[Tx, int]] = {}  # hash -> (tx, height when added)
        self.by_sender: OrderedDict[bytes, dict[int, Tx]] = OrderedDict()  # arrival order of senders
        self.rejected: OrderedDict[bytes, str] = OrderedDict()  # why recent txs were dropped at build
        self.height = 0

    def __len__(self) -> int:
        return len(self.by_hash)

    def verified(self, tx: Tx) -> bool:
        return tx.hash in self.by_hash or check_signature(tx)

    def add(self, tx: Tx, state: View) -> None:
        """Admit tx or raise MempoolError saying why."""
        if tx.hash in self.by_hash:
            raise MempoolError("tx already in mempool")
        if tx.chain_id != self.chain_id:
            raise MempoolError(f"wrong chain_id {tx.chain_id!r}: this node runs {self.chain_id!r}")
        if tx.kind not in TX_HANDLERS:
            raise MempoolError(f"unknown tx kind {tx.kind!r}")
        min_fee = get_params(state)["min_fee"]
        if tx.fee < min_fee:
            raise MempoolError(f"fee {tx.fee} is below the minimum {min_fee}")
        sender = address_of(tx.sender)
        acct = get_account(state, sender)
        pending = self.by_sender.get(sender, {})
        if tx.nonce < acct.nonce:
            raise MempoolError(f"nonce {tx.nonce} already used (replay): account nonce is {acct.nonce}")
        if tx.nonce in pending:
            raise MempoolError(f"nonce {tx.nonce} is already pending for this sender")
        if tx.nonce >= acct.nonce + self.max_per_sender:
            raise MempoolError(f"nonce {tx.nonce} is too far ahead of the account nonce {acct.nonce}")
        if len(self.by_hash) >= self.max_txs:
            raise MempoolError("mempool full: try again later")
        params = get_params(state)
        spend = upfront_cost(tx, params) + sum(upfront_cost(t, params) for t in pending.values())
        if spend > acct.balance:
            raise MempoolError(f"insufficient funds: balance {acct.balance}, pending txs need {spend}")
        if not check_signature(tx):
            raise MempoolError("bad signature")
        self.by_hash[tx.hash] = (tx, self.height)
        self.by_sender.setdefault(sender, {})[tx.nonce] = tx

    def reap(self, state: View, max_txs: int) -> list[Tx]:
        """Txs ready to run, each sender's in nonce order starting at its account nonce."""
        out: list[Tx] = []
        for sender, txs in self.by_sender.items():
            nonce = get_account(state, sender).nonce
            while nonce in txs and len(out) < max_txs:
                out.append(txs[nonce])
                nonce += 1
            if len(out) >= max_txs:
                break
        return out

    def update(self, state: View, height: int) -> None:
        """After a block: drop txs whose nonce is used, and txs older than the TTL."""
        self.height = height
        for sender in list(self.by_sender):
            txs = self.by_sender[sender]
            nonce = get_account(state, sender).nonce
            for n in [n for n, tx in txs.items()
                      if n < nonce or height - self.by_hash[tx.hash][1] > self.ttl_blocks]:
                del self.by_hash[txs.pop(n).hash]
            if not txs:
                del self.by_sender[sender]

    def remove_invalid(self, rejected: list[tuple[Tx, str]]) -> None:
        """Drop txs that failed execution so they are not proposed again."""
        for tx, reason in rejected:
            self.rejected[tx.hash] = reason
            while len(self.rejected) > REJECTED_KEPT:
                self.rejected.popitem(last=False)
            entry = self.by_hash.pop(tx.hash, None)
            if entry:
                txs = self.by_sender.get(address_of(tx.sender), {})
                txs.pop(tx.nonce, None)


__all__ = ["Mempool", "MempoolError", "TxError", "upfront_cost"]
