"""Forced errors: which shards carry a planted fault, and where (the verifier's dilemma).

When fraud is rare, a verifier that attests without computing almost never loses, so rational
verifiers stop computing and fraud becomes safe again. So the protocol plants faults itself:
a share `forced_error_ppm` of shards must carry exactly one wrong interval end, put there by
their honest solver. A verifier that attests a forced error loses its collateral (it cannot
have computed it); the first challenger of one wins a jackpot; the solver is never blamed.

Whether a shard carries one, and which interval, comes from the solver's hash-chain element
reserved at assignment (fixed at registration, before the assignment, so the solver cannot
grind it) and the beacon of the assignment block (which its proposer made without knowing the
element). Only the solver knows the answer until it reveals the element: when a challenge
names that interval, or after the verification window. A signature would not do: a signer can
make many valid signatures and pick the one it likes.
"""
from __future__ import annotations

from .crypto import sha256

PPM = 1_000_000


def forced_interval(preimage: bytes, beacon: bytes, n_intervals: int, rate_ppm: int,
                    diverged_leaf: int = 0) -> int | None:
    """The interval whose end the solver must corrupt, or None for an honest-only shard.

    A draw below `rate_ppm` (of a million) fires; the interval is uniform over the shard. In a
    shard that declares its training diverged at leaf d, only an interval ending before d can
    carry one (past the divergence nothing is compared bit by bit)."""
    digest = sha256(b"stepchain/forced-error" + preimage + beacon)
    if int.from_bytes(digest[:8], "big") % PPM >= rate_ppm or n_intervals < 1:
        return None
    interval = int.from_bytes(digest[8:16], "big") % n_intervals
    if diverged_leaf and interval + 1 >= diverged_leaf:
        return None
    return interval
