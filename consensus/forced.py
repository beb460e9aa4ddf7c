"""Forced errors: which shards carry a planted fault, and where (the verifier's dilemma).

When fraud is rare, a verifier that attests without computing almost never loses, so rational
verifiers stop computing and fraud becomes safe again. So the protocol plants faults itself:
a share `forced_error_ppm` of shards must carry exactly one wrong interval end, put there by
their honest solver. A verifier that attests a forced error loses its collateral (it cannot
have computed it); the first challenger of one wins a jackpot; the solver is never blamed.

Whether a shard carries one, and which interval, comes from the solver's secret reserved at
assignment (fixed at registration, before the assignment, so the solver cannot grind it) and
the beacon of the assignment block (which its proposer made without knowing the secret). Only
the solver knows the answer until it reveals the secret: when a challenge names that
interval, or after the verification window. A signature would not do: a signer can make many
valid signatures and pick the one it likes.

A solver's secrets are not a hash chain (as a verifier's are) but the leaves of a Merkle tree
whose root it registers: revealing one proves it (`check_secret`) and says nothing of the
others. With a hash chain every element below a revealed one is public, so revealing a later
shard's secret first would expose the forced errors of the solver's earlier shards still in
their windows. (A verifier's element only has to stay hidden until its draw is made.)
"""
from __future__ import annotations

from . import merkle
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


def secret_root(secrets: list[bytes]) -> bytes:
    """What a solver registers for secrets 1..len(secrets)."""
    return merkle.root(secrets)


def secret_proof(secrets: list[bytes], index: int) -> list[bytes]:
    return merkle.proof(secrets, index - 1)


def check_secret(root: bytes, length: int, index: int, secret, proof) -> bool:
    """Is `secret` the solver's secret number `index` (1-based) under the registered root?"""
    return type(secret) is bytes and len(secret) == 32 and type(proof) is list and 1 <= index <= length \
        and merkle.verify_proof(root, secret, index - 1, length, proof)
