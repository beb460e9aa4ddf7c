"""Outcomes: who is paid, who forfeits what, and what happens to the shard and the job."""
from __future__ import annotations

from ..ledger import View, add_balance, add_burned, get_params
from . import bonds, curves
from .lifecycle import move
from .records import (K_ACTIVE_JOBS, START, Challenge, ChallengeKind, Job, JobStatus, Shard,
                      ShardStatus, k_escrow, k_load)


def release_solver(v: View, shard: Shard) -> None:
    """The solver's slot and collateral are free again (nothing is forfeited here)."""
    if shard.solver is not None:
        v.write(k_load(shard.solver), max(0, v.read(k_load(shard.solver), 0) - 1) or None)
        bonds.unlock(v, shard.solver, "solver", shard.collateral)
        shard.collateral = 0


def release_verifiers(v: View, shard: Shard) -> None:
    for sel in shard.verifiers:
        bonds.unlock(v, sel.verifier, "verifier", sel.locked)
        sel.locked = 0


def reopen_shard(v: View, shard: Shard, rule: str) -> None:
    """The shard goes back to the pool; its solver will not get it again."""
    release_solver(v, shard)
    release_verifiers(v, shard)
    move(shard, rule)
    tried = shard.tried + ([shard.solver] if shard.solver else [])
    shard.__dict__.update(Shard(tried=tried, declined=shard.declined).__dict__)


def awaits_verifiers(v: View, job: Job, shard: Shard, height: int) -> bool:
    """Committed, past its draw, and no verifier a draw could pick exists now (not merely
    between a redraw and the next draw: a commit must never be paid unchecked for that)."""
    params = get_params(v)
    return shard.status == ShardStatus.COMMITTED and not shard.challenges \
        and height > shard.commit.height + params["draw_delay_blocks"] \
        and not bonds.verifier_pool(v, params, job.spec, shard)


# -- challenges ------------------------------------------------------------------------------

def _escrow_out(v: View, job: Job, amount: int) -> int:
    escrow = v.read(k_escrow(job.id), 0)
    amount = min(amount, escrow)
    v.write(k_escrow(job.id), escrow - amount)
    return amount


def _return_challenge(v: View, shard: Shard, ch: Challenge, job: Job | None) -> None:
    """Close a challenge with no loss to its challenger: bond unlocked, fee refunded."""
    bonds.unlock(v, ch.challenger, "verifier", ch.bond)
    if ch.fee and job is not None:
        add_balance(v, ch.challenger, _escrow_out(v, job, ch.fee))
    shard.challenges.remove(ch)


def _checked(sel, ch: Challenge) -> bool:
    """Did this verifier vouch for what the fault is in? Every verifier checks the start; a
    wrong interval only the verifiers that re-ran that very interval (one that re-ran a
    neighbour shares a leaf with it, but honestly checked a different step). An unserved blob
    says nothing about an attester: it may have fetched the blob while it was still served."""
    if not sel.attested or ch.kind in (ChallengeKind.AVAILABLE, ChallengeKind.UNPLANTED):
        return False  # (whether a forced interval was planted says nothing of its attesters)
    return ch.interval == START or ch.interval in sel.intervals


def fault_proven(v: View, job: Job, index: int, ch: Challenge, height: int) -> None:
    """The solver forfeits its collateral (a share to the challenger); verifiers that vouched
    for the faulty part forfeit theirs; everyone else is released and the shard reopens."""
    shard = job.shards[index]
    cut, share = bonds.forfeit(v, shard.solver, "solver", shard.collateral, ch.challenger)
    shard.collateral = 0
    what = "did not serve a blob in time" if ch.kind == ChallengeKind.AVAILABLE else "fraud proven"
    job.log(height, "slashed", shard.solver, cut, f"solver: {what} on shard {index}")
    job.log(height, "rewarded", ch.challenger, share, f"challenger proved shard {index} faulty")
    for sel in shard.verifiers:
        if _checked(sel, ch):
            c, _ = bonds.forfeit(v, sel.verifier, "verifier", sel.locked, None)
            sel.locked = 0
            job.log(height, "slashed", sel.verifier, c, f"verifier attested a faulty shard {index}")
    _return_challenge(v, shard, ch, job)
    for other in list(shard.challenges):
        _return_challenge(v, shard, other, job)
    reopen_shard(v, shard, "fault_proven")


def challenge_rejected(v: View, job: Job, index: int, ch: Challenge, height: int) -> None:
    """A wrong computation challenge forfeits the challenger's bond (a share to the solver).
    An availability challenge answered in time costs the challenger only its fee (burned),
    and the solver as much off its reward (left to the submitter): withholding until asked
    then never pays, and making a solver serve costs a griefer what it costs the solver."""
    shard = job.shards[index]
    if ch.kind == ChallengeKind.AVAILABLE:
        add_burned(v, _escrow_out(v, job, ch.fee))
        bonds.unlock(v, ch.challenger, "verifier", ch.bond)
        shard.late_fees += ch.fee
        job.log(height, "served", shard.solver, ch.fee, f"shard {index}: the blob was served when challenged; "
                "challenge fee burned, as much off the solver's reward")
    else:
        cut, share = bonds.forfeit(v, ch.challenger, "verifier", ch.bond, shard.solver)
        job.log(height, "slashed", ch.challenger, cut, f"challenger: wrong about shard {index}")
        job.log(height, "rewarded", shard.solver, share, f"solver cleared on shard {index}")
    shard.challenges.remove(ch)
    after_challenge(job, shard, height)


def challenge_expired(v: View, job: Job, index: int, ch: Challenge, height: int) -> None:
    """No 2/3 decision by the deadline: nobody is slashed and the challenge is refunded."""
    if ch.kind == ChallengeKind.FORCED:
        forced_check_decided(v, job, index, ch, None, height)
        return
    shard = job.shards[index]
    _return_challenge(v, shard, ch, job)
    job.log(height, "undecided", ch.challenger, 0, f"shard {index}: no 2/3 decision; challenge refunded")
    after_challenge(job, shard, height)


def after_challenge(job: Job, shard: Shard, height: int) -> None:
    """With no challenge left the shard is verified again, its window reopened in full."""
    if shard.challenges:
        return
    if shard.verifiers:
        move(shard, "cleared")
        shard.window_end = max(shard.window_end, height + job.spec["verify_blocks"])
    else:
        move(shard, "cleared_before_draw")


def resolve_challenge(v: View, job: Job, index: int, ch: Challenge, fault: bool, height: int) -> None:
    if ch.kind == ChallengeKind.FORCED:
        forced_check_decided(v, job, index, ch, fault, height)
        return
    (fault_proven if fault else challenge_rejected)(v, job, index, ch, height)


# -- payouts and the end of a job ------------------------------------------------------------

def pay(v: View, job: Job, to: bytes, amount: int, height: int, note: str) -> None:
    amount = _escrow_out(v, job, amount)
    if amount:
        add_balance(v, to, amount)
        job.log(height, "paid", to, amount, note)


def close_window(v: View, job: Job, index: int, height: int) -> None:
    """The window closed with no challenge open. A shard passes only if some drawn verifier
    vouched for it, and once its solver revealed its forced-error secret (it may have already,
    answering a challenge of that interval); with no attestation, the silent verifiers are
    released unpaid and never drawn for this commit again, and new verifiers are drawn: a
    shard is never paid unchecked."""
    shard = job.shards[index]
    if any(sel.attested for sel in shard.verifiers):
        if not get_params(v)["forced_error_ppm"]:  # no forced errors: nothing to reveal
            settle_shard(v, job, index, height)
            return
        move(shard, "await_reveal")
        shard.reveal_by = height + get_params(v)["response_blocks"]
        if shard.revealed_at:  # revealed already, answering a challenge of its forced interval
            settle_revealed(v, job, index, height)
        return
    release_verifiers(v, shard)
    shard.silent += [sel.verifier for sel in shard.verifiers]
    shard.verifiers, shard.beacon = [], b""
    move(shard, "redraw")
    job.log(height, "redraw", None, 0, f"shard {index}: no drawn verifier attested; drawing new ones")


def lazy(shard: Shard, sel) -> bool:
    """Did this verifier attest the shard's forced error, before it was revealed? It vouched
    for an interval that is wrong by construction, so it cannot have computed it. One that
    attests after the reveal is not blamed: an honest but slower verifier does just that."""
    return bool(shard.revealed_at) and shard.forced >= 0 and sel.attested and shard.forced in sel.intervals \
        and sel.attested_at < shard.revealed_at


def settle_shard(v: View, job: Job, index: int, height: int, pay_solver: bool = True) -> None:
    """Slash the verifiers that attested the forced error (their collateral funds the jackpot
    pool); pay the solver (less late fees, which are burned: were they refunded, a submitter
    could challenge a served blob and get the work for free) and the other attesting verifiers
    per interval, from this shard's own verification allowance only: a shard that checks more
    intervals (a declared divergence) can never eat what another shard's workers are owed."""
    shard, spec, params = job.shards[index], job.spec, get_params(v)
    for sel in shard.verifiers:
        if lazy(shard, sel):
            cut = bonds.forfeit_to_pool(v, sel.verifier, "verifier", sel.locked)
            sel.locked = 0
            job.log(height, "slashed", sel.verifier, cut,
                    f"verifier attested the forced error in interval {shard.forced} of shard {index} without computing it")
    if pay_solver:
        cut = min(shard.late_fees, spec["reward_per_shard"])
        add_burned(v, _escrow_out(v, job, cut))
        pay(v, job, shard.solver, spec["reward_per_shard"] - cut, height, f"solver, shard {index} passed")
    allowance = spec["verification_fee"] * (params["samples_per_shard"] + 1) * params["verifiers_per_shard"]
    claims = [(sel.verifier, spec["verification_fee"] * len(sel.intervals)) for sel in shard.verifiers
              if sel.attested and not lazy(shard, sel)]
    total = sum(fee for _, fee in claims)
    for verifier, fee in claims:  # over the allowance, every claim shrinks in proportion
        pay(v, job, verifier, fee if total <= allowance else fee * allowance // total, height,
            f"verifier, shard {index}")
    release_solver(v, shard)
    release_verifiers(v, shard)
    move(shard, "settle")


# -- forced errors: the check before lazy attesters are slashed --------------------------------

def settle_revealed(v: View, job: Job, index: int, height: int) -> None:
    """A revealed shard awaiting settlement: paid at once, unless some verifier attested its
    forced interval before the reveal; then the referees first check that it ends on exactly
    the planted change."""
    shard = job.shards[index]
    if not any(lazy(shard, sel) for sel in shard.verifiers):
        settle_shard(v, job, index, height)
        return
    params = get_params(v)
    shard.challenges.append(Challenge(
        challenger=shard.solver, kind=ChallengeKind.FORCED, interval=shard.forced, start_leaf=b"", end_leaf=b"",
        opened=height, respond_by=height, deadline=height + params["dispute_blocks"], bond=0, fee=0))
    job.log(height, "check", None, 0, f"shard {index}: verifiers attested forced interval {shard.forced}; "
            "the referees check that it ends on the planted change")


def forced_check_decided(v: View, job: Job, index: int, ch: Challenge, planted: bool | None, height: int) -> None:
    """The referees' answer on a FORCED check (None: no 2/3 by its deadline). Planted: the
    attesters of it lose their collateral and the shard is paid. Not the planted change (the
    honest end, which would have slashed honest attesters, or a model of the solver's choosing,
    which must never reach the next round): the solver forfeits its collateral and the shard
    is trained again, the attesters released."""
    shard = job.shards[index]
    shard.challenges.remove(ch)
    if planted:
        settle_shard(v, job, index, height)
        return
    forced = shard.forced
    shard.forced = -1   # not shown to be the planted change: nobody is blamed for attesting it
    if planted is None:
        job.log(height, "undecided", None, 0, f"shard {index}: no 2/3 decision on forced interval {forced}")
        settle_shard(v, job, index, height)
        return
    cut, _ = bonds.forfeit(v, shard.solver, "solver", shard.collateral, None)
    shard.collateral = 0
    job.log(height, "slashed", shard.solver, cut, f"solver revealed interval {forced} of shard {index} as its forced "
            "error, but it does not end on the planted change; the shard is trained again")
    reopen_shard(v, shard, "unplanted")


def finish_round(v: View, job: Job, height: int) -> None:
    curves.record_round(v, job)
    diverged = [(i, s.commit.diverged_leaf) for i, s in enumerate(job.shards) if s.commit.diverged_leaf]
    if diverged:
        i, leaf = diverged[0]
        close_job(v, job, height, JobStatus.DIVERGED,
                  f"training diverged: shard {i} of round {job.round} is not finite from step "
                  f"{leaf * job.spec['k']} (leaf {leaf}) on; the learning rate may be too high; "
                  "unused escrow refunded")
        return
    job.finals.append([s.commit.final for s in job.shards])
    if job.round + 1 < job.spec["rounds"]:
        job.round += 1
        job.shards = [Shard() for _ in job.shards]
        job.log(height, "round", None, 0, f"round {job.round} opens")
        return
    close_job(v, job, height, JobStatus.DONE, "job complete; unused escrow refunded")


def close_job(v: View, job: Job, height: int, status: JobStatus, note: str) -> None:
    """The job leaves the active list, every lock it holds is released, and what is left of
    its escrow goes back to the submitter."""
    for shard in job.shards:
        if shard.status != ShardStatus.PASSED:
            release_solver(v, shard)
            release_verifiers(v, shard)
            for ch in list(shard.challenges):
                _return_challenge(v, shard, ch, job)
    job.status = status
    refund = v.read(k_escrow(job.id), 0)
    v.write(k_escrow(job.id), None)
    add_balance(v, job.submitter, refund)
    job.log(height, status.value, job.submitter, refund, note)
    v.write(K_ACTIVE_JOBS, [j for j in v.read(K_ACTIVE_JOBS, []) if j != job.id] or None)
