"""Merkle trees over 32-byte leaves, with inclusion proofs. Pure hashing, no I/O.

Leaves and inner nodes are hashed with different one-byte prefixes so a proof for an inner
node can never pass as a proof for a leaf. An odd node at the end of a level is carried up
unchanged, so a tree of n leaves always has the same shape.
"""
from __future__ import annotations

from .crypto import sha256

EMPTY_ROOT = sha256(b"")


LEAF_PREFIX = b"\x00"


def leaf_hash(leaf: bytes) -> bytes:
    return sha256(LEAF_PREFIX + leaf)


def node_hash(left: bytes, right: bytes) -> bytes:
    return sha256(b"\x01" + left + right)


def _next_level(level: list[bytes]) -> list[bytes]:
    out = [node_hash(level[i], level[i + 1]) for i in range(0, len(level) - 1, 2)]
    if len(level) % 2:
        out.append(level[-1])
    return out


def root(leaves: list[bytes]) -> bytes:
    if not leaves:
        return EMPTY_ROOT
    return root_of_leaf_hashes([leaf_hash(x) for x in leaves])


def root_of_leaf_hashes(level: list[bytes]) -> bytes:
    """The root of a tree whose leaves are already hashed (leaf_hash of each)."""
    if not level:
        return EMPTY_ROOT
    while len(level) > 1:
        level = _next_level(level)
    return level[0]


def proof(leaves: list[bytes], index: int) -> list[bytes]:
    """Sibling hashes from leaf `index` up to the root (carried-up levels contribute nothing)."""
    if not 0 <= index < len(leaves):
        raise IndexError(f"leaf {index} out of range for {len(leaves)} leaves")
    level = [leaf_hash(x) for x in leaves]
    path: list[bytes] = []
    while len(level) > 1:
        sibling = index ^ 1
        if sibling < len(level):
            path.append(level[sibling])
        level = _next_level(level)
        index //= 2
    return path


def verify_proof(root_hash: bytes, leaf: bytes, index: int, count: int, path: list[bytes]) -> bool:
    """Check that `leaf` is leaf number `index` of a `count`-leaf tree with root `root_hash`."""
    if not 0 <= index < count:
        return False
    acc = leaf_hash(leaf)
    width = count
    used = 0
    while width > 1:
        sibling = index ^ 1
        if sibling < width:
            if used >= len(path):
                return False
            other = path[used]
            used += 1
            acc = node_hash(acc, other) if index % 2 == 0 else node_hash(other, acc)
        index //= 2
        width = (width + 1) // 2
    return used == len(path) and acc == root_hash
