"""On-chain life of a training job: escrow, assignment, commits, verification, disputes, payouts.

The chain never runs torch. It records what solvers commit (a Merkle root over checkpoint
hashes every k steps), draws verifiers and intervals from the beacon of the block after
each commit, collects attestations and challenges, counts validators' referee votes, and
moves tokens: escrow to solvers and verifiers, slashes to winners and the burn.

Shard status: unassigned → assigned → committed → verifying → passed, with
verifying → disputed → (fault: unassigned again | no fault: verifying) and
assigned → unassigned when the solver misses its deadline.
Job status: active → done (last round passed) or active → cancelled (by its submitter,
only while no shard has a solver at work or a result being checked).
"""
from __future__ import annotations

from . import codec, merkle, staking
from .ledger import (Account, View, add_balance, add_burned, get_account, get_params, get_stake,
                     get_valset, set_account)
from .args import check_args
from .registry import GENERATOR_SCHEMAS, GENERATORS, MODEL_SCHEMAS, MODELS
from .sampling import sample_intervals, weighted_sample

METRICS = ("accuracy",)
PROFILES = ("cpu-f32-1thread", "cpu-f64", "tolerance")
OPTIMIZERS = ("sgd", "momentum", "adam")
START = -1  # the challenge 'interval' that disputes a shard's first checkpoint
LIMITS = {"shards": 16, "rounds": 10, "steps": 100_000, "batch_size": 4096, "leaves": 257,
          "deadline_blocks": 10_000}
MAX_EVENTS = 200


class JobError(ValueError):
    """A job tx that breaks a rule; raised before anything is written (a TxError)."""


def k_job(job_id: bytes) -> bytes: return b"job/" + job_id
def k_escrow(job_id: bytes) -> bytes: return b"escrow/" + job_id
def k_load(addr: bytes) -> bytes: return b"load/" + addr


K_ACTIVE_JOBS = b"jobs_active"


# -- the spec --------------------------------------------------------------------------------

SPEC_INTS = ("batch_size", "shards", "rounds", "steps", "k", "lr_ppm", "seed", "tolerance_ppm",
             "holdout_ppm", "reward_per_shard", "verification_fee", "commit_blocks", "verify_blocks")


def check_spec(spec: dict) -> None:
    """Structural rules the chain can check without torch (the CLI checks the rest first).

    Model and generator arguments are checked against the shared registry's schemas: a spec
    holds exactly what some built-in model and dataset take, nothing free-form."""
    want = set(SPEC_INTS) | {"model", "model_args", "data", "optimizer", "profile", "metric"}
    if type(spec) is not dict or set(spec) != want:
        raise JobError(f"job spec must have exactly the fields: {', '.join(sorted(want))}")
    for name in SPEC_INTS:
        if type(spec[name]) is not int or not 0 <= spec[name] < 2**63:
            raise JobError(f"spec.{name} must be a non-negative integer below 2^63")
    for name, allowed in (("model", MODELS), ("profile", PROFILES), ("optimizer", OPTIMIZERS),
                          ("metric", METRICS)):
        if spec[name] not in allowed:
            raise JobError(f"spec.{name} must be one of {', '.join(allowed)}")
    check_args(f"spec.model_args of {spec['model']}", spec["model_args"], MODEL_SCHEMAS[spec["model"]], JobError)
    _check_data(spec["data"])
    for name in ("shards", "rounds", "steps", "batch_size"):
        if not 1 <= spec[name] <= LIMITS[name]:
            raise JobError(f"spec.{name} must be between 1 and {LIMITS[name]}")
    if spec["k"] < 1 or spec["steps"] % spec["k"] or spec["steps"] // spec["k"] + 1 > LIMITS["leaves"]:
        raise JobError(f"spec.k must divide steps, with at most {LIMITS['leaves'] - 1} intervals")
    for name in ("commit_blocks", "verify_blocks"):
        if not 1 <= spec[name] <= LIMITS["deadline_blocks"]:
            raise JobError(f"spec.{name} must be between 1 and {LIMITS['deadline_blocks']}")
    if not 0 < spec["lr_ppm"] <= 10_000_000 or spec["holdout_ppm"] >= 1_000_000:
        raise JobError("spec.lr_ppm must be in (0, 10^7] and holdout_ppm below 10^6")


def _check_data(data) -> None:
    """A dataset is an uploaded blob {blob, size} or a built-in generator {generator, args, seed}."""
    if type(data) is dict and set(data) == {"blob", "size"}:
        if type(data["blob"]) is not bytes or len(data["blob"]) != 32:
            raise JobError("spec.data.blob must be a 32-byte hash")
        if type(data["size"]) is not int or not 0 < data["size"] < 2**63:
            raise JobError("spec.data.size must be a positive integer")
        return
    if type(data) is not dict or set(data) != {"generator", "args", "seed"}:
        raise JobError("spec.data must be {blob, size} or {generator, args, seed}")
    if data["generator"] not in GENERATORS:
        raise JobError(f"spec.data.generator must be one of {', '.join(GENERATORS)}")
    check_args(f"spec.data.args of {data['generator']}", data["args"], GENERATOR_SCHEMAS[data["generator"]],
               JobError)
    if type(data["seed"]) is not int or not 0 <= data["seed"] < 2**63:
        raise JobError("spec.data.seed must be an integer in [0, 2^63)")


def budget(spec: dict, params: dict) -> int:
    """Everything the job can ever pay out; escrowed up front, the rest refunded at the end."""
    per_shard = spec["reward_per_shard"] + spec["verification_fee"] * (params["samples_per_shard"] + 1) \
        * params["verifiers_per_shard"]
    return per_shard * spec["shards"] * spec["rounds"]


def n_intervals(spec: dict) -> int:
    return spec["steps"] // spec["k"]


# -- records ---------------------------------------------------------------------------------

def new_shard() -> dict:
    return {"solver": None, "status": "unassigned", "assigned_at": 0, "deadline": 0, "commit": None,
            "verifiers": [], "intervals": [], "window_end": 0, "attested": [], "challenge": None, "tried": []}


def get_job(v: View, job_id: bytes) -> dict:
    job = v.read(k_job(job_id))
    if job is None:
        raise JobError(f"no job {job_id.hex()}")
    return job


def put_job(v: View, job: dict) -> None:
    v.write(k_job(job["id"]), job)


def log_event(job: dict, height: int, kind: str, who: bytes | None, amount: int, note: str) -> None:
    job["events"] = (job["events"] + [[height, kind, who, amount, note]])[-MAX_EVENTS:]




def _shard(v: View, body: dict, status: str | tuple) -> tuple[dict, dict]:
    """The job and shard a tx names, checked to be current and in the expected status."""
    for name, kind in (("job", bytes), ("round", int), ("shard", int)):
        if type(body.get(name)) is not kind:
            raise JobError(f"{name} must be {kind.__name__}")
    job = get_job(v, body["job"])
    if job["status"] != "active" or body["round"] != job["round"]:
        raise JobError("that job round is not open")
    if not 0 <= body["shard"] < len(job["shards"]):
        raise JobError("no such shard")
    shard = job["shards"][body["shard"]]
    statuses = (status,) if isinstance(status, str) else status
    if shard["status"] not in statuses:
        raise JobError(f"shard is {shard['status']}, not {' or '.join(statuses)}")
    return job, shard


def _proof(body: dict, leaf: str, proof: str, index: int, commit: dict) -> bytes:
    if type(body.get(leaf)) is not bytes or type(body.get(proof)) is not list \
            or not all(type(p) is bytes for p in body[proof]):
        raise JobError(f"{leaf} must be bytes and {proof} a list of hashes")
    if not merkle.verify_proof(commit["root"], body[leaf], index, commit["leaves"], body[proof]):
        raise JobError(f"{leaf} is not leaf {index} of the committed root")
    return body[leaf]


# -- transactions ----------------------------------------------------------------------------

def process_submit_job(v: View, tx, sender: bytes, height: int) -> None:
    spec = tx.body.get("spec")
    check_spec(spec)
    params = get_params(v)
    active = v.read(K_ACTIVE_JOBS, [])
    if len(active) >= params["max_active_jobs"]:
        raise JobError("too many active jobs; try later")
    cost = budget(spec, params)
    acct = get_account(v, sender)
    if acct.balance < cost:
        raise JobError(f"insufficient funds for the job budget: balance {acct.balance}, budget {cost}")
    set_account(v, sender, Account(acct.balance - cost, acct.nonce))
    job_id = tx.hash
    v.write(k_escrow(job_id), cost)
    put_job(v, {"id": job_id, "submitter": sender, "spec": spec, "status": "active", "round": 0,
                "submitted_at": height, "shards": [new_shard() for _ in range(spec["shards"])],
                "finals": [], "events": [[height, "submitted", sender, cost, "budget escrowed"]]})
    v.write(K_ACTIVE_JOBS, sorted(active + [job_id]))


def process_commit_shard(v: View, tx, sender: bytes, height: int) -> None:
    body = tx.body
    job, shard = _shard(v, body, "assigned")
    if shard["solver"] != sender:
        raise JobError("this shard is not assigned to you")
    if height > shard["deadline"]:
        raise JobError("the commit deadline has passed")
    if get_stake(v, sender, "solver") < get_params(v)["min_solver_stake"]:
        raise JobError("a commit needs the solver stake that answers for it")
    leaves = n_intervals(job["spec"]) + 1
    if body.get("leaves") != leaves or type(body.get("root")) is not bytes or len(body["root"]) != 32:
        raise JobError(f"a commit needs a 32-byte root over exactly {leaves} leaves")
    if type(body.get("manifest")) is not bytes or len(body["manifest"]) != 32:
        raise JobError("a commit names its manifest blob (the list of leaf hashes) by a 32-byte hash")
    commit = {"root": body["root"], "leaves": leaves, "height": height, "manifest": body["manifest"]}
    commit["start"] = _proof(body, "start", "start_proof", 0, commit)
    commit["final"] = _proof(body, "final", "final_proof", leaves - 1, commit)
    shard.update(status="committed", commit=commit)
    log_event(job, height, "commit", sender, 0, f"shard {body['shard']} root {body['root'].hex()[:16]}")
    put_job(v, job)


def process_attest(v: View, tx, sender: bytes, height: int) -> None:
    job, shard = _shard(v, tx.body, "verifying")
    if sender not in shard["verifiers"]:
        raise JobError("you were not selected to verify this shard")
    if sender in shard["attested"] or height > shard["window_end"]:
        raise JobError("already attested, or the verification window has closed")
    shard["attested"].append(sender)
    put_job(v, job)


def process_challenge(v: View, tx, sender: bytes, height: int) -> None:
    body = tx.body
    # interval -1 disputes the start checkpoint, which the commit itself proved: no leaves
    job, shard = _shard(v, body, ("committed", "verifying"))
    params = get_params(v)
    if sender == shard["solver"]:
        raise JobError("a solver cannot challenge itself")
    if get_stake(v, sender, "verifier") < params["min_verifier_stake"]:
        raise JobError("challenging needs a verifier stake (it is at risk if you are wrong)")
    if shard["status"] == "verifying" and height > shard["window_end"]:
        raise JobError("the verification window has closed")
    commit, interval = shard["commit"], body.get("interval")
    if type(interval) is not int or not START <= interval < commit["leaves"] - 1:
        raise JobError(f"interval must be between {START} (the start checkpoint) and {commit['leaves'] - 2}")
    if interval == START:  # the first checkpoint is wrong, or the solver does not serve its blobs
        start = end = commit["start"]
    else:
        start = _proof(body, "start_leaf", "start_proof", interval, commit)
        end = _proof(body, "end_leaf", "end_proof", interval + 1, commit)
    shard["challenge"] = {"challenger": sender, "interval": interval, "start_leaf": start, "end_leaf": end,
                          "opened": height, "deadline": height + params["dispute_blocks"], "votes": []}
    shard["status"] = "disputed"
    log_event(job, height, "challenge", sender, 0, f"shard {body['shard']} interval {interval}")
    put_job(v, job)


def process_dispute_vote(v: View, tx, sender: bytes, height: int) -> None:
    job, shard = _shard(v, tx.body, "disputed")
    if type(tx.body.get("fault")) is not bool:
        raise JobError("fault must be true or false")
    vals = {x.address: x.power for x in get_valset(v)}
    if sender not in vals:
        raise JobError("only validators referee disputes")
    if height > shard["challenge"]["deadline"]:
        raise JobError("the dispute's voting deadline has passed")
    if sender in (shard["solver"], shard["challenge"]["challenger"]):
        raise JobError("a party to a dispute cannot referee it")
    votes = shard["challenge"]["votes"]
    if any(a == sender for a, _ in votes):
        raise JobError("already voted on this dispute")
    votes.append([sender, tx.body["fault"]])
    total = sum(vals.values())
    for side in (True, False):
        power = sum(vals.get(a, 0) for a, f in votes if f == side)
        if 3 * power > 2 * total:
            resolve_dispute(v, job, tx.body["shard"], side, height)
            break
    put_job(v, job)


def awaits_verifiers(shard: dict, height: int) -> bool:
    """Committed, and at least one draw of verifiers has already found none staked."""
    return shard["status"] == "committed" and height > shard["commit"]["height"] + 1


def process_cancel_job(v: View, tx, sender: bytes, height: int) -> None:
    """A submitter whose job cannot make progress (no solver takes it, or no verifier is staked
    to check a commitment) gets its escrow back. Never while a solver is at work or a result is
    being checked. A commitment nobody could verify is paid for: the solver did the work, and
    otherwise a submitter could cancel to get a trained model for free."""
    if type(tx.body.get("job")) is not bytes:
        raise JobError("job must be bytes")
    job = get_job(v, tx.body["job"])
    if job["submitter"] != sender:
        raise JobError("only the job's submitter can cancel it")
    if job["status"] != "active":
        raise JobError(f"the job is already {job['status']}")
    busy = [i for i, s in enumerate(job["shards"])
            if s["status"] not in ("unassigned", "passed") and not awaits_verifiers(s, height)]
    if busy:
        raise JobError(f"shard(s) {', '.join(map(str, busy))} have a solver at work or a result pending; "
                       "cancel once none do")
    for index, shard in enumerate(job["shards"]):
        if awaits_verifiers(shard, height):
            pay(v, job, shard["solver"], job["spec"]["reward_per_shard"], height,
                f"solver, shard {index} committed but no verifier was staked to check it")
            release_solver(v, shard)
    close_job(v, job, height, "cancelled", "job cancelled by its submitter; unused escrow refunded")
    put_job(v, job)


TX_HANDLERS = {
    "submit_job": process_submit_job,
    "cancel_job": process_cancel_job,
    "commit_shard": process_commit_shard,
    "attest": process_attest,
    "challenge": process_challenge,
    "dispute_vote": process_dispute_vote,
}


# -- outcomes --------------------------------------------------------------------------------

def slash_to(v: View, offender: bytes, role: str, ppm: int, winner: bytes | None) -> tuple[int, int]:
    """Slash `offender`; a share goes to `winner`, the rest stays burned. (cut, share)"""
    cut = staking.slash(v, offender, role, ppm)
    share = cut * get_params(v)["winner_share_ppm"] // staking.PPM if winner else 0
    if share:
        add_balance(v, winner, share)
        add_burned(v, -share)
    return cut, share


def release_solver(v: View, shard: dict) -> None:
    if shard["solver"] is not None:
        v.write(k_load(shard["solver"]), max(0, v.read(k_load(shard["solver"]), 0) - 1) or None)


def reopen_shard(v: View, shard: dict) -> None:
    """The shard goes back to the pool; its failed solver will not get it again."""
    release_solver(v, shard)
    tried = shard["tried"] + ([shard["solver"]] if shard["solver"] else [])
    shard.clear()
    shard.update(new_shard(), tried=tried)


def resolve_dispute(v: View, job: dict, index: int, fault: bool, height: int) -> None:
    shard = job["shards"][index]
    ch, params = shard["challenge"], get_params(v)
    if fault:
        cut, share = slash_to(v, shard["solver"], "solver", params["solver_slash_ppm"], ch["challenger"])
        log_event(job, height, "slashed", shard["solver"], cut, f"solver: fraud proven on shard {index}")
        log_event(job, height, "rewarded", ch["challenger"], share, f"challenger proved shard {index} faulty")
        for lazy in shard["attested"]:
            c, _ = slash_to(v, lazy, "verifier", params["verifier_slash_ppm"], None)
            log_event(job, height, "slashed", lazy, c, f"verifier attested a faulty shard {index}")
        reopen_shard(v, shard)
    else:
        cut, share = slash_to(v, ch["challenger"], "verifier", params["verifier_slash_ppm"], shard["solver"])
        log_event(job, height, "slashed", ch["challenger"], cut, f"challenger: wrong about shard {index}")
        log_event(job, height, "rewarded", shard["solver"], share, f"solver cleared on shard {index}")
        shard["challenge"] = None
        # challenged before verifiers were drawn: draw them now, the full window still applies
        shard["status"] = "verifying" if shard["verifiers"] else "committed"
        shard["window_end"] = max(shard["window_end"], height + 1)


def pay(v: View, job: dict, to: bytes, amount: int, height: int, note: str) -> None:
    escrow = v.read(k_escrow(job["id"]), 0)
    amount = min(amount, escrow)
    if amount:
        v.write(k_escrow(job["id"]), escrow - amount)
        add_balance(v, to, amount)
        log_event(job, height, "paid", to, amount, note)


def settle_shard(v: View, job: dict, index: int, height: int) -> None:
    shard, spec = job["shards"][index], job["spec"]
    pay(v, job, shard["solver"], spec["reward_per_shard"], height, f"solver, shard {index} passed")
    for verifier in shard["attested"]:
        pay(v, job, verifier, spec["verification_fee"] * (len(shard["intervals"]) + 1), height,
            f"verifier, shard {index}")
    release_solver(v, shard)
    shard["status"] = "passed"


def finish_round(v: View, job: dict, height: int) -> None:
    job["finals"].append([s["commit"]["final"] for s in job["shards"]])
    if job["round"] + 1 < job["spec"]["rounds"]:
        job["round"] += 1
        job["shards"] = [new_shard() for _ in job["shards"]]
        log_event(job, height, "round", None, 0, f"round {job['round']} opens")
        return
    close_job(v, job, height, "done", "job complete; unused escrow refunded")


def close_job(v: View, job: dict, height: int, status: str, note: str) -> None:
    """The job leaves the active list and what is left of its escrow goes back to the submitter."""
    job["status"] = status
    refund = v.read(k_escrow(job["id"]), 0)
    v.write(k_escrow(job["id"]), None)
    add_balance(v, job["submitter"], refund)
    log_event(job, height, status, job["submitter"], refund, note)
    v.write(K_ACTIVE_JOBS, [j for j in v.read(K_ACTIVE_JOBS, []) if j != job["id"]] or None)


# -- end of block: everything driven by height and the beacon --------------------------------

def assign_solver(v: View, job: dict, index: int, height: int, beacon: bytes) -> None:
    """Stake-weighted draw among solvers with free capacity, preferring ones without a shard
    of this job's round and never one that already failed this shard."""
    params, shard = get_params(v), job["shards"][index]
    busy = {s["solver"] for s in job["shards"] if s["solver"] is not None}
    free = [(a, w) for a, w in staking.candidates(v, "solver")
            if w >= params["min_solver_stake"] and a not in shard["tried"]
            and v.read(k_load(a), 0) < params["solver_capacity"]]
    pool = [(a, w) for a, w in free if a not in busy] or free
    chosen = weighted_sample(pool, 1, beacon, job["id"], job["round"], index, "solver", len(shard["tried"]))
    if not chosen:
        return
    solver = chosen[0]
    v.write(k_load(solver), v.read(k_load(solver), 0) + 1)
    shard.update(solver=solver, status="assigned", assigned_at=height,
                 deadline=height + job["spec"]["commit_blocks"])
    log_event(job, height, "assigned", solver, 0, f"shard {index}")


def select_verifiers(v: View, job: dict, index: int, height: int, beacon: bytes) -> None:
    """Drawn from the beacon of a block after the commit: the solver could not know them."""
    params, shard = get_params(v), job["shards"][index]
    pool = [(a, w) for a, w in staking.candidates(v, "verifier")
            if w >= params["min_verifier_stake"] and a != shard["solver"]]
    label = (job["id"], job["round"], index, shard["commit"]["root"])
    verifiers = weighted_sample(pool, params["verifiers_per_shard"], beacon, *label, "verifiers")
    if not verifiers:
        return  # wait for a verifier to stake
    # The last interval is always among them: its end is what the next round (or the final
    # model) is built from, so a forged final checkpoint must never slip through unsampled.
    last = n_intervals(job["spec"]) - 1
    drawn = sample_intervals(last, params["samples_per_shard"] - 1, beacon, *label, "intervals")
    intervals = sorted(drawn + [last])
    shard.update(status="verifying", verifiers=verifiers, intervals=intervals,
                 window_end=height + job["spec"]["verify_blocks"])


def expire_dispute(v: View, job: dict, index: int, height: int) -> None:
    """Referees ran out of time: the side with more voted power wins; a tie clears the solver."""
    vals = {x.address: x.power for x in get_valset(v)}
    votes = job["shards"][index]["challenge"]["votes"]
    fault = sum(vals.get(a, 0) for a, f in votes if f) > sum(vals.get(a, 0) for a, f in votes if not f)
    resolve_dispute(v, job, index, fault, height)


def step_shard(v: View, job: dict, index: int, height: int, beacon: bytes) -> None:
    shard = job["shards"][index]
    status = shard["status"]
    if status == "assigned" and height > shard["deadline"]:
        cut, _ = slash_to(v, shard["solver"], "solver", get_params(v)["missed_deadline_slash_ppm"], None)
        log_event(job, height, "slashed", shard["solver"], cut, f"solver missed the deadline of shard {index}")
        reopen_shard(v, shard)
        status = "unassigned"
    if status == "unassigned":
        assign_solver(v, job, index, height, beacon)
    elif status == "committed" and height > shard["commit"]["height"]:
        select_verifiers(v, job, index, height, beacon)
    elif status == "verifying" and height > shard["window_end"]:
        settle_shard(v, job, index, height)
    elif status == "disputed" and height > shard["challenge"]["deadline"]:
        expire_dispute(v, job, index, height)


def process_jobs(v: View, height: int, beacon: bytes) -> None:
    for job_id in v.read(K_ACTIVE_JOBS, []):
        job = get_job(v, job_id)
        before = v.get(k_job(job_id))
        for index in range(len(job["shards"])):
            step_shard(v, job, index, height, beacon)
        if all(s["status"] == "passed" for s in job["shards"]):
            finish_round(v, job, height)
        if codec.encode(job) != before:
            put_job(v, job)
