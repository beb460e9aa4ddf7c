"""The job txs: each handler checks its preconditions, then changes the job record."""
from __future__ import annotations

from .. import merkle
from ..ledger import Account, View, get_account, get_params, get_stake, get_valset, set_account
from ..runnable import check_runnable
from ..sampling import verifier_intervals
from . import bonds, game, reveal, settle
from .errors import JobError
from .lifecycle import move
from .records import (K_ACTIVE_JOBS, MANIFEST, START, Challenge, ChallengeKind, Commit, Job, JobStatus, Shard, ShardStatus,
                      k_escrow)
from .spec import budget, check_spec, n_intervals, pool_fee

MAX_OPEN_CHALLENGES = 8


def _shard(v: View, body: dict, *statuses: ShardStatus) -> tuple[Job, Shard]:
    """The job and shard a tx names, checked to be current and in one of `statuses`."""
    for name, kind in (("job", bytes), ("round", int), ("shard", int)):
        if type(body.get(name)) is not kind:
            raise JobError(f"{name} must be {kind.__name__}")
    job = Job.load(v, body["job"])
    if job.status != JobStatus.ACTIVE or body["round"] != job.round:
        raise JobError("that job round is not open")
    if not 0 <= body["shard"] < len(job.shards):
        raise JobError("no such shard")
    shard = job.shards[body["shard"]]
    if shard.status not in statuses:
        raise JobError(f"shard is {shard.status.value}, not {' or '.join(s.value for s in statuses)}")
    return job, shard


def _proof(body: dict, leaf: str, proof: str, index: int, commit: Commit) -> bytes:
    if type(body.get(leaf)) is not bytes or type(body.get(proof)) is not list \
            or not all(type(p) is bytes for p in body[proof]):
        raise JobError(f"{leaf} must be bytes and {proof} a list of hashes")
    if not merkle.verify_proof(commit.root, body[leaf], index, commit.leaves, body[proof]):
        raise JobError(f"{leaf} is not leaf {index} of the committed root")
    return body[leaf]


def process_register_secrets(v: View, tx, sender: bytes, height: int) -> None:
    """A solver or verifier commits to the hash chain its draws will come from."""
    if tx.body.get("role") not in bonds.ROLES:
        raise JobError(f"role must be one of {', '.join(bonds.ROLES)}")
    bonds.register(v, sender, tx.body["role"], tx.body["tip"], tx.body["length"])


def process_submit_job(v: View, tx, sender: bytes, height: int) -> None:
    spec = tx.body.get("spec")
    check_spec(spec)
    params = get_params(v)
    check_runnable(spec, params["max_blob_bytes"], JobError)
    if n_intervals(spec) < params["min_intervals"]:
        raise JobError(f"a job needs at least {params['min_intervals']} intervals (steps / k) per shard, "
                       "so that sampled verification is both cheap and sound")
    active = v.read(K_ACTIVE_JOBS, [])
    if len(active) >= params["max_active_jobs"]:
        raise JobError("too many active jobs; try later")
    cost = budget(spec, params)
    fee = pool_fee(cost, params)
    acct = get_account(v, sender)
    if acct.balance < cost + fee:
        raise JobError(f"insufficient funds for the job: balance {acct.balance}, budget {cost} + pool fee {fee}")
    set_account(v, sender, Account(acct.balance - cost - fee, acct.nonce))
    v.write(k_escrow(tx.hash), cost)
    bonds.add_pool(v, fee)
    Job(id=tx.hash, submitter=sender, spec=spec, status=JobStatus.ACTIVE, round=0, submitted_at=height,
        shards=[Shard() for _ in range(spec["shards"])], finals=[],
        events=[[height, "submitted", sender, cost, "budget escrowed"],
                [height, "pool fee", sender, fee, "to the jackpot pool, not refunded"]], jackpots_left=fee).save(v)
    v.write(K_ACTIVE_JOBS, sorted(active + [tx.hash]))


def process_commit_shard(v: View, tx, sender: bytes, height: int) -> None:
    body = tx.body
    job, shard = _shard(v, body, ShardStatus.ASSIGNED)
    if shard.solver != sender:
        raise JobError("this shard is not assigned to you")
    if height > shard.deadline:
        raise JobError("the commit deadline has passed")
    leaves = n_intervals(job.spec) + 1
    if body.get("leaves") != leaves or type(body.get("root")) is not bytes or len(body["root"]) != 32:
        raise JobError(f"a commit needs a 32-byte root over exactly {leaves} leaves")
    if type(body.get("manifest")) is not bytes or len(body["manifest"]) != 32:
        raise JobError("a commit names its manifest blob (the list of leaf hashes) by a 32-byte hash")
    diverged = body.get("diverged_leaf")
    if type(diverged) is not int or not (diverged == 0 or 1 <= diverged < leaves):
        raise JobError(f"diverged_leaf must be 0 (all leaves finite) or the first non-finite leaf, 1..{leaves - 1}")
    if len(body.get("losses", ())) != leaves - 1:
        raise JobError(f"a commit declares the mean loss of each of its {leaves - 1} intervals")
    commit = Commit(root=body["root"], leaves=leaves, height=height, manifest=body["manifest"], start=b"",
                    final=b"", diverged_leaf=diverged, losses=list(body["losses"]))
    commit.start = _proof(body, "start", "start_proof", 0, commit)
    commit.final = _proof(body, "final", "final_proof", leaves - 1, commit)
    shard.commit = commit
    move(shard, "commit")
    note = f"shard {body['shard']} root {body['root'].hex()[:16]}"
    job.log(height, "commit", sender, 0, note + (f", diverged at leaf {diverged}" if diverged else ""))
    job.save(v)


def process_decline(v: View, tx, sender: bytes, height: int) -> None:
    """A solver that cannot run its shard (its dataset is not served, say) hands it back
    before its deadline: no slash, and it is not offered that shard again."""
    job, shard = _shard(v, tx.body, ShardStatus.ASSIGNED)
    if shard.solver != sender:
        raise JobError("this shard is not assigned to you")
    if height > shard.deadline:  # else a solver that missed its deadline dodges the slash
        raise JobError("the commit deadline has passed; a decline comes before it")
    settle.reopen_shard(v, shard, "decline")
    shard.declined.append(sender)
    job.log(height, "declined", sender, 0, f"shard {tx.body['shard']}")
    job.save(v)


def process_attest(v: View, tx, sender: bytes, height: int) -> None:
    """A drawn verifier vouches for its own intervals, revealing the secret that drew them."""
    job, shard = _shard(v, tx.body, ShardStatus.VERIFYING, ShardStatus.DISPUTED)
    sel = shard.selection(sender)
    if sel is None:
        raise JobError("you were not selected to verify this shard")
    if sel.attested or height > shard.window_end:
        raise JobError("already attested, or the verification window has closed")
    bonds.reveal(v, sender, "verifier", sel.secret_index, tx.body.get("secret"))
    sel.attested, sel.attested_at = True, height
    sel.intervals = verifier_intervals(tx.body["secret"], shard.commit.root, shard.beacon,
                                       n_intervals(job.spec), get_params(v)["samples_per_shard"],
                                       shard.commit.diverged_leaf or None)
    job.save(v)


def _challenged(body: dict, commit: Commit) -> tuple[ChallengeKind, int, bytes, bytes]:
    """(kind, interval or leaf, start leaf, end leaf) of a challenge body, proofs checked."""
    if "unavailable" in body:
        leaf, blob = body.get("leaf"), body.get("unavailable")
        if type(leaf) is not int or not MANIFEST <= leaf < commit.leaves:
            raise JobError(f"leaf must be {MANIFEST} (the manifest) or a leaf index below {commit.leaves}")
        if leaf == MANIFEST and blob != commit.manifest:
            raise JobError("the blob named is not the commit's manifest")
        if leaf != MANIFEST:
            _proof(body, "unavailable", "proof", leaf, commit)
        return ChallengeKind.AVAILABLE, leaf, blob, blob
    interval = body.get("interval")
    if type(interval) is not int or not START <= interval < commit.leaves - 1:
        raise JobError(f"interval must be between {START} (the start checkpoint) and {commit.leaves - 2}")
    if interval == START:
        return ChallengeKind.COMPUTE, START, commit.start, commit.start
    start = _proof(body, "start_leaf", "start_proof", interval, commit)
    return ChallengeKind.COMPUTE, interval, start, _proof(body, "end_leaf", "end_proof", interval + 1, commit)


def process_challenge(v: View, tx, sender: bytes, height: int) -> None:
    """Anyone with free verifier stake may challenge, while others' challenges are open too:
    a colluder's losing challenge cannot shield the shard from an honest one."""
    body = tx.body
    job, shard = _shard(v, body, ShardStatus.COMMITTED, ShardStatus.VERIFYING, ShardStatus.DISPUTED)
    params = get_params(v)
    if sender == shard.solver:
        raise JobError("a solver cannot challenge itself")
    if get_stake(v, sender, "verifier") < params["min_verifier_stake"]:
        raise JobError("challenging needs a verifier stake (it is at risk if you are wrong)")
    if shard.verifiers and height > shard.window_end:
        raise JobError("the verification window has closed")
    if shard.open_challenge(sender) is not None:
        raise JobError("you already have a challenge open on this shard")
    if len(shard.challenges) >= MAX_OPEN_CHALLENGES:
        raise JobError(f"{MAX_OPEN_CHALLENGES} challenges are already open on this shard; try when one closes")
    kind, interval, start, end = _challenged(body, shard.commit)
    revealed = kind == ChallengeKind.COMPUTE and bool(shard.revealed_at) and interval == shard.forced
    if body.get("unplanted") is True and not revealed:
        raise JobError("an unplanted challenge names the shard's revealed forced-error interval")
    if body.get("unplanted") is True:
        kind = ChallengeKind.UNPLANTED  # wrong it must be; the question is whether by the planted change
    elif revealed:  # (a challenge sent before the reveal landed must not turn into this claim)
        raise JobError(f"interval {interval} is this shard's revealed forced error; challenge it as unplanted "
                       "if it does not end on the planted change")
    fee = params["challenge_fee"] if kind == ChallengeKind.AVAILABLE else 0
    if fee:
        acct = get_account(v, sender)
        if acct.balance < fee:
            raise JobError(f"an availability challenge costs a fee of {fee}; balance {acct.balance}")
        set_account(v, sender, Account(acct.balance - fee, acct.nonce))
        v.write(k_escrow(job.id), v.read(k_escrow(job.id), 0) + fee)  # held with the job until decided
    bond = bonds.challenge_bond(params, job.spec)
    bonds.lock(v, sender, "verifier", bond)
    played = game.plays_game(job.spec, shard, kind, interval)
    shard.challenges.append(Challenge(
        challenger=sender, kind=kind, interval=interval, start_leaf=start, end_leaf=end, opened=height,
        respond_by=height + params["response_blocks"],
        deadline=height + params["dispute_blocks"] + (game.game_blocks(params, job.spec["k"]) if played else 0),
        bond=bond, fee=fee, game=game.open_game(params, job.spec, interval, start, end, height) if played else None))
    move(shard, "challenge")
    job.log(height, "challenge", sender, 0, f"shard {body['shard']} {kind.value} {interval}")
    job.save(v)


def fault_vote_allowed(v: View, shard: Shard, ch: Challenge, height: int) -> bool:
    """May a referee vote `fault` on this challenge now? Not before the solver's response
    deadline when it may still serve the blob named, or reveal that the interval carries its
    forced error (which the start, or an interval ending past a declared divergence, never does)."""
    if height > ch.respond_by or ch.kind == ChallengeKind.FORCED:
        return True
    if ch.kind == ChallengeKind.AVAILABLE:
        return False
    diverged = shard.commit.diverged_leaf
    may_be_forced = bool(get_params(v)["forced_error_ppm"]) and not shard.revealed_at and ch.interval != START \
        and (not diverged or ch.interval + 1 < diverged)
    return not may_be_forced


def process_dispute_vote(v: View, tx, sender: bytes, height: int) -> None:
    """A validator's referee verdict on one open challenge; 2/3 of the power decides it.

    Referees vote independently, so a vote can land after its challenge was decided or
    closed (another challenge proved the fault, the shard reopened). Such a late vote is
    valid and changes nothing: were it refused, its nonce would stay unused and hold up every
    later tx of that validator."""
    body = tx.body
    if type(body.get("fault")) is not bool:
        raise JobError("fault must be true or false")
    vals = {x.address: x.power for x in get_valset(v)}
    if sender not in vals:
        raise JobError("only validators referee disputes")
    job = Job.load(v, body["job"])  # an unknown job is an error, a closed one is not
    open_ = job.status == JobStatus.ACTIVE and body["round"] == job.round and 0 <= body["shard"] < len(job.shards)
    shard = job.shards[body["shard"]] if open_ else None
    ch = shard.open_challenge(body["challenger"]) if shard is not None else None
    if ch is None or ch.opened != body.get("opened") or height > ch.deadline:
        return  # late: that challenge (named by challenger and opening height) is closed
    if sender in (shard.solver, ch.challenger):
        raise JobError("a party to a dispute cannot referee it")
    if ch.game is not None and not ch.game.narrowed:
        raise JobError("the bisection game on this challenge is still being played")
    if body["fault"] and not fault_vote_allowed(v, shard, ch, height):
        raise JobError("a fault cannot be decided before the solver's response deadline (to serve the blob, "
                       "or reveal a forced error)")
    if any(a == sender for a, _ in ch.votes):
        raise JobError("already voted on this dispute")
    ch.votes.append([sender, body["fault"]])
    total = sum(vals.values())
    for side in (True, False):
        power = sum(vals.get(a, 0) for a, f in ch.votes if f == side)
        if 3 * power > 2 * total:
            settle.resolve_challenge(v, job, body["shard"], ch, side, height)
            break
    job.save(v)


def process_reveal(v: View, tx, sender: bytes, height: int) -> None:
    """The solver reveals the secret (with its Merkle proof) that decided its shard's forced error."""
    job, shard = _shard(v, tx.body, ShardStatus.COMMITTED, ShardStatus.VERIFYING, ShardStatus.DISPUTED,
                        ShardStatus.REVEALING)
    if shard.solver != sender:
        raise JobError("only the shard's solver reveals its secret")
    if shard.revealed_at:
        raise JobError("this shard's secret is already revealed")
    if shard.status == ShardStatus.REVEALING and height > shard.reveal_by:
        raise JobError("the reveal deadline has passed")
    reveal.process_reveal(v, job, tx.body["shard"], tx.body.get("secret"), tx.body.get("proof"), height)
    job.save(v)


def process_midpoint(v: View, tx, sender: bytes, height: int) -> None:
    job, shard = _shard(v, tx.body, ShardStatus.DISPUTED)
    game.process_midpoint(v, job, shard, tx.body, sender, height)
    job.save(v)


def process_answer(v: View, tx, sender: bytes, height: int) -> None:
    job, shard = _shard(v, tx.body, ShardStatus.DISPUTED)
    game.process_answer(v, job, shard, tx.body, sender, height)
    job.save(v)


def process_cancel_job(v: View, tx, sender: bytes, height: int) -> None:
    """A submitter whose job cannot make progress (no solver takes it, or no verifier is staked
    to check a commitment) gets its escrow back. Never while a solver is at work or a result is
    being checked. A commitment nobody could verify is paid for: the solver did the work, and
    otherwise a submitter could cancel to get a trained model for free."""
    if type(tx.body.get("job")) is not bytes:
        raise JobError("job must be bytes")
    job = Job.load(v, tx.body["job"])
    if job.submitter != sender:
        raise JobError("only the job's submitter can cancel it")
    if job.status != JobStatus.ACTIVE:
        raise JobError(f"the job is already {job.status.value}")
    busy = [i for i, s in enumerate(job.shards)
            if s.status not in (ShardStatus.UNASSIGNED, ShardStatus.PASSED) and not settle.awaits_verifiers(v, job, s, height)]
    if busy:
        raise JobError(f"shard(s) {', '.join(map(str, busy))} have a solver at work or a result pending; "
                       "cancel once none do")
    for index, shard in enumerate(job.shards):
        if settle.awaits_verifiers(v, job, shard, height):
            settle.pay(v, job, shard.solver, job.spec["reward_per_shard"], height,
                       f"solver, shard {index} committed but no verifier was staked to check it")
    settle.close_job(v, job, height, JobStatus.CANCELLED, "job cancelled by its submitter; unused escrow refunded")
    job.save(v)


TX_HANDLERS = {
    "register_secrets": process_register_secrets,
    "submit_job": process_submit_job,
    "cancel_job": process_cancel_job,
    "commit_shard": process_commit_shard,
    "decline": process_decline,
    "attest": process_attest,
    "challenge": process_challenge,
    "dispute_vote": process_dispute_vote,
    "reveal": process_reveal,
    "midpoint": process_midpoint,
    "answer": process_answer,
}
