"""Forced errors on chain: the solver's reveal, the jackpot, and what a hidden secret costs.

Every assignment reserves the solver's next secret (a leaf under the Merkle root it
registered); with the assignment block's beacon it decides whether the shard carries a forced
error and in which interval (consensus/forced.py). The solver reveals the secret with its
proof (a `reveal` tx):

- while a challenge of the forced interval is open: the challenge was right about a planted
  fault, so nobody is slashed; the first challenger of that interval wins the jackpot, every
  challenger of it gets its bond back, and the shard is verified on as if it were honest;
- or after the window, when the shard awaits it (REVEALING): verifiers that attested the
  forced interval before it was revealed lose their collateral, and the shard is paid.

Nothing but a recomputation shows that the revealed interval ends on exactly the planted
change. So before any attester of it is slashed, the chain opens a FORCED check
(settle.settle_revealed, settle.forced_check_decided) of that
interval for the validators' referees (recomputed directly, like a `tolerance` dispute: this
only happens when someone attested a forced error, which no honest verifier does when the
error is planted). Planted: the attesters lose their collateral. Not planted (the honest end,
which would have slashed verifiers that computed honestly, or a model of the solver's
choosing): the solver forfeits its collateral and the shard is trained again. Undecided by
the deadline: nobody is slashed. During the window, a challenge of a revealed forced interval
(UNPLANTED) asks the same question.

A solver that hides its secret past `reveal_by` forfeits the shard's reward (left to the
submitter) and a small slash; its verifiers are paid. One challenged on its forced interval
that does not reveal is judged like any other fault: the end of that interval is wrong.
"""
from __future__ import annotations

from .. import staking
from ..forced import forced_interval
from ..ledger import View, add_balance, get_params
from . import bonds, settle
from .errors import JobError
from .records import ChallengeKind, Job, Shard, ShardStatus
from .spec import n_intervals


def forced_of(v: View, job: Job, shard: Shard, secret: bytes) -> int | None:
    return forced_interval(secret, shard.assign_beacon, n_intervals(job.spec), get_params(v)["forced_error_ppm"],
                           shard.commit.diverged_leaf)


def pay_jackpot(v: View, job: Job, to: bytes, index: int, height: int) -> None:
    """`jackpot` from the pool, never more than `jackpot_pool_ppm` of what it holds, nor more
    than what this job paid into it (less its earlier jackpots). The solver knows its forced
    interval from the start and could have a sybil challenge it; so a job's jackpots can at
    most hand back its own pool fee, never drain what other jobs paid in."""
    params = get_params(v)
    amount = min(params["jackpot"], bonds.pool(v) * params["jackpot_pool_ppm"] // staking.PPM, job.jackpots_left)
    if amount:
        bonds.add_pool(v, -amount)
        add_balance(v, to, amount)
        job.jackpots_left -= amount
    job.log(height, "jackpot", to, amount, f"first to challenge the forced error of shard {index}")


def answer_challenges(v: View, job: Job, index: int, forced: int, height: int) -> None:
    """Close every challenge of the forced interval with its bond returned; the first wins."""
    shard = job.shards[index]
    caught = sorted((ch for ch in shard.challenges if ch.kind == ChallengeKind.COMPUTE and ch.interval == forced),
                    key=lambda ch: ch.opened)  # stable: same-block challenges keep their tx order
    if not caught:
        raise JobError("before the window closes, a reveal only answers a challenge of the forced-error interval")
    pay_jackpot(v, job, caught[0].challenger, index, height)
    for ch in caught:
        bonds.unlock(v, ch.challenger, "verifier", ch.bond)
        shard.challenges.remove(ch)
        job.log(height, "forced", ch.challenger, 0, f"shard {index}: interval {forced} is a forced error; "
                "challenge closed, nobody slashed")
    settle.after_challenge(job, shard, height)


def process_reveal(v: View, job: Job, index: int, secret, proof, height: int) -> None:
    """The solver's secret for shard `index`: during the window it must answer a challenge of
    the forced interval it decides; after the window it settles the shard (or opens the check)."""
    shard = job.shards[index]
    bonds.reveal_solver_secret(v, shard.solver, shard.secret_index, secret, proof)
    forced = forced_of(v, job, shard, secret)
    awaited = shard.status == ShardStatus.REVEALING
    if not awaited:
        if forced is None:
            raise JobError("this shard carries no forced error: reveal its secret after the window")
        answer_challenges(v, job, index, forced, height)
    shard.forced, shard.revealed_at = -1 if forced is None else forced, height
    job.log(height, "revealed", shard.solver, 0, f"shard {index}: "
            + ("no forced error" if forced is None else f"forced error in interval {forced}"))
    if awaited:
        settle.settle_revealed(v, job, index, height)


def reveal_missed(v: View, job: Job, index: int, height: int) -> None:
    """The solver hid its secret past `reveal_by`: no reward, a small slash; verifiers paid."""
    shard = job.shards[index]
    cut = staking.slash(v, shard.solver, "solver", get_params(v)["missed_deadline_slash_ppm"])
    job.log(height, "slashed", shard.solver, cut, f"solver did not reveal its forced-error secret for shard {index}; "
            "reward forfeited")
    settle.settle_shard(v, job, index, height, pay_solver=False)
