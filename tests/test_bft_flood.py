"""consensus.bft against a byzantine validator that floods: votes signed for thousands of future
rounds, and many different blocks for one round it proposes. Memory and work stay bounded by
the validator count, and honest catch-up (skipping to where 1/3+ of power already is) still works."""
from __future__ import annotations

from consensus.bft import (BFT, FUTURE_ROUNDS_PER_VALIDATOR, NewHeight, ProposalReceived, VoteReceived)
from consensus.types import PREVOTE, PRECOMMIT, Proposal
from tests.bftnet import VALS4, make_block, vote


def machine() -> BFT:
    m = BFT(VALS4[0].address)
    m.handle(NewHeight(1, VALS4))
    return m


def test_one_validator_cannot_fill_memory_with_future_rounds():
    m = machine()
    evil = VALS4[3].address
    for r in range(2, 5_000):
        for kind in (PREVOTE, PRECOMMIT):
            m.handle(VoteReceived(vote(kind, 1, r, b"\x01" * 32, evil)))
    far = [r for r, rnd in m.rounds.items() if r > m.round + 1 and (rnd.prevotes or rnd.precommits)]
    assert len(far) <= FUTURE_ROUNDS_PER_VALIDATOR
    assert m.round == 0  # 1/4 of the power is not enough to pull anyone ahead


def test_a_node_behind_still_skips_to_the_round_where_a_third_of_power_is():
    m = machine()
    for evil_r in range(2, 100):  # noise from one validator first
        m.handle(VoteReceived(vote(PREVOTE, 1, evil_r, b"\x01" * 32, VALS4[3].address)))
    for v in VALS4[1:3]:  # two honest validators (half the power) are at round 7
        m.handle(VoteReceived(vote(PREVOTE, 1, 7, b"", v.address)))
    assert m.round == 7


def test_a_far_future_vote_is_refused_before_it_is_kept_so_it_is_welcome_later():
    m = machine()
    evil = VALS4[3].address
    for r in (10, 11):
        assert m.accepts_vote(vote(PREVOTE, 1, r, b"", evil))
        m.handle(VoteReceived(vote(PREVOTE, 1, r, b"", evil)))
    assert not m.accepts_vote(vote(PREVOTE, 1, 9, b"", evil))  # older than both it holds
    assert m.accepts_vote(vote(PRECOMMIT, 1, 11, b"", evil))  # a round it already holds
    assert m.accepts_vote(vote(PREVOTE, 1, 1, b"", evil))     # the next round is always open
    assert m.accepts_vote(vote(PREVOTE, 1, 12, b"", evil))    # newer: replaces its lowest
    m.handle(VoteReceived(vote(PREVOTE, 1, 12, b"", evil)))
    assert sorted(m._far_rounds(evil)) == [11, 12] and 10 not in m.rounds


def test_only_the_first_block_of_a_round_is_run_and_never_a_far_future_one():
    m = machine()
    proposer = VALS4[0].address
    first = Proposal(1, 0, -1, make_block(1, 0, proposer, b"a"), b"\x5a" * 64)
    assert m.accepts_proposal(1, 0)
    m.handle(ProposalReceived(first, True))
    assert not m.accepts_proposal(1, 0)      # an equivocating second block is not executed
    assert m.accepts_proposal(1, 1)
    assert not m.accepts_proposal(1, 9)      # far ahead: dropped until we get there
    assert not m.accepts_proposal(2, 0)
    far = Proposal(1, 9, -1, make_block(1, 9, proposer, b"z"), b"\x5a" * 64)
    m.handle(ProposalReceived(far, True))
    assert 9 not in m.rounds or m.rounds[9].proposal is None
