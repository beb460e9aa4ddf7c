"""consensus.bft.verify_commit: a commit counts only with 2/3+ of the power in good precommit
signatures, for this block, from this validator set.

The in-test network and its helpers are in tests/bftnet.py.
"""
from __future__ import annotations

import dataclasses

from consensus.bft import verify_commit
from consensus.crypto import sha256
from consensus.types import PRECOMMIT, PREVOTE, Commit
from tests.bftnet import KEYS, VALS1, VALS4, validators
from tests.chainfactory import CHAIN_ID, key, signed_vote


# -- verify_commit ------------------------------------------------------------------------------------

def real_commit(height: int, round_: int, block_hash: bytes, signers, chain_id: str = CHAIN_ID) -> Commit:
    sigs = []
    for v in signers:
        sv = signed_vote(KEYS[v.address], PRECOMMIT, height, round_, block_hash, chain_id)
        sigs.append((v.address, sv.signature))
    return Commit(height, round_, block_hash, tuple(sorted(sigs)))


BH = sha256(b"the block")


def test_verify_commit_accepts_real_commit():
    assert verify_commit(CHAIN_ID, real_commit(7, 2, BH, VALS4), VALS4, 7, BH) is None
    assert verify_commit(CHAIN_ID, real_commit(7, 0, BH, VALS4[:3]), list(VALS4), 7, BH) is None
    assert verify_commit(CHAIN_ID, real_commit(1, 0, BH, VALS1), VALS1, 1, BH) is None


def test_verify_commit_rejects_missing_power():
    assert verify_commit(CHAIN_ID, real_commit(7, 0, BH, VALS4[:2]), VALS4, 7, BH) == \
        "commit lacks 2/3+ of voting power"
    assert verify_commit(CHAIN_ID, real_commit(7, 0, BH, ()), VALS4, 7, BH) == "commit lacks 2/3+ of voting power"
    weighted = (dataclasses.replace(VALS4[0], power=60),) + VALS4[1:]  # total 90
    assert verify_commit(CHAIN_ID, real_commit(7, 0, BH, VALS4[:1]), weighted, 7, BH) == \
        "commit lacks 2/3+ of voting power"  # exactly 2/3 is not enough
    assert verify_commit(CHAIN_ID, real_commit(7, 0, BH, VALS4[:2]), weighted, 7, BH) is None  # 70 of 90
    assert verify_commit(CHAIN_ID, real_commit(7, 0, BH, VALS4[1:]), weighted, 7, BH) is not None  # 30 of 90


def test_verify_commit_rejects_bad_signature():
    c = real_commit(7, 0, BH, VALS4)
    (a, s), rest = c.signatures[0], c.signatures[1:]
    bad = dataclasses.replace(c, signatures=((a, bytes([s[0] ^ 1]) + s[1:]),) + rest)
    assert verify_commit(CHAIN_ID, bad, VALS4, 7, BH) == "commit has a bad signature"
    # a signature for another round or chain does not count either
    assert verify_commit(CHAIN_ID, dataclasses.replace(c, round=1), VALS4, 7, BH) == "commit has a bad signature"
    assert verify_commit("otherchain", c, VALS4, 7, BH) == "commit has a bad signature"
    # a prevote signature is not a precommit signature
    pv = signed_vote(KEYS[a], PREVOTE, 7, 0, BH)
    mixed = dataclasses.replace(c, signatures=((a, pv.signature),) + rest)
    assert verify_commit(CHAIN_ID, mixed, VALS4, 7, BH) == "commit has a bad signature"


def test_verify_commit_rejects_duplicates_and_strangers():
    c = real_commit(7, 0, BH, VALS4[:2])
    dup = dataclasses.replace(c, signatures=c.signatures + (c.signatures[0],))
    assert verify_commit(CHAIN_ID, dup, VALS4, 7, BH) == "commit has a signature from a non-validator or a duplicate"
    stranger = key(9)
    sv = signed_vote(stranger, PRECOMMIT, 7, 0, BH)
    extra = dataclasses.replace(c, signatures=c.signatures + ((stranger.address, sv.signature),))
    assert verify_commit(CHAIN_ID, extra, VALS4, 7, BH) == \
        "commit has a signature from a non-validator or a duplicate"


def test_verify_commit_rejects_commit_for_another_block():
    c = real_commit(7, 0, BH, VALS4)
    assert verify_commit(CHAIN_ID, c, VALS4, 7, sha256(b"other")) == "commit is for another block"
    assert verify_commit(CHAIN_ID, c, VALS4, 8, BH) == "commit is for another block"
    forged = dataclasses.replace(c, block_hash=sha256(b"other"))
    assert verify_commit(CHAIN_ID, forged, VALS4, 7, sha256(b"other")) == "commit has a bad signature"


def test_verify_commit_against_a_different_validator_set():
    c = real_commit(7, 0, BH, VALS4[:3])
    others = validators(1)  # key(1) only: the other signers are strangers to it
    assert verify_commit(CHAIN_ID, c, others, 7, BH) is not None
