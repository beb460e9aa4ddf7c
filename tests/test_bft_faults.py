"""consensus.bft under faults: silent validators, conflicting votes (evidence), votes from
strangers, invalid proposals and proposers, duplicate proposals, and late precommits.

The in-test network and its helpers are in tests/bftnet.py.
"""
from __future__ import annotations

from consensus.bft import (BFT, NIL, CommitBlock, NewHeight, ProposalReceived, ReportEvidence, SignVote, Timeout,
                           VoteReceived, proposer_for)
from consensus.types import PRECOMMIT, PREVOTE, Proposal
from tests.bftnet import VALS4, Net, actions_of, first_height, make_block, vote


# -- failures ---------------------------------------------------------------------------------------

def test_two_of_four_silent_nothing_is_committed():
    net = Net(VALS4, silent={VALS4[0].address, VALS4[3].address})
    net.run_height(1, max_timeout_waves=30)
    assert not any(net.commits.values())
    assert all(not net.machines[a].decided for a in net.online())
    # half the power can neither lock nor precommit a block: everyone is stuck waiting
    assert all(net.machines[a].locked_block is None for a in net.online())
    assert not [v for v in net.votes if v.kind == PRECOMMIT]
    assert all(net.machines[a].step == PREVOTE for a in net.online())
    assert not net.timers
    # more timeouts (e.g. a stray precommit timeout) only move rounds, never commit
    for r in range(5):
        for a in net.online():
            net.dispatch(a, net.machines[a].handle(Timeout(1, r, PRECOMMIT)))
        net.deliver()
        net.fire_timeouts()
        net.deliver()
    assert not any(net.commits.values())
    assert all(net.machines[a].round == 5 for a in net.online())


def test_one_of_four_silent_still_commits():
    h = first_height(lambda h: proposer_for(VALS4, h, 0).address != VALS4[2].address)
    net = Net(VALS4, silent={VALS4[2].address})
    net.run_height(h)
    assert len(net.committed(h)) == 1
    assert all(len(net.commits[a][h].commit.signatures) == 3 for a in net.online())


def test_conflicting_votes_produce_evidence():
    me, other = VALS4[0].address, VALS4[1].address
    m = BFT(me)
    m.handle(NewHeight(1, VALS4))
    b1, b2 = make_block(1, 0, other, b"1"), make_block(1, 0, other, b"2")
    v1, v2 = vote(PREVOTE, 1, 0, b1.hash, other), vote(PREVOTE, 1, 0, b2.hash, other)
    assert m.handle(VoteReceived(v1)) == []
    assert m.handle(VoteReceived(v1)) == []  # an exact repeat is not evidence
    out = m.handle(VoteReceived(v2))
    (ev,) = actions_of(out, ReportEvidence)
    assert {ev.evidence.vote_a, ev.evidence.vote_b} == {v1, v2}
    assert ev.evidence.vote_a.block_hash < ev.evidence.vote_b.block_hash
    assert m.rounds[0].prevotes[other] == v1  # the first vote is the one counted
    nil = vote(PRECOMMIT, 1, 0, NIL, other)
    m.handle(VoteReceived(nil))
    (ev2,) = actions_of(m.handle(VoteReceived(vote(PRECOMMIT, 1, 0, b1.hash, other))), ReportEvidence)
    assert ev2.evidence.vote_a == nil


def test_evidence_order_does_not_depend_on_arrival_order():
    other = VALS4[1].address
    v1, v2 = vote(PREVOTE, 1, 0, b"\x01" * 32, other), vote(PREVOTE, 1, 0, b"\x02" * 32, other)
    reports = []
    for first, second in ((v1, v2), (v2, v1)):
        m = BFT(VALS4[0].address)
        m.handle(NewHeight(1, VALS4))
        m.handle(VoteReceived(first))
        reports.append(actions_of(m.handle(VoteReceived(second)), ReportEvidence)[0].evidence)
    assert reports[0] == reports[1]
    assert reports[0].hash == reports[1].hash


def test_votes_from_non_validators_are_ignored():
    m = BFT(VALS4[0].address)
    m.handle(NewHeight(1, VALS4))
    stranger = b"\xee" * 20
    for r in range(3):
        assert m.handle(VoteReceived(vote(PRECOMMIT, 1, 5, NIL, stranger))) == []
    assert m.round == 0
    assert stranger not in m._round(5).precommits


def test_invalid_proposal_gets_a_nil_prevote():
    me = VALS4[0].address
    m = BFT(me)
    m.handle(NewHeight(1, VALS4))
    b = make_block(1, 0, proposer_for(VALS4, 1, 0).address)
    out = m.handle(ProposalReceived(Proposal(1, 0, -1, b, b"\x00" * 64), valid=False))
    assert out == [SignVote(PREVOTE, 1, 0, NIL)]
    # even 2/3+ prevotes and precommits for an invalid block never lock or decide it
    for v in VALS4[1:]:
        m.handle(VoteReceived(vote(PREVOTE, 1, 0, b.hash, v.address)))
    for v in VALS4[1:]:
        out = m.handle(VoteReceived(vote(PRECOMMIT, 1, 0, b.hash, v.address)))
        assert not actions_of(out, CommitBlock)
    assert m.locked_block is None and not m.decided


def test_network_with_invalid_proposer_commits_in_a_later_round():
    h = first_height(lambda h: proposer_for(VALS4, h, 0) != proposer_for(VALS4, h, 1))
    bad = proposer_for(VALS4, h, 0).address
    net = Net(VALS4, invalid_from={bad})
    net.run_height(h)
    (bh,) = net.committed(h)
    c = net.commits[net.online()[0]][h]
    assert c.block.header.proposer != bad and c.commit.round >= 1


def test_first_proposal_per_round_wins():
    m = BFT(VALS4[0].address)
    m.handle(NewHeight(1, VALS4))
    p = proposer_for(VALS4, 1, 0).address
    b1, b2 = make_block(1, 0, p, b"1"), make_block(1, 0, p, b"2")
    out = m.handle(ProposalReceived(Proposal(1, 0, -1, b1, b"\x00" * 64), valid=True))
    assert out == [SignVote(PREVOTE, 1, 0, b1.hash)]
    assert m.handle(ProposalReceived(Proposal(1, 0, -1, b2, b"\x00" * 64), valid=True)) == []
    assert m.rounds[0].proposal.block == b1


def test_decides_on_precommits_from_an_earlier_round():
    m = BFT(VALS4[0].address)
    m.handle(NewHeight(1, VALS4))
    b = make_block(1, 0, proposer_for(VALS4, 1, 0).address)
    m.handle(ProposalReceived(Proposal(1, 0, -1, b, b"\x00" * 64), valid=True))
    m.handle(Timeout(1, 0, PRECOMMIT))
    assert m.round == 1
    out = []
    for v in VALS4[1:]:
        out += m.handle(VoteReceived(vote(PRECOMMIT, 1, 0, b.hash, v.address)))
    (c,) = actions_of(out, CommitBlock)
    assert c.block == b and c.commit.round == 0 and len(c.commit.signatures) == 3
    assert m.handle(VoteReceived(vote(PRECOMMIT, 1, 0, b.hash, VALS4[0].address))) == []  # decided
