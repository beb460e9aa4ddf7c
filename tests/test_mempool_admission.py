"""Mempool admission against a flooding sender: what can never execute is refused at the door
with InvalidTx (so the relaying peer can be blamed), what is merely untimely gets Rejected, the
per-sender aggregate stays exact, and admission work does not grow with a sender's backlog."""
from __future__ import annotations

import dataclasses
import random

import pytest

from consensus import jobs
from node.mempool import InvalidTx, Mempool, Rejected, upfront_cost
from consensus.ledger import get_params
from tests.chainfactory import ALICE, BOB, CAROL, CHAIN_ID, Chain, job_spec, make_tx, transfer


@pytest.fixture
def state():
    return Chain.create().view()


NEVER_VALID = [
    ("zero amount", "transfer", {"to": BOB.address, "amount": 0}),
    ("negative amount", "transfer", {"to": BOB.address, "amount": -1}),
    ("bool amount", "transfer", {"to": BOB.address, "amount": True}),
    ("short address", "transfer", {"to": BOB.address[:19], "amount": 1}),
    ("long address", "transfer", {"to": BOB.address + b"\x00", "amount": 1}),
    ("unknown field", "transfer", {"to": BOB.address, "amount": 1, "memo": "hi"}),
    ("missing field", "transfer", {"to": BOB.address}),
    ("unknown kind", "mint", {"to": BOB.address, "amount": 1}),
    ("bad role", "stake", {"role": "king", "amount": 1}),
    ("unjail with a body", "unjail", {"please": True}),
    ("free-form nesting", "attest", {"job": b"j" * 32, "round": 0, "shard": [[[[0]]]]}),
    ("nested spec arg", "submit_job", {"spec": dict(job_spec(), model_args={"in_dim": [[2]]})}),
    ("unknown spec arg", "submit_job", {"spec": dict(job_spec(), model_args=dict(job_spec()["model_args"], x=1))}),
    ("proof of non-hashes", "challenge", {"job": b"j" * 32, "round": 0, "shard": 0, "interval": 0,
                                          "start_leaf": b"s" * 32, "start_proof": [[b"x"]],
                                          "end_leaf": b"e" * 32, "end_proof": []}),
]


@pytest.mark.parametrize("what,kind,body", NEVER_VALID, ids=[c[0] for c in NEVER_VALID])
def test_a_tx_that_can_never_execute_is_invalid_not_merely_rejected(state, what, kind, body):
    mp = Mempool(CHAIN_ID)
    with pytest.raises(InvalidTx):
        mp.add(make_tx(ALICE, kind, body, 0), state)
    assert len(mp) == 0 and mp.pending_cost == {}


def test_a_job_whose_budget_exceeds_any_supply_is_invalid(state):
    spec = job_spec(reward_per_shard=2**62, shards=16, rounds=10)
    with pytest.raises(InvalidTx, match="more than any balance"):
        Mempool(CHAIN_ID).add(make_tx(ALICE, "submit_job", {"spec": spec}, 0), state)


def test_wrong_chain_and_low_fee_are_invalid(state):
    mp = Mempool(CHAIN_ID)
    with pytest.raises(InvalidTx):
        mp.add(transfer(ALICE, BOB.address, 1, 0, chain_id="another-net"), state)
    with pytest.raises(InvalidTx):
        mp.add(transfer(ALICE, BOB.address, 1, 0, fee=0), state)


def test_the_signature_is_checked_before_anything_else(state):
    """A forged tx is InvalidTx even when it would also fail every other check: nothing about
    the sender's state is read for an unsigned tx."""
    mp = Mempool(CHAIN_ID)
    bad = dataclasses.replace(make_tx(ALICE, "mint", {"x": 1}, 10**6, fee=0), signature=bytes(64))
    with pytest.raises(InvalidTx, match="bad signature"):
        mp.add(bad, state)


def test_untimely_txs_are_rejected_not_invalid(state):
    mp = Mempool(CHAIN_ID, max_per_sender=5)
    mp.add(transfer(ALICE, BOB.address, 1, 0), state)
    for tx in (transfer(ALICE, BOB.address, 1, 0),                  # duplicate
               transfer(ALICE, BOB.address, 2, 0),                  # nonce already pending
               transfer(ALICE, BOB.address, 1, 9),                  # too far ahead
               transfer(CAROL, BOB.address, 1, 0)):                 # no funds
        with pytest.raises(Rejected):
            mp.add(tx, state)


def test_pending_aggregate_is_exact_through_adds_blocks_and_evictions():
    c = Chain.create()
    mp = Mempool(CHAIN_ID)
    rnd = random.Random(5)
    txs = [transfer(ALICE, CAROL.address, rnd.randrange(1, 50), n, fee=rnd.randrange(1, 4)) for n in range(40)]
    for tx in txs:
        mp.add(tx, c.view())

    def recount() -> dict:
        out: dict = {}
        for e in mp.by_hash.values():
            out[e.sender] = out.get(e.sender, 0) + e.cost
        return out

    assert mp.pending_cost == recount() == {ALICE.address: sum(upfront_cost(t, get_params(c.view())) for t in txs)}
    c.block(mp.reap(c.view(), 15))
    mp.update(c.view(), 1)
    assert len(mp) == 25 and mp.pending_cost == recount()
    mp.remove_invalid([(txs[20], "test")])
    assert mp.pending_cost == recount()
    mp.update(c.view(), 10_000)  # everything expires
    assert len(mp) == 0 and mp.pending_cost == {} and not mp.by_sender


def test_admission_does_not_rescan_a_senders_backlog(monkeypatch):
    """The cost of one more tx is the same with 1 or 900 pending jobs: count calls to the spec
    check and to upfront_cost, which used to run once per pending tx on every admission."""
    from tests.chainfactory import VAL
    state = Chain.create(accounts=((VAL, 1_000), (ALICE, 10**12))).view()
    calls = {"cost": 0, "spec": 0}
    import node.mempool as mpmod
    real_cost, real_spec = mpmod.upfront_cost, jobs.check_spec

    def counting_cost(tx, params):
        calls["cost"] += 1
        return real_cost(tx, params)

    def counting_spec(spec):
        calls["spec"] += 1
        return real_spec(spec)

    monkeypatch.setattr(mpmod, "upfront_cost", counting_cost)
    monkeypatch.setattr(jobs, "check_spec", counting_spec)
    mp = Mempool(CHAIN_ID)
    for n in range(900):
        mp.add(make_tx(ALICE, "submit_job", {"spec": job_spec(seed=n)}, n), state)
    before = dict(calls)
    mp.add(make_tx(ALICE, "submit_job", {"spec": job_spec(seed=900)}, 900), state)
    assert calls["cost"] - before["cost"] == 1
    assert calls["spec"] - before["spec"] == 1
    assert mp.pending_cost[ALICE.address] == 901 * upfront_cost(
        make_tx(ALICE, "submit_job", {"spec": job_spec()}, 0), get_params(state))


def test_a_peers_tx_budget_refills_at_its_rate_and_caps_bursts():
    from p2p.ratelimit import TokenBucket
    b = TokenBucket(rate=100.0, burst=300.0)
    assert b.take(1000, now=0.0) == 300      # a burst is capped
    assert b.take(10, now=0.0) == 0          # and then nothing is left
    assert b.take(1000, now=0.5) == 50       # it refills at the rate
    assert b.take(1000, now=100.0) == 300    # never beyond the burst


# -- the class property: whatever is admitted travels inside a block -----------------------------

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from consensus import codec  # noqa: E402
from consensus.types import Block, Header, Proposal  # noqa: E402
from consensus.txschema import SCHEMAS  # noqa: E402

_leaf = st.none() | st.booleans() | st.integers(-(2**64), 2**64) | st.binary(max_size=40) | st.text(max_size=10)
_value = st.recursive(_leaf, lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=6), c, max_size=3),
                      max_leaves=12)
_field_names = st.sampled_from(["to", "amount", "role", "job", "round", "shard", "spec", "fault", "interval",
                                "root", "leaves", "manifest", "start", "start_proof", "final", "final_proof",
                                "start_leaf", "end_leaf", "end_proof", "memo"])
_bodies = st.dictionaries(_field_names, _value | st.sampled_from([b"\x01" * 20, b"\x02" * 32, 5, "solver", []]),
                          max_size=10)


def _wrapped_in_a_proposal(tx) -> bytes:
    h = Header("testchain", 1, 1, b"\0" * 32, b"\0" * 32, b"\0" * 32, b"\0" * 32, b"\0" * 32, b"\0" * 32,
               b"\0" * 20, b"\0" * 32, b"\0" * 64)
    return codec.encode(["proposal", Proposal(1, 0, -1, Block(h, (tx,), None), b"\0" * 64).to_obj()])


_TEMPLATES = {
    "transfer": {"to": b"\x01" * 20, "amount": 5},
    "stake": {"role": "solver", "amount": 5},
    "unstake": {"role": "solver", "amount": 5},
    "cancel_job": {"job": b"\x02" * 32},
    "submit_job": {"spec": job_spec()},
}


@st.composite
def _mutated(draw):
    """A valid body with one field's value replaced (or kept), sometimes one field added."""
    kind = draw(st.sampled_from(sorted(_TEMPLATES)))
    body = dict(_TEMPLATES[kind])
    name = draw(st.sampled_from(sorted(body)))
    if draw(st.booleans()):
        body[name] = draw(_value)
    if draw(st.integers(0, 4)) == 0:
        body[draw(_field_names)] = draw(_value)
    return kind, body


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                   HealthCheck.function_scoped_fixture])
@given(case=_mutated())
def test_near_valid_bodies_are_admitted_only_if_they_travel(state, case):
    kind, body = case
    test_whatever_the_mempool_admits_encodes_inside_a_proposal.hypothesis.inner_test(state, kind, body)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                   HealthCheck.function_scoped_fixture])
@given(kind=st.sampled_from(sorted(SCHEMAS) + ["mint"]), body=_bodies)
def test_whatever_the_mempool_admits_encodes_inside_a_proposal(state, kind, body):
    """Random bodies for every kind: each is either refused at the door, or it can be wrapped
    in a block in a proposal in a gossip message and decoded back unchanged."""
    mp = Mempool(CHAIN_ID)
    try:
        tx = make_tx(ALICE, kind, body, 0)
    except codec.CodecError:
        return  # cannot even be signed
    try:
        mp.add(tx, state)
    except (InvalidTx, Rejected):
        return
    wire = _wrapped_in_a_proposal(tx)
    assert codec.decode(wire)[1][3][1][0] == tx.to_obj()
