"""consensus.bft, locks and heights: a locked validator prevotes and re-proposes only what its
lock allows until a newer proof of lock releases it; messages for the next height wait, older
ones are ignored, and a new height starts unlocked at round 0.

The in-test network and its helpers are in tests/bftnet.py.
"""
from __future__ import annotations

import pytest

from consensus.bft import (BFT, NIL, PROPOSE, NewHeight, ProposalReceived, Propose, ScheduleTimeout, SignVote,
                           Timeout, VoteReceived, proposer_for)
from consensus.types import PRECOMMIT, PREVOTE, Proposal
from tests.bftnet import KEYS, VALS1, VALS4, Net, actions_of, first_height, make_block, vote


# -- locking ----------------------------------------------------------------------------------------

def lock_scenario():
    """One machine `me`, driven by hand, locks on B in round 0 at a height where it proposes
    neither round 0 nor round 1 but does propose some later round r."""
    def ok(h):
        rs = [proposer_for(VALS4, h, r).address for r in range(6)]
        return any(rs[0] != a != rs[1] and a in rs[2:] for a in KEYS)
    h = first_height(ok)
    rs = [proposer_for(VALS4, h, r).address for r in range(6)]
    me = next(a for a in sorted(KEYS) if rs[0] != a != rs[1] and a in rs[2:])
    r_me = rs.index(me, 2)
    others = [v.address for v in VALS4 if v.address != me]
    m = BFT(me)
    assert not actions_of(m.handle(NewHeight(h, VALS4)), Propose)
    B = make_block(h, 0, rs[0])
    out = m.handle(ProposalReceived(Proposal(h, 0, -1, B, b"\x00" * 64), valid=True))
    assert out == [SignVote(PREVOTE, h, 0, B.hash)]
    m.handle(VoteReceived(vote(PREVOTE, h, 0, B.hash, me)))
    m.handle(VoteReceived(vote(PREVOTE, h, 0, B.hash, others[0])))
    out = m.handle(VoteReceived(vote(PREVOTE, h, 0, B.hash, others[1])))
    assert SignVote(PRECOMMIT, h, 0, B.hash) in out
    assert m.locked_block == B and m.locked_round == 0 and m.valid_block == B and m.valid_round == 0
    # round 0 fails to commit: the others precommit nil
    m.handle(VoteReceived(vote(PRECOMMIT, h, 0, B.hash, me)))
    m.handle(VoteReceived(vote(PRECOMMIT, h, 0, NIL, others[0])))
    out = m.handle(VoteReceived(vote(PRECOMMIT, h, 0, NIL, others[1])))
    assert out == [ScheduleTimeout(h, 0, PRECOMMIT, 1.0)]
    assert not m.decided
    out = m.handle(Timeout(h, 0, PRECOMMIT))
    assert m.round == 1 and not actions_of(out, Propose)
    return m, h, me, others, rs, r_me, B


def test_locked_validator_prevotes_nil_for_another_block_without_pol():
    m, h, me, others, rs, r_me, B = lock_scenario()
    B2 = make_block(h, 1, rs[1])
    out = m.handle(ProposalReceived(Proposal(h, 1, -1, B2, b"\x00" * 64), valid=True))
    assert out == [SignVote(PREVOTE, h, 1, NIL)]
    assert m.locked_block == B


def test_locked_validator_prevotes_its_locked_block_again():
    m, h, me, others, rs, r_me, B = lock_scenario()
    out = m.handle(ProposalReceived(Proposal(h, 1, 0, B, b"\x00" * 64), valid=True))
    assert out == [SignVote(PREVOTE, h, 1, B.hash)]


def test_locked_validator_reproposes_its_valid_block_with_pol_round():
    m, h, me, others, rs, r_me, B = lock_scenario()
    for r in range(1, r_me):
        out = m.handle(Timeout(h, r, PRECOMMIT))
        assert m.round == r + 1
    props = actions_of(out, Propose)
    assert props == [Propose(h, r_me, B, 0)]


def test_polka_seen_while_in_prevote_step_relocks():
    """Tendermint line 36: 2/3+ prevotes for the round's valid proposal while in the prevote step
    lock on it and precommit it, even after our own nil prevote."""
    m, h, me, others, rs, r_me, B = lock_scenario()
    B2 = make_block(h, 1, rs[1])
    m.handle(ProposalReceived(Proposal(h, 1, -1, B2, b"\x00" * 64), valid=True))  # we prevote nil
    out = []
    for a in others:
        out += m.handle(VoteReceived(vote(PREVOTE, h, 1, B2.hash, a)))
    assert SignVote(PRECOMMIT, h, 1, B2.hash) in out
    assert (m.locked_block, m.locked_round, m.valid_block, m.valid_round) == (B2, 1, B2, 1)


def test_lock_is_released_by_a_newer_proof_of_lock():
    m, h, me, others, rs, r_me, B = lock_scenario()
    B2 = make_block(h, 1, rs[1])
    m.handle(ProposalReceived(Proposal(h, 1, -1, B2, b"\x00" * 64), valid=True))  # we prevote nil
    assert m.handle(Timeout(h, 1, PREVOTE)) == [SignVote(PRECOMMIT, h, 1, NIL)]
    out = []
    for a in others:  # the other three prevote B2 in round 1: a POL for B2 at round 1
        out += m.handle(VoteReceived(vote(PREVOTE, h, 1, B2.hash, a)))
    assert not [a for a in out if isinstance(a, SignVote)]
    assert m.valid_block == B2 and m.valid_round == 1
    assert m.locked_block == B and m.locked_round == 0  # we precommitted nil, so no new lock
    m.handle(Timeout(h, 1, PRECOMMIT))
    assert m.round == 2
    out = m.handle(ProposalReceived(Proposal(h, 2, 1, B2, b"\x00" * 64), valid=True))
    assert SignVote(PREVOTE, h, 2, B2.hash) in out


def test_pol_round_without_the_prevotes_waits_then_times_out_to_nil():
    m, h, me, others, rs, r_me, B = lock_scenario()
    B2 = make_block(h, 1, rs[1])
    assert m.handle(ProposalReceived(Proposal(h, 1, 0, B2, b"\x00" * 64), valid=True)) == []
    assert m.handle(Timeout(h, 1, PROPOSE)) == [SignVote(PREVOTE, h, 1, NIL)]


# -- heights ----------------------------------------------------------------------------------------

def test_messages_for_next_height_are_buffered_and_replayed():
    me = VALS1[0].address
    m = BFT(me)
    m.handle(NewHeight(1, VALS1))
    b2 = make_block(2, 0, me)
    early = ProposalReceived(Proposal(2, 0, -1, b2, b"\x00" * 64), valid=True)
    assert m.handle(early) == []
    assert m.handle(VoteReceived(vote(PREVOTE, 2, 0, b2.hash, me))) == []
    assert m.handle(ProposalReceived(Proposal(3, 0, -1, make_block(3, 0, me), b"\x00" * 64), True)) == []
    assert m.height == 1 and m.step == PROPOSE
    out = m.handle(NewHeight(2, VALS1))
    assert ScheduleTimeout(2, 0, PROPOSE, 3.0) in out
    assert SignVote(PREVOTE, 2, 0, b2.hash) in out       # from the buffered proposal
    assert SignVote(PRECOMMIT, 2, 0, b2.hash) in out     # from the buffered prevote (1 of 1)
    assert m.rounds[0].proposal.block == b2
    out = m.handle(NewHeight(3, VALS1))  # the height-3 message was two ahead: dropped
    assert m._round(0).proposal is None


def test_messages_for_old_heights_and_after_decision_are_ignored():
    net = Net(VALS1)
    me = VALS1[0].address
    net.run_height(1)
    m = net.machines[me]
    assert m.decided
    assert m.handle(VoteReceived(vote(PREVOTE, 1, 1, NIL, me))) == []
    assert m.handle(Timeout(1, 0, PRECOMMIT)) == []
    m.handle(NewHeight(2, VALS1))
    assert m.handle(VoteReceived(vote(PREVOTE, 1, 0, NIL, me))) == []
    assert 0 not in m.rounds or me not in m.rounds[0].prevotes


def test_new_height_resets_lock_and_round():
    m, h, me, others, rs, r_me, B = lock_scenario()
    m.handle(NewHeight(h + 1, VALS4))
    assert (m.round, m.step, m.locked_block, m.locked_round, m.valid_block, m.valid_round) == \
        (0, PROPOSE, None, -1, None, -1)


def test_unknown_event_type():
    with pytest.raises(TypeError, match="unknown event"):
        BFT(None).handle(object())
