"""Hash chains: secrets a party commits to once and reveals one at a time.

A party picks a random seed and registers the tip T = H^N(seed) with its stake. Element j of
the chain is x_j = H^(N-j)(seed): x_0 = T, and H(x_j) = x_(j-1). The chain hands out indices
1, 2, ... in the order it needs secrets (one per verifier selection, say), so which secret
answers which draw is fixed before anyone but the owner knows it; the owner cannot pick a
convenient one, and nobody else can predict it until it is revealed.

Revealing x_j is checked against the highest element revealed so far, x_r: H^(j-r)(x_j) must
equal x_r. Elements below r are then public (anyone can hash x_r down), which is harmless: a
secret only has to stay hidden until the draw it feeds is fixed.
"""
from __future__ import annotations

import hashlib

MAX_LENGTH = 1 << 20      # elements one registration can hold
MAX_GAP = 4096            # hashes one reveal may cost the chain (bounds a tx's work)


class HashChainError(ValueError):
    """A reveal that is not the element it claims to be."""


def h(x: bytes) -> bytes:
    return hashlib.sha256(b"stepchain/hashchain" + x).digest()


def hash_n(x: bytes, n: int) -> bytes:
    for _ in range(n):
        x = h(x)
    return x


def tip(seed: bytes, length: int) -> bytes:
    """T = H^length(seed), what a party registers."""
    return hash_n(seed, length)


def element(seed: bytes, length: int, index: int) -> bytes:
    """x_index = H^(length - index)(seed), what the owner reveals for draw `index`."""
    if not 0 <= index <= length:
        raise HashChainError(f"index {index} is outside a chain of {length}")
    return hash_n(seed, length - index)


def check_reveal(anchor: bytes, anchor_index: int, value: bytes, index: int) -> None:
    """Raise unless `value` is element `index` of the chain whose element `anchor_index` is
    `anchor` (index > anchor_index, at most MAX_GAP apart)."""
    gap = index - anchor_index
    if not 0 < gap <= MAX_GAP:
        raise HashChainError(f"a reveal must be 1 to {MAX_GAP} elements past the last one revealed")
    if type(value) is not bytes or len(value) != 32 or hash_n(value, gap) != anchor:
        raise HashChainError(f"not element {index} of the registered hash chain")


def derive(anchor: bytes, anchor_index: int, index: int) -> bytes:
    """An element at or below the highest revealed one: public, computed by hashing down."""
    if not 0 <= index <= anchor_index:
        raise HashChainError(f"element {index} has not been revealed")
    return hash_n(anchor, anchor_index - index)
