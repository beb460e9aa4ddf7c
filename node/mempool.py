"""Pending transactions: checked once on entry, ordered by sender nonce, bounded, evicted when stale.

Admission is ordered by cost, cheapest refusal first, and never grows with the pool: a hash
lookup, then the signature (so nothing unsigned reaches a state read), then the tx's full
stateless validity (schema, chain id: a tx that can never execute is refused here, not
carried and relayed for free), then O(1) state checks against the sender's running total of
pending costs. Each tx's upfront cost is computed once, on entry.

The signature is verified here and nowhere else on this node: a tx that is in the pool has
a good signature, so block execution asks ``verified(tx)`` first and only verifies txs it
has never seen (the hash covers the signature, so equal hashes mean equal bytes).

Refusals come in two types: ``InvalidTx`` (no state could ever make it valid: whoever sent
it is misbehaving) and ``Rejected`` (valid, but not now: a used nonce, a full pool, low funds).
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

from consensus.crypto import address_of
from consensus.jobs import budget
from consensus.ledger import View, get_account, get_params
from consensus.state import TxError, check_signature, check_stateless
from consensus.txschema import MAX_AMOUNT
from consensus.types import Tx

REJECTED_KEPT = 10_000
# kinds whose validity hangs on job state that other txs and the end of every block change (a
# challenge closes, a shard reopens, a window ends): rechecked after each block
RECHECK_KINDS = frozenset({"commit_shard", "decline", "attest", "challenge", "dispute_vote", "cancel_job",
                           "register_secrets", "reveal", "midpoint", "answer"})


class MempoolError(ValueError):
    """The tx was not admitted."""


class InvalidTx(MempoolError):
    """The tx can never execute (bad signature, malformed body, another chain, fee below the
    minimum): its sender, or the peer that relayed it, is to blame."""


class Rejected(MempoolError):
    """The tx may be valid but cannot be admitted now (nonce, funds, capacity, duplicate)."""


def upfront_cost(tx: Tx, params: dict) -> int:
    """Tokens a stateless-valid tx takes from the sender's balance: its fee plus any amount it
    moves, bonds or escrows."""
    if tx.kind in ("transfer", "stake"):
        return tx.fee + tx.body["amount"]
    if tx.kind == "submit_job":
        return tx.fee + budget(tx.body["spec"], params)
    return tx.fee


@dataclass(frozen=True)
class Entry:
    tx: Tx
    sender: bytes
    cost: int
    added_at: int  # height when it entered


class Mempool:
    def __init__(self, chain_id: str, max_txs: int = 100_000, max_per_sender: int = 1_000,
                 ttl_blocks: int = 100):
        self.chain_id = chain_id
        self.max_txs = max_txs
        self.max_per_sender = max_per_sender
        self.ttl_blocks = ttl_blocks
        self.by_hash: dict[bytes, Entry] = {}
        self.by_sender: OrderedDict[bytes, dict[int, Tx]] = OrderedDict()  # arrival order of senders
        self.pending_cost: dict[bytes, int] = {}  # sender -> sum of its pending txs' upfront costs
        self.rejected: OrderedDict[bytes, str] = OrderedDict()  # why recent txs were dropped at build
        self.height = 0

    def __len__(self) -> int:
        return len(self.by_hash)

    def verified(self, tx: Tx) -> bool:
        return tx.hash in self.by_hash or check_signature(tx)

    def add(self, tx: Tx, state: View) -> None:
        """Admit tx or raise InvalidTx / Rejected saying why."""
        if tx.hash in self.by_hash:
            raise Rejected("tx already in mempool")
        if not check_signature(tx):
            raise InvalidTx("bad signature")
        try:
            check_stateless(tx, self.chain_id)
        except TxError as exc:
            raise InvalidTx(str(exc)) from None
        params = get_params(state)
        if tx.fee < params["min_fee"]:
            raise InvalidTx(f"fee {tx.fee} is below the minimum {params['min_fee']}")
        sender = address_of(tx.sender)
        self._check_room(tx, sender, get_account(state, sender).nonce)
        cost = upfront_cost(tx, params)
        if cost > MAX_AMOUNT:  # more than the whole supply: no balance can ever pay it
            raise InvalidTx(f"tx costs {cost}, more than any balance can hold")
        balance = get_account(state, sender).balance
        spend = self.pending_cost.get(sender, 0) + cost
        if spend > balance:
            raise Rejected(f"insufficient funds: balance {balance}, pending txs need {spend}")
        self.by_hash[tx.hash] = Entry(tx, sender, cost, self.height)
        self.by_sender.setdefault(sender, {})[tx.nonce] = tx
        self.pending_cost[sender] = spend

    def _check_room(self, tx: Tx, sender: bytes, nonce: int) -> None:
        pending = self.by_sender.get(sender, {})
        if tx.nonce < nonce:
            raise Rejected(f"nonce {tx.nonce} already used (replay): account nonce is {nonce}")
        if tx.nonce in pending:
            raise Rejected(f"nonce {tx.nonce} is already pending for this sender")
        if tx.nonce >= nonce + self.max_per_sender:
            raise Rejected(f"nonce {tx.nonce} is too far ahead of the account nonce {nonce}")
        if len(self.by_hash) >= self.max_txs:
            raise Rejected("mempool full: try again later")

    def reap(self, state: View, max_txs: int, max_bytes: int | None = None) -> list[Tx]:
        """Txs ready to run, each sender's in nonce order starting at its account nonce, at most
        max_txs of them and max_bytes of wire bytes."""
        out: list[Tx] = []
        size = 0
        for sender, txs in self.by_sender.items():
            nonce = get_account(state, sender).nonce
            while nonce in txs and len(out) < max_txs:
                wire = len(txs[nonce].wire)
                if max_bytes is not None and size + wire > max_bytes:
                    return out
                out.append(txs[nonce])
                size += wire
                nonce += 1
            if len(out) >= max_txs:
                break
        return out

    def _drop(self, tx_hash: bytes) -> None:
        entry = self.by_hash.pop(tx_hash, None)
        if entry is None:
            return
        txs = self.by_sender.get(entry.sender)
        if txs is not None and txs.get(entry.tx.nonce) is entry.tx:
            del txs[entry.tx.nonce]
            if not txs:
                del self.by_sender[entry.sender]
        left = self.pending_cost.get(entry.sender, 0) - entry.cost
        if left > 0 and entry.sender in self.by_sender:
            self.pending_cost[entry.sender] = left
        else:
            self.pending_cost.pop(entry.sender, None)

    def update(self, state: View, height: int) -> None:
        """After a block: drop txs whose nonce is used, and txs older than the TTL."""
        self.height = height
        for sender in list(self.by_sender):
            txs = self.by_sender[sender]
            nonce = get_account(state, sender).nonce
            for tx in [tx for n, tx in txs.items()
                       if n < nonce or height - self.by_hash[tx.hash].added_at > self.ttl_blocks]:
                self._drop(tx.hash)

    def recheck(self, state: View, height: int) -> None:
        """After a block: run each sender's ready job txs, in nonce order, against the new state,
        and drop the first that fails. Left in the pool it would never be included, and its
        nonce would hold up every later tx of its sender; dropped, the sender's next tx (RPC
        `next_nonce` counts only what is pending) takes its nonce. Only senders with a job tx
        pending pay for this."""
        from consensus.state import apply_tx
        for sender in [s for s, txs in self.by_sender.items() if any(t.kind in RECHECK_KINDS for t in txs.values())]:
            txs, view = self.by_sender[sender], View(state)
            nonce = get_account(state, sender).nonce
            while nonce in txs:
                tx = txs[nonce]
                try:
                    apply_tx(view, tx, self.chain_id, height + 1, self.verified)
                except TxError as exc:
                    self.remove_invalid([(tx, str(exc))])
                    break
                nonce += 1

    def remove_invalid(self, rejected: list[tuple[Tx, str]]) -> None:
        """Drop txs that failed execution so they are not proposed again."""
        for tx, reason in rejected:
            self.rejected[tx.hash] = reason
            while len(self.rejected) > REJECTED_KEPT:
                self.rejected.popitem(last=False)
            self._drop(tx.hash)


__all__ = ["Mempool", "MempoolError", "InvalidTx", "Rejected", "TxError", "upfront_cost"]
