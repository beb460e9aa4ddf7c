"""The bisection game: a challenge of an exact-profile interval narrowed to one step.

A challenge names interval i, from leaf i (which both sides take as given: it is the end of
the interval before, checked on its own) to leaf i + 1 (the solver's claim the challenger
disputes), k steps apart. Rather than have every validator recompute k steps, the two parties
halve the range:

    the solver posts the hash of its state at the midpoint step (recomputed from its leaf);
    the challenger answers agree (the fault is later: lo moves up) or disagree (hi moves down);

until one step [s, s + 1] is left, about log2(k) rounds. Then the agreed state at s must be
served as a blob (either party may upload it; its hash is on chain), and each referee runs one
training step from it and compares with the solver's hash at s + 1. A party that misses its
move's deadline loses the game (a challenger its challenge; a solver the one-step judgement:
the referees recompute the interval); a lie cannot win it, since the last step compares a state the
challenger agreed with (so its own, if it is honest) against one the solver claimed (its own).

Only exact profiles play: `tolerance` has no first divergent step (every step is a little
off), so its referees recompute the interval directly. Nor do challenges of a shard's start,
or of an interval past a declared divergence: those need no training to judge.
"""
from __future__ import annotations

from ..ledger import View, get_params
from . import settle
from .errors import JobError
from .records import START, Challenge, ChallengeKind, Game, Job, Shard

EXACT_PROFILES = ("cpu-f32-1thread", "cpu-f64")


def rounds_for(k: int) -> int:
    """Pairs of moves that narrow k steps to one: ceil(log2 k)."""
    return (k - 1).bit_length()


def game_blocks(params: dict, k: int) -> int:
    """The longest a game can take: every move at its deadline."""
    return 2 * rounds_for(k) * params["move_blocks"]


def plays_game(spec: dict, shard: Shard, kind: ChallengeKind, interval: int) -> bool:
    """Compute challenges of an exact profile's intervals up to a declared divergence. (An
    UNPLANTED challenge is not one: its referees compare with the planted change.)"""
    diverged = shard.commit.diverged_leaf
    return kind == ChallengeKind.COMPUTE and spec["profile"] in EXACT_PROFILES and interval != START \
        and (not diverged or interval < diverged)


def open_game(params: dict, spec: dict, interval: int, start_leaf: bytes, end_leaf: bytes, height: int) -> Game:
    lo, hi = interval * spec["k"], (interval + 1) * spec["k"]
    game = Game(lo=lo, hi=hi, lo_hash=start_leaf, hi_hash=end_leaf, mid_hash=b"", move_by=0, serve_by=0)
    _next_turn(params, game, height)
    return game


def _next_turn(params: dict, game: Game, height: int) -> None:
    if game.narrowed:
        game.move_by, game.serve_by = 0, height + params["response_blocks"]
    else:
        game.move_by = height + params["move_blocks"]


def _game(shard: Shard, body: dict) -> tuple[Challenge, Game]:
    if type(body.get("challenger")) is not bytes or type(body.get("opened")) is not int:
        raise JobError("a game move names its challenge by challenger and opening height")
    ch = shard.challenge_opened(body["challenger"], body["opened"])
    if ch is None or ch.game is None:
        raise JobError("no bisection game is open on that challenge")
    return ch, ch.game


def process_midpoint(v: View, job: Job, shard: Shard, body: dict, sender: bytes, height: int) -> None:
    """The solver's move: its state hash at the midpoint of the disputed range."""
    ch, game = _game(shard, body)
    if sender != shard.solver:
        raise JobError("only the shard's solver posts midpoints")
    if not game.solver_to_move or height > game.move_by:
        raise JobError("it is not the solver's move in this game (or its deadline has passed)")
    if type(body.get("hash")) is not bytes or len(body["hash"]) != 32:
        raise JobError("a midpoint is a 32-byte checkpoint hash")
    game.mid_hash, game.moves = body["hash"], game.moves + 1
    game.move_by = height + get_params(v)["move_blocks"]
    job.log(height, "midpoint", sender, 0, f"step {game.mid} of [{game.lo}, {game.hi}]")


def process_answer(v: View, job: Job, shard: Shard, body: dict, sender: bytes, height: int) -> None:
    """The challenger's move: agree with the solver's midpoint (the fault lies after it) or not."""
    ch, game = _game(shard, body)
    if sender != ch.challenger:
        raise JobError("only the challenger answers in its game")
    if not game.mid_hash or height > game.move_by:
        raise JobError("there is no midpoint to answer (or the deadline has passed)")
    if type(body.get("agree")) is not bool:
        raise JobError("agree must be true or false")
    if body["agree"]:
        game.lo, game.lo_hash = game.mid, game.mid_hash
    else:
        game.hi, game.hi_hash = game.mid, game.mid_hash
    game.mid_hash, game.moves = b"", game.moves + 1
    _next_turn(get_params(v), game, height)
    said = "agree" if body["agree"] else "disagree"
    job.log(height, "answer", sender, 0, f"{said}: one step left for the referees, step {game.lo} -> {game.hi}"
            if game.narrowed else f"{said}: [{game.lo}, {game.hi}]")


def expire_moves(v: View, job: Job, index: int, height: int) -> None:
    """A party that let its move's deadline pass loses the game. A silent challenger loses its
    challenge. A silent solver loses the right to have one step judged: the referees recompute
    the whole interval instead, as in `tolerance`. Were its silence taken as the fault itself,
    a caught cheater could stop playing to spare the verifiers that attested its fault (nothing
    recomputed would blame them), and an honest solver that was offline would be slashed for
    work that was right."""
    shard = job.shards[index]
    for ch in list(shard.challenges):
        game = ch.game
        if game is None or game.narrowed or height <= game.move_by:
            continue
        if game.solver_to_move:
            ch.game = None
            job.log(height, "forfeit", shard.solver, 0, f"shard {index}: the solver missed its move; "
                    "the referees recompute the whole interval")
            continue
        job.log(height, "forfeit", ch.challenger, 0, f"shard {index}: the challenger missed its move")
        settle.challenge_rejected(v, job, index, ch, height)
