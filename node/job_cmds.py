"""`stepchain job submit|status|fetch|cancel`, `stepchain solver run`, `stepchain verifier run`."""
from __future__ import annotations

import logging
import tempfile
from pathlib import Path

from consensus.crypto import address_of, format_address
from consensus.jobs import budget, pool_fee

from .client import RpcError, make_tx
from .jobspec import SpecError, check_chain_rules, load as load_spec


def job_id(text: str) -> bytes:
    try:
        raw = bytes.fromhex(text)
    except ValueError:
        raw = b""
    if len(raw) != 32:
        raise SpecError(f"{text!r} is not a job id: expected 64 hex digits (as `job submit` printed)")
    return raw


def cmd_job_submit(args, client, unlock, emit) -> None:
    spec, blob = load_spec(args.spec)
    c = client(args)
    params = c.get("/params")
    check_chain_rules(spec, params["max_blob_bytes"])  # the sizes against this network's blob limit
    cost = budget(spec, params)
    fee = pool_fee(cost, params)
    key = unlock(args, args.sender)
    acct = c.account(format_address(address_of(key.pubkey)))
    if cost + fee + 1 > acct["balance"]:
        raise SpecError(f"the job budget {cost} (+ pool fee {fee}, + tx fee 1) exceeds the balance "
                        f"{acct['balance']} of {args.sender}")
    if spec["steps"] // spec["k"] < params["min_intervals"]:
        raise SpecError(f"steps / k is {spec['steps'] // spec['k']} intervals; this network needs at least "
                        f"{params['min_intervals']} (lower k or raise steps)")
    if blob is not None:
        c.put_blob(blob)
    tx = make_tx(key, c.status()["chain_id"], "submit_job", {"spec": spec}, acct["next_nonce"], 1)
    c.broadcast(tx)
    info = c.wait_for_tx(tx.hash.hex())
    emit(args, {"job": tx.hash.hex(), "height": info["height"], "budget": cost, "pool_fee": fee},
         f"job {tx.hash.hex()} submitted at height {info['height']}; budget {cost} escrowed, "
         f"pool fee {fee} paid")


def _shard_line(i: int, s: dict) -> str:
    line = f"  shard {i}: {s['status']:<10} solver {(s['solver'] or '-')[:16]}"
    if s["commit"]:
        line += f"  root {s['commit']['root'][:12]}"
    for sel in s["verifiers"]:
        line += f"  verifier {sel['verifier'][:10]} " + (f"attested {sel['intervals']}" if sel["attested"] else "checking")
    for ch in s["challenges"]:
        line += f"  CHALLENGED ({ch['kind']}) by {ch['challenger'][:10]} at {ch['interval']} votes {len(ch['votes'])}"
    return line


def cmd_job_status(args, client, emit) -> None:
    from . import jobview
    c = client(args)
    job = c.get(f"/job/{args.job}")
    job["curves"] = c.get(f"/job/{args.job}/curves")["curves"]
    spec = job["spec"]
    done_rounds = len(job["finals"])
    lines = [f"job {job['id']}  {job['status']}  rounds done {done_rounds}/{spec['rounds']}"
             f"  model {spec['model']}  escrow left {job['escrow']}"]
    if job["status"] == "active":
        lines += [_shard_line(i, s) for i, s in enumerate(job["shards"])]
    for curve in job["curves"]:
        checked = sum(p["verified"] for p in curve["points"])
        lines.append(f"  loss, round {curve['round']} shard {curve['shard']} (solver {(curve['solver'] or '-')[:16]}): "
                     f"{checked} of {len(curve['points'])} points verified (*), o: declared, not checked")
        lines += ["    " + row for row in jobview.plot(curve)]
    lines.append("  events:")
    lines += [f"    h{h:<6} {kind:<10} {(who or '')[:20]:<20} {amount:>12}  {note}"
              for h, kind, who, amount, note in job["events"]]
    emit(args, job, "\n".join(lines))


def cmd_job_fetch(args, client, emit) -> None:
    import torch
    from verifier import checkpoint, training
    from .workers.blobcache import BlobCache
    from .workers.common import JobContext, Unavailable
    c = client(args)
    job = c.job(args.job)
    if job.status.value != "done":
        raise SpecError(f"job {args.job[:16]} is {job.status.value} (round {job.round}): no final model")
    home = Path(args.out).resolve().parent
    with tempfile.TemporaryDirectory(dir=home, prefix=".stepchain-fetch-") as tmp:  # finals as files
        cache = BlobCache(c, tmp)
        ctx = JobContext(job, cache.fetch)
        try:
            _, holdout = ctx.data()
        except Unavailable as exc:
            raise RpcError(str(exc)) from None
        rounds = []
        for r, hashes in enumerate(job.finals):  # each round's model: the average of its verified finals
            state = _round_model(ctx, hashes)
            rounds.append({"round": r, "model_hash": checkpoint.digest(state).hex(),
                           "metric_ppm": training.evaluate(ctx.spec, state, holdout)})
            cache.release()
            for h in hashes:  # a round's finals are gigabytes for real models: one round on disk at a time
                (cache.dir / h.hex()).unlink(missing_ok=True)
    out = Path(args.out)
    spec, job_hex, last = ctx.spec, job.id.hex(), rounds[-1]
    torch.save({"job": job_hex, "model": spec.model, "model_args": spec.model_args,
                "state_dict": training.state_dict(spec, state), "checkpoint_id": last["model_hash"],
                "rounds": rounds}, out)
    table = "\n".join(f"  round {x['round']}: {x['metric_ppm'] / 10_000:6.2f}%  model {x['model_hash'][:16]}"
                      for x in rounds)
    emit(args, {"job": job_hex, "out": str(out), "model_hash": last["model_hash"], "metric": job.spec["metric"],
                "metric_ppm": last["metric_ppm"], "rounds": rounds},
         f"saved {out} (model checkpoint id {last['model_hash'][:16]}, from {len(job.finals[-1])} verified shards)\n"
         f"{job.spec['metric']} on held-out data after each round:\n{table}\n"
         f"{job.spec['metric']} on held-out data: {last['metric_ppm'] / 10_000:.2f}%")


def _round_model(ctx, hashes: list[bytes]):
    """The average of a round's finals, fetched and checked against the chain's ids."""
    from verifier import training
    finals = []
    for h in hashes:
        path = ctx.fetch(h)
        if path is None:
            raise RpcError(f"final checkpoint {h.hex()[:16]} is not available or does not match the chain")
        finals.append(path)
    return training.average_files(finals)  # one checkpoint in memory, whatever the shard count


def _worker_logging(log_format: str = "text") -> None:
    from . import logs
    logs.setup(log_format, "%(asctime)s %(name)s: %(message)s")


def _device(args, role: str) -> str:
    """`--device`: cuda where there is one (a `tolerance` job trains there; exact profiles
    always run on the CPU, verifier/training.resolve_device), else the CPU, said once."""
    if args.device == "cuda":
        import torch
        if not torch.cuda.is_available():
            logging.getLogger(f"stepchain.{role}").warning("CUDA is not available here: training on the CPU")
            return "cpu"
    return args.device


def cmd_solver_run(args, client, unlock, home_of) -> None:
    from .workers.solver import Solver
    _worker_logging(getattr(args, "log_format", "text"))
    args.device = _device(args, "solver")
    key = unlock(args, args.key)
    workdir = home_of(args).path / "solver" / format_address(key.address)
    Solver(client(args), key, workdir, device=args.device, cheat=args.cheat).run()


def cmd_verifier_run(args, client, unlock, home_of) -> None:
    from .workers.verifier import Verifier
    _worker_logging(getattr(args, "log_format", "text"))
    key = unlock(args, args.key)
    workdir = home_of(args).path / "verifier" / format_address(key.address)
    Verifier(client(args), key, workdir, whistleblower=args.whistleblower, lazy=args.lazy,
             extra_checks=args.check, device=_device(args, "verifier")).run()
