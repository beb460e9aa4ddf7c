"""The world the consensus.jobs tests run in, and the moves its people make.

Four validators (VAL proposes), three solvers, three verifiers, ALICE who pays for jobs and a
NEWCOMER who stakes nothing until a test says so, on an in-memory chain driven block by block
with real signed txs. The chain never sees a checkpoint here: leaves are fake 32-byte hashes in
a real Merkle tree.

`block` checks the token supply after every block: balances + stakes + unbonding + escrow +
burned always equals the genesis supply.
"""
from __future__ import annotations

import dataclasses

import pytest

from consensus import hashchain, jobs
from consensus.crypto import sha256
from consensus.genesis import DEFAULT_PARAMS
from consensus.ledger import get_params
from consensus.state import BlockError
from tests.chainfactory import ALICE, VAL, Chain, challenge_body, commit_body, fake_leaves, job_spec, key, make_tx
from tests.statechecks import burned  # noqa: F401  (part of this world's moves)

V2, V3, V4 = key(5), key(6), key(7)           # more validators, so that disputes need several votes
S1, S2, S3 = key(20), key(21), key(22)        # solvers
R1, R2, R3 = key(30), key(31), key(32)        # verifiers
NEWCOMER = key(50)                            # funded, stakes nothing until a test says so

VALIDATORS = ((VAL, 4_000), (V2, 3_000), (V3, 1_500), (V4, 1_500))  # total 10_000: 2/3+ is > 6_666
REFEREES = (VAL, V2)                          # 7_000 of 10_000: enough to decide a dispute
SOLVERS = (S1, S2, S3)
VERIFIERS = (R1, R2, R3)
STAKE = 10_000
EVERYONE = (VAL, V2, V3, V4, ALICE, S1, S2, S3, R1, R2, R3, NEWCOMER)
KEYS = {k.address: k for k in EVERYONE}
NAMES = {VAL.address: "VAL", V2.address: "V2", V3.address: "V3", V4.address: "V4", ALICE.address: "ALICE",
         S1.address: "S1", S2.address: "S2", S3.address: "S3", R1.address: "R1", R2.address: "R2",
         R3.address: "R3", NEWCOMER.address: "NEWCOMER"}


# -- a small world and the moves its people make ----------------------------------------------

def _with_amounts(items) -> list:
    return [(x, STAKE) if not isinstance(x, tuple) else x for x in items]


SECRET_LENGTH = 64
WITHOUT_FORCED_ERRORS = {"forced_error_ppm": 0, "pool_fee_ppm": 0, "attest_collateral_ppm": 300_000}
FORCED_ERRORS = {name: DEFAULT_PARAMS[name] for name in WITHOUT_FORCED_ERRORS}


def seed_of(k, role: str = "verifier") -> bytes:
    """The hash-chain seed a party of this world registered for a role (its secrets derive from it)."""
    return sha256(b"jobworld/seed" + k.address + (b"" if role == "verifier" else role.encode()))


def secret(k, index: int, role: str = "verifier") -> bytes:
    """Element `index` of k's verifier hash chain, or its solver secret number `index`."""
    if role == "verifier":
        return hashchain.element(seed_of(k), SECRET_LENGTH, index)
    return solver_secrets(k)[index - 1]


def solver_secrets(k) -> list[bytes]:
    return [sha256(seed_of(k, "solver") + i.to_bytes(4, "big")) for i in range(1, SECRET_LENGTH + 1)]


def register_secrets(c: Chain, *who, role: str = "verifier") -> None:
    from consensus.forced import secret_root
    tip = (lambda k: hashchain.tip(seed_of(k), SECRET_LENGTH)) if role == "verifier" \
        else (lambda k: secret_root(solver_secrets(k)))
    block(c, *(tx(c, k, "register_secrets", {"role": role, "tip": tip(k), "length": SECRET_LENGTH}) for k in who))


def world(solvers=SOLVERS, verifiers=VERIFIERS, validators=VALIDATORS, **params) -> Chain:
    """Four validators (VAL proposes), ALICE with 1_000_000 to pay for jobs, everyone else 1_000
    for fees; `solvers` and `verifiers` (keys, or (key, amount)) bonded in genesis, and the
    verifiers' hash chains registered in block 1, the solvers' in block 2. A `dispute_blocks` below the default
    response_blocks brings response_blocks below it (genesis requires it) unless given. No shard
    carries a forced error unless a test gives `**FORCED_ERRORS` (the genesis defaults): without
    them there is no pool fee either, and a drawn verifier locks what a challenger does."""
    for name, value in WITHOUT_FORCED_ERRORS.items():  # the tests of forced errors ask for them
        params.setdefault(name, value)
    if "dispute_blocks" in params:
        params.setdefault("response_blocks", min(10, params["dispute_blocks"] - 1))
    accounts = [(ALICE, 1_000_000)] + [(k, 1_000) for k in EVERYONE if k is not ALICE]
    extra = [(k, "solver", a) for k, a in _with_amounts(solvers)] \
        + [(k, "verifier", a) for k, a in _with_amounts(verifiers)]
    c = Chain.create(accounts=accounts, validators=validators, params=params or None, extra_stakes=extra)
    register_secrets(c, *(k for k, _ in _with_amounts(verifiers)))
    register_secrets(c, NEWCOMER, *(k for k, _ in _with_amounts(solvers)), role="solver")
    return c


def tx(c: Chain, k, kind: str, body: dict, nonce: int | None = None):
    return make_tx(k, kind, body, c.nonce(k) if nonce is None else nonce)


def block(c: Chain, *txs):
    """Apply a block in which every tx must be valid; the supply must be conserved after it."""
    res = c.block(list(txs))
    assert c.supply_ok(), f"token supply not conserved after block {c.height}"
    return res


def blocks(c: Chain, n: int) -> None:
    for _ in range(n):
        block(c)


def refused(c: Chain, k, kind: str, body: dict) -> str:
    """The reason the tx is refused; a refused tx leaves no trace (not even its fee) and makes a
    block that carries it invalid."""
    t = tx(c, k, kind, body)
    res = c.execute([t], skip_invalid=True)
    assert res.included == [] and len(res.rejected) == 1, "expected the tx to be refused"
    assert res.writes == c.execute([]).writes, "a refused tx must write nothing"
    with pytest.raises(BlockError):
        c.execute([t])
    return res.rejected[0][1]


def fork(c: Chain) -> Chain:
    """An independent copy of the chain (blocks applied to one do not reach the other)."""
    return dataclasses.replace(c, results=list(c.results))


def until(c: Chain, done, limit: int = 60) -> None:
    for _ in range(limit):
        if done():
            return
        block(c)
    assert done(), f"condition not reached within {limit} blocks"


def job(c: Chain, jid: bytes) -> dict:
    return c.view().read(jobs.k_job(jid))


def shard(c: Chain, jid: bytes, i: int = 0) -> dict:
    return job(c, jid)["shards"][i]


def escrow(c: Chain, jid: bytes):
    return c.view().read(jobs.k_escrow(jid))


def load(c: Chain, k) -> int:
    return c.view().read(jobs.k_load(k.address), 0)


def locked(c: Chain, k, role: str = "verifier") -> int:
    """Stake of k's `role` locked as collateral (solver shards, verifier selections, bonds)."""
    return jobs.locked(c.view(), k.address, role)


def solver_of(c: Chain, jid: bytes, i: int = 0):
    return KEYS[shard(c, jid, i)["solver"]]


def verifiers_of(c: Chain, jid: bytes, i: int = 0) -> list:
    return [KEYS[sel["verifier"]] for sel in shard(c, jid, i)["verifiers"]]


def shard_body(c: Chain, jid: bytes, i: int = 0) -> dict:
    """The job, current round and shard that every shard tx names."""
    return {"job": jid, "round": job(c, jid)["round"], "shard": i}


def selection(c: Chain, jid: bytes, i: int, k) -> dict:
    return next(s for s in shard(c, jid, i)["verifiers"] if s["verifier"] == k.address)


def attest_body(c: Chain, jid: bytes, i: int, k) -> dict:
    """What a drawn verifier sends: the shard, and the secret its selection reserved."""
    return dict(shard_body(c, jid, i), secret=secret(k, selection(c, jid, i, k)["secret_index"]))


def submit(c: Chain, **spec) -> bytes:
    t = tx(c, ALICE, "submit_job", {"spec": job_spec(**spec)})
    block(c, t)
    return t.hash


def leaves_for(c: Chain, jid: bytes, i: int = 0) -> list[bytes]:
    j = job(c, jid)
    tag = jid + bytes([j["round"], i]) + (j["shards"][i]["solver"] or b"")
    return fake_leaves(jobs.n_intervals(j["spec"]) + 1, tag)


def commit(c: Chain, jid: bytes, *indexes: int, **overrides) -> dict[int, list[bytes]]:
    """The assigned solvers of `indexes` (default: every shard) commit in one block; `overrides`
    change fields of every commit body (diverged_leaf, say)."""
    j = job(c, jid)
    indexes = indexes or tuple(range(len(j["shards"])))
    nonces, txs, leaves = {}, [], {}
    for i in indexes:
        solver = solver_of(c, jid, i)
        nonce = nonces.get(solver.address, c.nonce(solver))
        nonces[solver.address] = nonce + 1
        leaves[i] = leaves_for(c, jid, i)
        txs.append(tx(c, solver, "commit_shard", commit_body(jid, j["round"], i, leaves[i], **overrides), nonce))
    block(c, *txs)
    return leaves


def attest(c: Chain, jid: bytes, i: int, *who) -> None:
    """`who` (default: every selected verifier) attest shard i in one block."""
    who = who or tuple(verifiers_of(c, jid, i))
    block(c, *(tx(c, k, "attest", attest_body(c, jid, i, k)) for k in who))


def pass_round(c: Chain, jid: bytes) -> dict[int, list[bytes]]:
    """An honest round: every shard committed, attested by all its verifiers, and settled."""
    rnd = job(c, jid)["round"]
    until(c, lambda: all(s["status"] == "assigned" for s in job(c, jid)["shards"]))
    leaves = commit(c, jid)
    draw(c)
    for i in leaves:
        attest(c, jid, i)
    until(c, lambda: job(c, jid)["round"] != rnd or job(c, jid)["status"] == "done")
    return leaves


def decline(c: Chain, jid: bytes, i: int = 0) -> None:
    """The assigned solver of shard i hands it back."""
    block(c, tx(c, solver_of(c, jid, i), "decline", shard_body(c, jid, i)))


def challenges(c: Chain, jid: bytes, i: int = 0) -> list[dict]:
    """The open challenges of shard i, in the order they were opened."""
    return shard(c, jid, i)["challenges"]


def challenge(c: Chain, jid: bytes, k, interval: int, leaves: list[bytes] | None = None, i: int = 0,
              play: bool = True) -> None:
    """k opens a computation challenge of shard i's `interval` (-1: its start checkpoint). In an
    exact profile a bisection game opens; with `play` both sides play it at once down to one
    step (the solver posts made-up midpoints, the challenger agrees with each), so that the
    referees can vote."""
    block(c, tx(c, k, "challenge", challenge_body(jid, job(c, jid)["round"], i, interval, leaves)))
    if play:
        narrow(c, jid, k, i)


def open_game(c: Chain, jid: bytes, challenger, i: int = 0) -> dict | None:
    ch = next((x for x in challenges(c, jid, i) if x["challenger"] == challenger.address), None)
    return ch["game"] if ch is not None else None


def game_body(c: Chain, jid: bytes, challenger, i: int = 0, **move) -> dict:
    """A move in `challenger`'s game on shard i: hash=... (the solver's) or agree=... (the challenger's)."""
    ch = next(x for x in challenges(c, jid, i) if x["challenger"] == challenger.address)
    return dict(shard_body(c, jid, i), challenger=challenger.address, opened=ch["opened"], **move)


def narrow(c: Chain, jid: bytes, challenger, i: int = 0, agree: bool = True) -> None:
    """Play `challenger`'s game on shard i down to one step, if one is open."""
    for _ in range(64):
        game = open_game(c, jid, challenger, i)
        if game is None or game["hi"] - game["lo"] == 1:
            return
        if not game["mid_hash"]:
            mid = sha256(b"jobworld/midpoint" + game["lo_hash"] + game["hi_hash"])
            block(c, tx(c, solver_of(c, jid, i), "midpoint", game_body(c, jid, challenger, i, hash=mid)))
        block(c, tx(c, challenger, "answer", game_body(c, jid, challenger, i, agree=agree)))


def vote_body(c: Chain, jid: bytes, challenger, fault: bool, i: int = 0) -> dict:
    """A vote on `challenger`'s open challenge of shard i (named by its opening height; with
    none open, height 0)."""
    opened = next((ch["opened"] for ch in shard(c, jid, i)["challenges"] if ch["challenger"] == challenger.address), 0)
    return dict(shard_body(c, jid, i), challenger=challenger.address, opened=opened, fault=fault)


def vote(c: Chain, jid: bytes, challenger, fault: bool, *who, i: int = 0) -> None:
    """Validators `who` referee `challenger`'s open challenge of shard i, in one block."""
    block(c, *(tx(c, k, "dispute_vote", vote_body(c, jid, challenger, fault, i)) for k in who))


def draw(c: Chain) -> None:
    """Blocks until the verifiers of the last commit are drawn (draw_delay_blocks after it)."""
    for _ in range(get_params(c.view())["draw_delay_blocks"]):
        block(c)


def events(c: Chain, jid: bytes, kind: str) -> list:
    return [e for e in job(c, jid)["events"] if e[1] == kind]


# -- a shard under verification, for the challenge and dispute tests --------------------------

def verifying_world(**params):
    """One shard committed by its solver and drawn for verification; returns (chain, job id,
    leaves, solver, selected verifier, an unselected verifier who will challenge)."""
    c = world(**params)
    jid = submit(c, shards=1, verify_blocks=3)
    leaves = commit(c, jid)[0]
    draw(c)
    drawn = verifiers_of(c, jid)
    challenger = next(k for k in VERIFIERS if k not in drawn)
    selected = drawn[0]
    return c, jid, leaves, solver_of(c, jid), selected, challenger



# -- forced errors ------------------------------------------------------------------------------

def solver_secret(c: Chain, jid: bytes, i: int = 0) -> bytes:
    """The hash-chain element the assignment of shard i reserved from its solver."""
    return secret(solver_of(c, jid, i), shard(c, jid, i)["secret_index"], "solver")


def forced_of(c: Chain, jid: bytes, i: int = 0) -> int | None:
    """The interval shard i must carry a forced error in (what only its solver knows)."""
    from consensus.forced import forced_interval
    s, spec = shard(c, jid, i), job(c, jid)["spec"]
    diverged = s["commit"]["diverged_leaf"] if s["commit"] else 0
    return forced_interval(solver_secret(c, jid, i), s["assign_beacon"], jobs.n_intervals(spec),
                           get_params(c.view())["forced_error_ppm"], diverged)


def reveal_body(c: Chain, jid: bytes, i: int = 0, secret_: bytes | None = None) -> dict:
    """The solver's reveal of shard i: its secret and the Merkle proof under its registered root."""
    from consensus.forced import secret_proof
    index = shard(c, jid, i)["secret_index"]
    return dict(shard_body(c, jid, i), secret=solver_secret(c, jid, i) if secret_ is None else secret_,
                proof=secret_proof(solver_secrets(solver_of(c, jid, i)), index))


def reveal(c: Chain, jid: bytes, i: int = 0) -> None:
    block(c, tx(c, solver_of(c, jid, i), "reveal", reveal_body(c, jid, i)))


def pool(c: Chain) -> int:
    return c.view().read(jobs.K_POOL, 0)
