"""consensus.bft, the happy path and its rounds: validators commit the same block with a valid
commit, only the (stake-weighted, rotating) proposer proposes, and timeouts move a height to
later rounds until it commits.

The in-test network and its helpers are in tests/bftnet.py.
"""
from __future__ import annotations

import collections

from consensus.bft import (BFT, NIL, PROPOSE, NewHeight, Propose, ScheduleTimeout, SignVote, Timeout,
                           TimeoutConfig, VoteReceived, proposer_for, verify_commit)
from consensus.ledger import Validator
from consensus.types import PRECOMMIT, PREVOTE, Commit
from tests.bftnet import VALS1, VALS4, Net, first_height, make_block, vote
from tests.chainfactory import CHAIN_ID


# -- basic commits ------------------------------------------------------------------------------

def test_single_validator_commits_height_1_immediately():
    net = Net(VALS1)
    me = VALS1[0].address
    actions = net.machines[me].handle(NewHeight(1, VALS1))
    assert actions == [ScheduleTimeout(1, 0, PROPOSE, 3.0), Propose(1, 0, None, -1)]
    net.dispatch(me, actions)
    net.deliver()
    assert not net.timers[1:], "no further timeouts needed"
    c = net.commits[me][1]
    assert c.block.height == 1 and c.block.header.proposer == me
    assert c.commit == Commit(1, 0, c.block.hash, ((me, b"\x5a" * 64),))
    assert net.machines[me].decided
    kinds = [(v.kind, v.round, v.block_hash) for v in net.votes]
    assert kinds == [(PREVOTE, 0, c.block.hash), (PRECOMMIT, 0, c.block.hash)]


def test_single_validator_many_heights():
    net = Net(VALS1)
    for h in range(1, 6):
        net.run_height(h)
        assert len(net.committed(h)) == 1
    assert len({net.commits[VALS1[0].address][h].block.hash for h in range(1, 6)}) == 5


def test_four_validators_all_commit_the_same_block():
    net = Net(VALS4, real_sigs=True, followers=1)
    for h in range(1, 4):
        net.run_height(h)
        committed = net.committed(h)
        assert len(committed) == 1, committed
        assert all(h in net.commits[a] for a in net.machines)
        (bh,) = committed
        for a in net.machines:
            c = net.commits[a][h].commit
            assert c.height == h and c.round == 0 and c.block_hash == bh
            assert len(c.signatures) >= 3
            assert list(c.signatures) == sorted(c.signatures)
            assert verify_commit(CHAIN_ID, c, VALS4, h, bh) is None
    # the follower never voted nor proposed
    assert {v.validator for v in net.votes} == {v.address for v in VALS4}
    assert all(not a.startswith(b"follower") for a, _ in net.proposes)


def test_commit_contains_only_precommits_for_the_block():
    net = Net(VALS4)
    net.run_height(1)
    for a in net.online():
        c = net.commits[a][1].commit
        addrs = {x for x, _ in c.signatures}
        assert addrs <= {v.address for v in VALS4}
        assert len(addrs) == len(c.signatures)


# -- proposer selection ------------------------------------------------------------------------------

def test_proposer_is_deterministic_and_everyone_gets_a_turn():
    counts = collections.Counter()
    for h in range(1, 41):
        for r in range(3):
            p = proposer_for(VALS4, h, r)
            assert p == proposer_for(VALS4, h, r) == proposer_for(tuple(VALS4), h, r)
            assert p in VALS4
        counts[proposer_for(VALS4, h, 0).address] += 1
    assert set(counts) == {v.address for v in VALS4}


def test_only_the_proposer_proposes():
    net = Net(VALS4)
    seen = collections.Counter()
    for h in range(1, 21):
        net.run_height(h)
        props = [(a, p) for a, p in net.proposes if p.height == h]
        assert len(props) == 1
        addr, p = props[0]
        assert addr == proposer_for(VALS4, h, 0).address
        assert all(m.proposer(0).address == addr for m in net.machines.values())
        assert (p.round, p.block, p.pol_round) == (0, None, -1)
        seen[addr] += 1
    assert set(seen) == {v.address for v in VALS4}


def test_proposer_is_stake_weighted():
    heavy = (Validator(b"\x01" * 20, b"\x01" * 32, 97), Validator(b"\x02" * 20, b"\x02" * 32, 3))
    counts = collections.Counter(proposer_for(heavy, h, 0).address for h in range(1, 401))
    assert counts[b"\x01" * 20] > 340
    assert counts[b"\x02" * 20] > 0


def test_next_round_has_a_different_proposer():
    for h in range(1, 41):
        assert proposer_for(VALS4, h, 1) != proposer_for(VALS4, h, 0), f"height {h}"


# -- timeouts and rounds ------------------------------------------------------------------------------

def test_timeouts_grow_with_the_round():
    t = TimeoutConfig(propose=3.0, prevote=1.0, precommit=1.0, delta=0.5)
    assert t.seconds(PROPOSE, 0) == 3.0
    assert t.seconds(PROPOSE, 2) == 4.0
    assert t.seconds(PREVOTE, 1) == 1.5
    assert t.seconds(PRECOMMIT, 4) == 3.0


def test_propose_timeout_leads_to_nil_prevote_and_round_1_with_another_proposer():
    h = first_height(lambda h: proposer_for(VALS4, h, 0) != proposer_for(VALS4, h, 1))
    p0, p1 = proposer_for(VALS4, h, 0).address, proposer_for(VALS4, h, 1).address
    net = Net(VALS4, silent={p0})  # the round-0 proposer is offline
    net.start_height(h)
    net.deliver()
    assert net.votes == [] and not any(net.commits.values())
    # the propose timeout fires: everyone online prevotes nil
    net.fire_timeouts()
    prevotes0 = [v for v in net.votes if v.round == 0 and v.kind == PREVOTE]
    assert sorted(v.validator for v in prevotes0) == sorted(a for a in net.online())
    assert all(v.block_hash == NIL for v in prevotes0)
    net.deliver()
    precommits0 = [v for v in net.votes if v.round == 0 and v.kind == PRECOMMIT]
    assert len(precommits0) == 3 and all(v.block_hash == NIL for v in precommits0)
    # then the precommit timeout moves everyone to round 1, whose proposer proposes
    for _ in range(5):
        net.fire_timeouts()
        net.deliver()
        if net.committed(h):
            break
    assert all(m.round == 1 for a, m in net.machines.items() if a != p0)
    assert [(a, p.round) for a, p in net.proposes] == [(p1, 1)]
    (bh,) = net.committed(h)
    assert all(net.commits[a][h].commit.round == 1 for a in net.online())
    assert net.commits[net.online()[0]][h].block.header.proposer == p1


def test_prevote_timeout_after_split_votes_gives_nil_precommit():
    me = VALS4[0].address
    m = BFT(me)
    m.handle(NewHeight(1, VALS4))
    out = m.handle(Timeout(1, 0, PROPOSE))
    assert out == [SignVote(PREVOTE, 1, 0, NIL)]
    b = make_block(1, 0, VALS4[1].address)
    m.handle(VoteReceived(vote(PREVOTE, 1, 0, NIL, me)))
    m.handle(VoteReceived(vote(PREVOTE, 1, 0, b.hash, VALS4[1].address)))
    out = m.handle(VoteReceived(vote(PREVOTE, 1, 0, b"\x07" * 32, VALS4[2].address)))
    assert out == [ScheduleTimeout(1, 0, PREVOTE, 1.0)]  # 2/3+ prevoted, but for nothing in common
    assert m.handle(Timeout(1, 0, PREVOTE)) == [SignVote(PRECOMMIT, 1, 0, NIL)]
    assert m.handle(Timeout(1, 0, PREVOTE)) == []  # only once


def test_stale_timeouts_are_ignored():
    m = BFT(VALS4[0].address)
    m.handle(NewHeight(3, VALS4))
    assert m.handle(Timeout(2, 0, PROPOSE)) == []
    assert m.handle(Timeout(3, 1, PROPOSE)) == []
    assert m.handle(Timeout(3, 0, PREVOTE)) == []  # not in the prevote step
    assert m.step == PROPOSE


def test_skip_to_a_later_round_on_one_third_of_power():
    me = VALS4[0].address
    m = BFT(me)
    m.handle(NewHeight(1, VALS4))
    assert m.handle(VoteReceived(vote(PREVOTE, 1, 3, NIL, VALS4[1].address))) == []  # 1/4: not enough
    assert m.round == 0
    out = m.handle(VoteReceived(vote(PRECOMMIT, 1, 3, NIL, VALS4[2].address)))  # 2/4 > 1/3
    assert m.round == 3
    assert out[0] == ScheduleTimeout(1, 3, PROPOSE, 3.0 + 0.5 * 3)
