"""The verification game with real training: whoever lies in a bisection game loses, and the
referee's verdict costs exactly one training step, whatever k is.

A real chain (tests/jobworld.py) holds a real job (the spirals MLP, exact profile, k = 8:
three rounds of moves). The solver's leaves are really trained (or forged); each party's
midpoint hashes come from really recomputing its own leaf, or from a lie; the referee judges
the finished game with `node.workers.referee.judge` on the blobs the parties uploaded, and the
validators' votes decide it on chain.
"""
from __future__ import annotations

from pathlib import Path

import pytest

from consensus.blobid import blob_id
from node.workers.common import JobContext, Verdict
from node.workers.referee import judge
from tests.chainfactory import challenge_body
from tests.gamearena import (commit_trained, count_steps, forged, honest_answer, honest_leaves, honest_mid,
                             outsider, play, record)
from tests.jobworld import (REFEREES, STAKE, block, blocks, challenges, events, job, open_game, shard, solver_of,
                            submit, tx, verifiers_of, vote, world)
from verifier import checkpoint, training

K, INTERVAL = 8, 3


@pytest.fixture(scope="module")
def trained():
    """The honest leaves of the job's one shard, computed once."""
    return honest_leaves(K)


def _play(leaves, solver_hash, answer, forge: bool = False, serve=None):
    p = play(K, forged(leaves, INTERVAL + 1) if forge else leaves, INTERVAL, solver_hash, answer, serve)
    assert p.moves == 6  # log2(8) = 3 rounds
    return p.chain, p.job, p.challenger, p.judgement, p.referee_steps


def _decide(c, jid, challenger, fault: bool) -> None:
    blocks(c, 10)  # past the response deadline
    vote(c, jid, challenger, fault, *REFEREES)


def test_a_forged_interval_end_loses_the_game_at_its_last_step_for_one_referee_step(trained):
    """The cheater's midpoints are honest (recomputed from its honest leaf), so the challenger
    agrees each time and the game ends at the interval's last step, where the forgery is."""
    c, jid, challenger, judged, steps = _play(trained, honest_mid, honest_answer, forge=True)
    game = open_game(c, jid, challenger)
    assert (game["lo"], game["hi"]) == (INTERVAL * K + K - 1, INTERVAL * K + K)
    assert judged.verdict == Verdict.FAULT and steps == 1
    solver = solver_of(c, jid)
    _decide(c, jid, challenger, True)
    assert c.stake_of(solver, "solver") < STAKE and shard(c, jid)["solver"] != solver.address


@pytest.mark.parametrize("lie_at", [0, 1, 2])
def test_a_solver_that_lies_at_any_midpoint_loses(trained, lie_at):
    """An honest commit, challenged; the solver posts a wrong hash at round `lie_at`: the honest
    challenger disagrees, so the lie becomes the disputed end, and one step shows it."""
    rounds = []

    def lying(game, party):
        rounds.append(1)
        return blob_id(b"a lie") if len(rounds) - 1 == lie_at else honest_mid(game, party)
    c, jid, challenger, judged, steps = _play(trained, lying, honest_answer)
    assert judged.verdict == Verdict.FAULT and steps == 1


@pytest.mark.parametrize("answers", ["always-disagree", "always-agree", "alternate"])
def test_a_challenger_of_an_honest_solver_loses_whatever_it_answers(trained, answers):
    """False disagreements (and agreements) only move the game between states the honest
    solver computed: the last step always matches, and the challenger's bond goes to the solver."""
    turn = []

    def answer(game, party):
        turn.append(1)
        return {"always-disagree": False, "always-agree": True, "alternate": len(turn) % 2 == 0}[answers]
    c, jid, challenger, judged, steps = _play(trained, honest_mid, answer)
    assert judged.verdict == Verdict.SOUND and steps == 1
    _decide(c, jid, challenger, False)
    assert c.stake_of(challenger, "verifier") < STAKE and challenges(c, jid) == []
    assert any(e[2] == solver_of(c, jid).address for e in events(c, jid, "rewarded"))


def test_a_cheater_whose_challenger_falsely_agrees_with_a_wrong_midpoint_still_loses_the_step(trained):
    """A forged end, and a solver that lies at the first midpoint to pull the game away from
    it; an honest challenger disagrees and the lie itself is judged at the last step."""
    first = []

    def pull_away(game, party):
        first.append(1)
        return blob_id(b"pull") if len(first) == 1 else honest_mid(game, party)
    c, jid, challenger, judged, steps = _play(trained, pull_away, honest_answer, forge=True)
    assert judged.verdict == Verdict.FAULT and steps == 1


def test_an_agreed_state_at_the_wrong_step_is_the_solvers_fault(trained):
    """The solver posts the hash of a real state one step late as its midpoint and a careless
    challenger agrees: the state served for that hash is not at the agreed step."""
    def late(game, party):
        return party.at((game["lo"] + game["hi"]) // 2 + 1)

    def serve(game, party):
        return party.state(game["lo"] + 1)
    c, jid, challenger, judged, steps = _play(trained, late, lambda g, p: True, serve=serve)
    assert judged.verdict == Verdict.FAULT and "agreed state" in judged.why


def test_an_agreed_state_nobody_serves_is_undecided_then_no_fault_shown(trained):
    c, jid, challenger, judged, steps = _play(trained, honest_mid, honest_answer, forge=True,
                                               serve=lambda g, p: b"not the agreed state")
    assert judged.verdict == Verdict.UNDECIDED and steps == 0
    ch = record(c, jid).shards[0].challenges[0]
    later = judge(record(c, jid), 0, ch, ch.game.serve_by + 1, {}.get)
    assert later.verdict == Verdict.SOUND and "not served in time" in later.why


def test_without_a_game_the_tolerance_referee_recomputes_the_whole_interval():
    """For comparison: the same dispute in the tolerance profile costs k steps."""
    c = world()
    jid = submit(c, shards=1, steps=50 * K, k=K, verify_blocks=30, profile="tolerance")
    ctx = JobContext(record(c, jid), {}.get)
    leaves_bytes = training.train_shard(ctx.work(0), ctx.expected_start())
    leaves = commit_trained(c, jid, leaves_bytes)
    challenger = outsider(c, jid)
    block(c, tx(c, challenger, "challenge", challenge_body(jid, 0, 0, INTERVAL, leaves)))
    assert challenges(c, jid)[0]["game"] is None
    blobs = {blob_id(b): b for b in leaves_bytes}
    judged, steps = count_steps(lambda: judge(record(c, jid), 0, record(c, jid).shards[0].challenges[0], c.height,
                                              blobs.get))
    assert judged.verdict == Verdict.SOUND and steps == K
    assert job(c, jid)["status"] == "active"


class ChainClient:
    """What a worker asks of its node's RPC, answered from an in-memory chain: a tx broadcast
    is applied in the next block, so the worker's txs land as a node would include them."""

    def __init__(self, c):
        self.c, self.blobs = c, {}

    def status(self) -> dict:
        return {"chain_id": self.c.genesis.chain_id}

    def get(self, path: str) -> dict:
        assert path == "/params", path
        from consensus.ledger import get_params
        return get_params(self.c.view())

    def account(self, address: str) -> dict:
        from consensus.crypto import parse_address
        from consensus.ledger import get_account
        return {"next_nonce": get_account(self.c.view(), parse_address(address)).nonce}

    def broadcast(self, t) -> str:
        block(self.c, t)
        return t.hash.hex()

    def wait_for_tx(self, tx_hash: str) -> dict:
        return {"status": "committed", "height": self.c.height}

    def get_blob(self, digest: str) -> bytes | None:
        return self.blobs.get(bytes.fromhex(digest))

    def put_blob(self, data: bytes) -> str:
        self.blobs[blob_id(data)] = data
        return blob_id(data).hex()

    def get_blob_file(self, digest: str, path) -> int | None:  # what a worker's blob cache asks
        raw = self.blobs.get(bytes.fromhex(digest))
        if raw is not None:
            Path(path).write_bytes(raw)
        return None if raw is None else len(raw)

    def put_blob_file(self, path) -> dict:
        return {"hash": self.put_blob(Path(path).read_bytes())}


def test_a_solver_worker_plays_every_game_of_challenges_opened_in_the_same_block(trained, tmp_path):
    """Two challengers open games on different intervals of an honest shard in one block: both
    games have the same opening height and no moves yet, and the solver must post, in each,
    the midpoint of that game's own interval. Else it misses its move in one and loses its
    collateral to a challenger that was wrong."""
    from node.workers.solver import Solver
    from tests.gamearena import Party, new_job
    from verifier.leaves import LeafDir
    c, jid = new_job(K)
    leaves, solver = commit_trained(c, jid, trained), solver_of(c, jid)
    griefers = (outsider(c, jid), verifiers_of(c, jid)[0])
    block(c, *(tx(c, g, "challenge", challenge_body(jid, 0, 0, i, leaves)) for g, i in zip(griefers, (3, 5))))
    assert len({ch["opened"] for ch in challenges(c, jid)}) == 1
    worker = Solver(ChainClient(c), solver, tmp_path, progress=False)
    kept = LeafDir(worker.shard_dir(record(c, jid), 0))  # the leaves as the solver keeps them on disk
    for i, leaf in enumerate(trained):
        kept.put_raw(i, leaf)
    kept.finish(0, kept.interval_losses(len(trained), K))
    worker.defend(record(c, jid), 0, record(c, jid).shards[0], 0)
    for g, i in zip(griefers, (3, 5)):
        game = open_game(c, jid, g)
        assert game["mid_hash"] == Party(c, jid, i, trained[i]).at((game["lo"] + game["hi"]) // 2), g


# -- forced errors, with real training ---------------------------------------------------------

def _forced_check(planted: bool = True, make=None):
    """A real shard with (or without) its forced error planted (or its leaves made by `make`),
    attested, revealed: the chain's FORCED check and what a referee makes of it, plus the
    leaves. The context also carries the chain and the solver."""
    from consensus import codec as _codec
    from tests.jobworld import FORCED_ERRORS, attest, forced_of, reveal, until
    from verifier import forced as vforced
    c = world(**dict(FORCED_ERRORS, forced_error_ppm=1_000_000), samples_per_shard=50)
    jid = submit(c, shards=1, verify_blocks=3)
    f = forced_of(c, jid)
    ctx = JobContext(record(c, jid), {}.get)
    start = ctx.expected_start()
    leaves_bytes = make(ctx.work(0), start, f) if make else \
        vforced.train_with_forced_error(ctx.work(0), start, f if planted else None)
    leaves = commit_trained(c, jid, leaves_bytes)
    attest(c, jid, 0)
    until(c, lambda: shard(c, jid)["status"] == "revealing")
    reveal(c, jid)
    blobs = {blob_id(b): b for b in leaves_bytes}
    blobs[blob_id(_codec.encode(leaves))] = _codec.encode(leaves)
    rec = record(c, jid)
    [ch] = rec.shards[0].challenges
    ctx.chain, ctx.solver = c, solver_of(c, jid)
    return judge(rec, 0, ch, c.height, blobs.get), ctx, leaves_bytes, f


def test_a_planted_forced_error_spoils_exactly_its_interval_and_the_referees_confirm_it():
    from verifier import replay
    judged, ctx, leaves, f = _forced_check(planted=True)
    assert judged.verdict == Verdict.FAULT   # the interval really is wrong: its attesters are lazy
    work = ctx.work(0)
    bad = [i for i in range(len(leaves) - 1) if not replay.verify_interval(work, i, leaves[i], leaves[i + 1])[0]]
    assert bad == [f]
    honest = training.train_shard(work, checkpoint.decode(leaves[0]))
    assert replay.relative_distance(checkpoint.decode(honest[-1]), checkpoint.decode(leaves[-1])) < 1e-4


def test_a_forced_error_revealed_but_never_planted_is_found_right_by_the_referees():
    judged, *_ = _forced_check(planted=False)
    assert judged.verdict == Verdict.SOUND   # so its honest attesters are not slashed


def _poisoned_leaves(work, start, f: int) -> list[bytes]:
    """Honest up to leaf f; leaf f + 1 a model the solver chose (every weight moved by 1.0,
    nothing like the one-ulp change of a planted forced error); honest training from it on."""
    data = training.ShardData(work)
    head = training.train_leaves(data, start, last_leaf=f + 1)
    end = checkpoint.decode(head[-1])
    chosen = checkpoint.TrainState({n: t + 1.0 for n, t in end.params.items()}, end.opt, end.step, end.rng)
    return head[:-1] + training.train_leaves(data, chosen)


def test_a_forced_interval_ending_in_a_model_of_the_solvers_choosing_does_not_pass():
    """The solver knows its forced interval from its assignment. Instead of the one-ulp change
    verifier/forced.py plants, it ends that interval on a model of its own choosing (poisoned,
    say) and trains honestly on from it. Every other interval recomputes; the forced one is
    wrong, as a forced error must be. The referees confirm that it is wrong; the shard must
    not then pass with the solver's model in it and the solver paid in full."""
    from tests.jobworld import REFEREES
    judged, ctx, leaves, f = _forced_check(make=_poisoned_leaves)
    c, jid, solver = ctx.chain, ctx.job.id, ctx.solver
    assert judged.verdict == Verdict.SOUND and "not the planted change" in judged.why
    honest = training.train_shard(ctx.work(0), checkpoint.decode(leaves[0]))
    from verifier import replay
    assert replay.relative_distance(checkpoint.decode(honest[-1]), checkpoint.decode(leaves[-1])) > 0.1
    vote(c, jid, solver, False, *REFEREES)   # what the referees found
    assert shard(c, jid)["status"] != "passed" and c.stake_of(solver, "solver") < STAKE


@pytest.mark.parametrize("poisoned", [True, False])
def test_after_a_reveal_a_verifier_checks_the_forced_interval_against_the_planted_change(poisoned, tmp_path):
    """A challenge of the forced interval is answered by the reveal. The drawn verifiers look
    again: a forced interval that ends on a model of the solver's choosing is challenged as
    not the planted change, and the referees find it so; a properly planted one is attested."""
    from tests.jobworld import FORCED_ERRORS, forced_of, reveal
    from node.workers.verifier import Verifier
    from verifier import forced as vforced
    c = world(**dict(FORCED_ERRORS, forced_error_ppm=1_000_000), samples_per_shard=50)
    jid = submit(c, shards=1, verify_blocks=20)
    f = forced_of(c, jid)
    ctx = JobContext(record(c, jid), {}.get)
    start = ctx.expected_start()
    make = _poisoned_leaves if poisoned else (lambda w, s, i: vforced.train_with_forced_error(w, s, i))
    leaves_bytes = make(ctx.work(0), start, f)
    leaves = commit_trained(c, jid, leaves_bytes)
    whistleblower = outsider(c, jid)
    block(c, tx(c, whistleblower, "challenge", challenge_body(jid, 0, 0, f, leaves)))
    reveal(c, jid)
    assert challenges(c, jid) == [] and shard(c, jid)["forced"] == f
    client = ChainClient(c)
    from consensus import codec as _codec
    for b in leaves_bytes + [_codec.encode(leaves)]:
        client.put_blob(b)
    drawn = verifiers_of(c, jid)[0]
    worker = Verifier(client, drawn, tmp_path)
    from tests.jobworld import secret
    worker.secrets.element = lambda i: secret(drawn, i)   # the world's chain for this key
    worker.check_shard(record(c, jid), 0, record(c, jid).shards[0], 50, selected=True)
    if not poisoned:
        assert challenges(c, jid) == [] and next(s for s in shard(c, jid)["verifiers"]
                                                 if s["verifier"] == drawn.address)["attested"]
        return
    [ch] = challenges(c, jid)
    assert (ch["kind"], ch["interval"], ch["challenger"]) == ("unplanted", f, drawn.address)
    judged = judge(record(c, jid), 0, record(c, jid).shards[0].challenges[0], c.height, client.blobs.get)
    assert judged.verdict == Verdict.FAULT and "not the planted change" in judged.why


def test_a_challenger_whose_start_leaf_is_no_state_disagrees_down_to_it_and_wins(trained, tmp_path):
    """The solver committed garbage as leaf 3. The challenger of interval 3 cannot recompute a
    single step after it, so it disagrees with every midpoint: the game ends on the first step,
    whose agreed state is that leaf, and the referees find it no state of the job."""
    from consensus import codec as _codec
    from node.workers.verifier import Verifier
    from tests.gamearena import new_job
    c, jid = new_job(K)
    bad = list(trained)
    bad[INTERVAL] = _codec.encode({"not": "a checkpoint"})
    leaves, solver = commit_trained(c, jid, bad), solver_of(c, jid)
    challenger = outsider(c, jid)
    block(c, tx(c, challenger, "challenge", challenge_body(jid, 0, 0, INTERVAL, leaves)))
    client = ChainClient(c)
    for b in bad:
        client.put_blob(b)
    worker = Verifier(client, challenger, tmp_path)
    from tests.jobworld import game_body
    for n in range(3):
        block(c, tx(c, solver, "midpoint", game_body(c, jid, challenger, hash=blob_id(b"mid %d" % n))))
        rec = record(c, jid)
        worker.play(rec, 0, rec.shards[0].open_challenge(challenger.address))
    game = open_game(c, jid, challenger)
    assert (game["lo"], game["hi"], game["lo_hash"]) == (INTERVAL * K, INTERVAL * K + 1, leaves[INTERVAL])
    rec = record(c, jid)
    judged = judge(rec, 0, rec.shards[0].challenges[0], c.height, client.blobs.get)
    assert judged.verdict == Verdict.FAULT and "rejected" in judged.why
