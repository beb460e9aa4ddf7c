"""The ``stepchain`` command line: node home, node, wallet, transfers and staking.

Every user mistake ends in one line on stderr saying what was wrong and what to do, with
exit code 1 (2 for usage errors, from argparse); never a traceback.
"""
from __future__ import annotations

import argparse
import getpass
import json
import os
import sys

from consensus.crypto import PrivateKey, format_address, parse_address
from consensus.genesis import ROLES, GenesisError
from consensus.store import StoreError

from .client import Client, RpcError
from .home import DEFAULT_HOME, Home, HomeError
from .jobspec import SpecError
from .wallet import Keystore, WalletError

# what `solver run --cheat` accepts (verifier.adversary's strategies, and the withholding ones
# the solver worker plays itself); listed here so the CLI starts without importing torch
CHEATS = ("skip-steps", "forge-final", "wrong-order", "wrong-lr", "stale", "one-interval", "nonfinite-absorbing",
          "nonfinite-declared", "loss-declared", "loss-forged", "withhold", "withhold-then-serve")

USER_ERRORS = (RpcError, WalletError, HomeError, GenesisError, StoreError, SpecError)


class CliError(RuntimeError):
    pass


# -- helpers -------------------------------------------------------------------------------

def emit(args, obj: dict, text: str) -> None:
    print(json.dumps(obj, indent=2) if args.json else text)


def password(prompt: str = "Password: ", confirm: bool = False) -> str:
    env = os.environ.get("STEPCHAIN_PASSWORD")
    if env is not None:
        return env
    if not sys.stdin.isatty():
        raise CliError("no password: set STEPCHAIN_PASSWORD or run in a terminal to be prompted")
    first = getpass.getpass(prompt)
    if confirm and getpass.getpass("Repeat password: ") != first:
        raise CliError("passwords do not match")
    return first


def positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer amount of base units") from None
    if value <= 0:
        raise argparse.ArgumentTypeError("amount must be positive")
    return value


def home_of(args) -> Home:
    return Home(args.home)


def keystore(args) -> Keystore:
    return Keystore(home_of(args).keystore_dir)


def client(args) -> Client:
    if args.rpc:
        return Client(args.rpc)
    home = home_of(args)
    return Client(home.config().rpc_url if home.exists() else "http://127.0.0.1:26657")


def resolve_address(args, who: str) -> str:
    """An sc1 address as given, or the address of a key in the keystore."""
    if who.startswith("sc1"):
        try:
            return format_address(parse_address(who))
        except ValueError as exc:
            raise CliError(str(exc)) from None
    if who == NODE_KEY and NODE_KEY not in keystore(args).names():
        return format_address(home_of(args).node_key().address)
    return keystore(args).load_doc(who)["address"]


NODE_KEY = "node"


def unlock(args, name: str) -> PrivateKey:
    """A keystore key, or with the name `node` the home's validator key (it has no password:
    the node signs votes with it unattended)."""
    if name == NODE_KEY and NODE_KEY not in keystore(args).names():
        return home_of(args).node_key()
    return keystore(args).unlock(name, password(f"Password for {name}: "))


def send(args, key: PrivateKey, kind: str, body: dict, summary: str) -> None:
    c = client(args)
    tx = c.sign_and_send(key, kind, body, fee=args.fee)
    if args.no_wait:
        emit(args, {"hash": tx.hash.hex(), "status": "pending"}, f"{summary}: tx {tx.hash.hex()} pending")
        return
    info = c.wait_for_tx(tx.hash.hex())
    emit(args, {"hash": tx.hash.hex(), "status": "committed", "height": info["height"]},
         f"{summary}: tx {tx.hash.hex()} committed at height {info['height']}")


# -- commands ------------------------------------------------------------------------------

def cmd_init(args) -> None:
    from .init import init_home
    info = init_home(home_of(args), args)
    emit(args, info, "\n".join(f"{k}: {v}" for k, v in info.items()))


def cmd_node_run(args) -> None:
    from . import logs
    from .daemon import run_node
    logs.setup(args.log_format)
    code = run_node(home_of(args))
    if code:
        raise SystemExit(code)  # the node failed or its stop overran: the log's last lines say why


def cmd_node_verify(args) -> None:
    from .verify import verify_home
    info = verify_home(home_of(args))
    emit(args, info, f"ok: {info['height']} blocks re-executed, app hash {info['app_hash']}")


def cmd_wallet(args) -> None:
    from .wallet_cmds import run_wallet
    run_wallet(args, keystore(args), emit, password)


def cmd_devnet(args) -> None:
    from .devnet import NodeExited, run_devnet
    try:
        code = run_devnet(args.home if args.home_given else None, args.validators, args.demo, keep=args.keep)
    except NodeExited as exc:
        raise CliError(str(exc)) from None
    if code:
        raise CliError("some nodes did not stop cleanly; see their logs in the devnet home")


def cmd_job(args) -> None:
    from . import job_cmds
    if args.job_command == "submit":
        job_cmds.cmd_job_submit(args, client, unlock, emit)
    elif args.job_command == "status":
        job_cmds.cmd_job_status(args, client, emit)
    elif args.job_command == "cancel":
        send(args, unlock(args, args.sender), "cancel_job", {"job": job_cmds.job_id(args.job)},
             f"cancelled job {args.job[:16]}")
    else:
        job_cmds.cmd_job_fetch(args, client, emit)


def cmd_solver(args) -> None:
    from . import job_cmds
    job_cmds.cmd_solver_run(args, client, unlock, home_of)


def cmd_verifier(args) -> None:
    from . import job_cmds
    job_cmds.cmd_verifier_run(args, client, unlock, home_of)


def cmd_balance(args) -> None:
    addr = resolve_address(args, args.who)
    acct = client(args).account(addr)
    stakes = ", ".join(f"{r} {n}" for r, n in acct["stake"].items() if n) or "none"
    unbonding = sum(e["amount"] for e in acct["unbonding"])
    text = f"{addr}\n  balance: {acct['balance']}\n  stake: {stakes}\n  unbonding: {unbonding}\n  nonce: {acct['nonce']}"
    if acct["jailed"]:
        text += f"\n  jailed until height {acct['jailed']['until']}"
    emit(args, acct, text)


def cmd_transfer(args) -> None:
    to = resolve_address(args, args.to)
    send(args, unlock(args, args.sender), "transfer", {"to": parse_address(to), "amount": args.amount},
         f"sent {args.amount} to {to}")


def cmd_stake(args) -> None:
    verb = "stake" if args.command == "stake" else "unstake"
    send(args, unlock(args, args.sender), verb, {"role": args.role, "amount": args.amount},
         f"{verb}d {args.amount} as {args.role}")


def cmd_unjail(args) -> None:
    send(args, unlock(args, args.sender), "unjail", {}, "unjailed")


def cmd_status(args) -> None:
    s = client(args).status()
    emit(args, s, f"chain {s['chain_id']} height {s['height']}\n  block {s['block_hash']}\n"
                  f"  app_hash {s['app_hash']}\n  validators {s['validators']}, mempool {s['mempool_size']}\n"
                  f"  jackpot pool {s['jackpot_pool']}" + _storage_line(s.get("blob_storage")))


def _storage_line(b: dict | None) -> str:
    if not b:
        return ""
    limit = f" of {_size(b['limit'])}" if b["limit"] else " (no limit)"
    return f"\n  blob storage {_size(b['bytes'])}{limit} in {b['blobs']} blobs, {_size(b['pinned_bytes'])} pinned"


def _size(n: int) -> str:
    """Bytes, exact, and in MiB or GiB for reading."""
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20)):
        if n >= scale:
            return f"{n} bytes ({n / scale:.1f} {unit})"
    return f"{n} bytes"


def cmd_block(args) -> None:
    b = client(args).get(f"/block/{args.height}")
    emit(args, b, f"block {b['height']} {b['hash']}\n  proposer {b['proposer']}\n  txs {b['num_txs']}\n"
                  f"  app_hash {b['app_hash']}")


def cmd_tx(args) -> None:
    t = client(args).get(f"/tx/{args.hash}")
    emit(args, t, f"tx {t['hash']} {t['status']}" + (f" at height {t['height']}" if "height" in t else ""))


# -- parser --------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--home", default=str(DEFAULT_HOME), help="node home (default ~/.stepchain or $STEPCHAIN_HOME)")
    common.add_argument("--rpc", help="node RPC URL (default: the one in the home's config)")
    common.add_argument("--json", action="store_true", help="print JSON")
    txopts = argparse.ArgumentParser(add_help=False)
    txopts.add_argument("--fee", type=positive, default=None, help="fee in base units (default: 1)")
    txopts.add_argument("--no-wait", action="store_true", help="do not wait for the tx to be committed")

    p = argparse.ArgumentParser(prog="stepchain", description="stepchain: verifiable ML training on a PoS chain")
    sub = p.add_subparsers(dest="command", required=True)
    _node_commands(sub, common)
    _wallet_commands(sub, common, txopts)
    _job_commands(sub, common, txopts)
    _worker_commands(sub, common)
    sub.add_parser("status", parents=[common], help="node and chain status").set_defaults(func=cmd_status)
    s = sub.add_parser("block", parents=[common], help="show a block")
    s.add_argument("height", nargs="?", default="latest")
    s.set_defaults(func=cmd_block)
    s = sub.add_parser("tx", parents=[common], help="show a tx")
    s.add_argument("hash")
    s.set_defaults(func=cmd_tx)
    return p


def _node_commands(sub, common) -> None:
    s = sub.add_parser("init", parents=[common], help="create a node home")
    s.add_argument("--genesis", help="genesis file to join (default: the repo template)")
    s.add_argument("--dev", action="store_true", help="single-validator dev chain with a funded key 'dev'")
    s.add_argument("--moniker", default="node")
    s.add_argument("--rpc-port", type=int, default=26657)
    s.add_argument("--p2p-port", type=int, default=26656)
    s.add_argument("--seeds", help="peers to dial, comma-separated ID@HOST:PORT")
    s.set_defaults(func=cmd_init)

    node = sub.add_parser("node", help="run or check a node").add_subparsers(dest="node_command", required=True)
    run = node.add_parser("run", parents=[common], help="run the node")
    run.add_argument("--log-format", choices=("text", "json"), default="text", help="json: one object per line")
    run.set_defaults(func=cmd_node_run)
    node.add_parser("verify", parents=[common],
                    help="re-execute the stored chain from genesis (node stopped)").set_defaults(func=cmd_node_verify)

    s = sub.add_parser("devnet", help="run a local network of node processes")
    s.add_argument("--home", dest="home", default=None, help="devnet directory (default: a new temp dir)")
    s.add_argument("--validators", type=int, default=1)
    s.add_argument("--demo", action="store_true", help="run the scripted demo, then stop")
    s.add_argument("--keep", action="store_true",
                   help="with --demo: keep the network up after the demo, to browse it in the explorer, until Ctrl-C")
    s.set_defaults(func=cmd_devnet, home_given=True)


def _wallet_commands(sub, common, txopts) -> None:
    w = sub.add_parser("wallet", help="manage keys").add_subparsers(dest="wallet_command", required=True)
    w.add_parser("new", parents=[common]).add_argument("name")
    w.add_parser("list", parents=[common])
    w.add_parser("show", parents=[common]).add_argument("name")
    imp = w.add_parser("import", parents=[common], help="import a keystore file or a hex seed from stdin")
    imp.add_argument("name")
    imp.add_argument("--file", help="exported keystore JSON (default: read a 64-hex-digit seed from stdin)")
    exp = w.add_parser("export", parents=[common], help="print the sealed keystore JSON")
    exp.add_argument("name")
    exp.add_argument("--secret", action="store_true", help="print the unsealed hex seed instead (careful)")
    for name in ("new", "list", "show", "import", "export"):
        w.choices[name].set_defaults(func=cmd_wallet)

    s = sub.add_parser("balance", parents=[common], help="balance and stakes of a key or address")
    s.add_argument("who", help="key name or sc1 address")
    s.set_defaults(func=cmd_balance)

    s = sub.add_parser("transfer", parents=[common, txopts], help="send tokens")
    s.add_argument("--from", dest="sender", required=True, help="key name ('node': this home's validator key)")
    s.add_argument("--to", required=True, help="sc1 address or key name")
    s.add_argument("--amount", type=positive, required=True)
    s.set_defaults(func=cmd_transfer)

    for verb in ("stake", "unstake"):
        s = sub.add_parser(verb, parents=[common, txopts], help=f"{verb} tokens for a role")
        s.add_argument("--from", dest="sender", required=True, help="key name")
        s.add_argument("--role", choices=ROLES, required=True)
        s.add_argument("--amount", type=positive, required=True)
        s.set_defaults(func=cmd_stake)

    s = sub.add_parser("unjail", parents=[common, txopts], help="return a jailed validator to the set")
    s.add_argument("--from", dest="sender", required=True)
    s.set_defaults(func=cmd_unjail)


def _job_commands(sub, common, txopts) -> None:
    job = sub.add_parser("job", help="training jobs").add_subparsers(dest="job_command", required=True)
    s = job.add_parser("submit", parents=[common], help="validate a job spec (TOML), escrow its budget, submit")
    s.add_argument("--from", dest="sender", required=True, help="key name")
    s.add_argument("spec", help="job spec TOML file")
    s = job.add_parser("status", parents=[common], help="rounds, shards, commitments, verification, payouts")
    s.add_argument("job", help="job id (hex)")
    s = job.add_parser("fetch", parents=[common], help="download and check the final model, print its metric")
    s.add_argument("job", help="job id (hex)")
    s.add_argument("--out", default="model.pt")
    s = job.add_parser("cancel", parents=[common, txopts],
                       help="refund the escrow of a job that no solver is working on or no verifier can check")
    s.add_argument("--from", dest="sender", required=True, help="the submitter's key name")
    s.add_argument("job", help="job id (hex)")
    for name in ("submit", "status", "fetch", "cancel"):
        job.choices[name].set_defaults(func=cmd_job)


def _worker_commands(sub, common) -> None:
    s = sub.add_parser("solver", help="train assigned shards").add_subparsers(dest="solver_command", required=True)
    s = s.add_parser("run", parents=[common], help="run a solver for a staked key")
    s.add_argument("--log-format", choices=("text", "json"), default="text", help="json: one object per line")
    s.add_argument("--key", required=True, help="key name")
    s.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    s.add_argument("--cheat", choices=CHEATS,
                   help="demonstrations and tests only: be a dishonest solver")
    s.set_defaults(func=cmd_solver)
    s = sub.add_parser("verifier", help="verify shards").add_subparsers(dest="verifier_command", required=True)
    s = s.add_parser("run", parents=[common], help="run a verifier for a staked key")
    s.add_argument("--log-format", choices=("text", "json"), default="text", help="json: one object per line")
    s.add_argument("--key", required=True, help="key name")
    s.add_argument("--whistleblower", action="store_true", help="also check shards this key was not picked for")
    s.add_argument("--lazy", action="store_true", help="tests only: attest without checking")
    s.add_argument("--check", type=_checks, default=1, metavar="N|all",
                   help="whistleblower: random intervals to re-run in each shard besides the last (default 1)")
    s.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                   help="recompute on this device where the job's profile allows it (tolerance)")
    s.set_defaults(func=cmd_verifier)


def _checks(text: str) -> int:
    if text == "all":
        return 1 << 30
    if not text.isdigit():
        raise argparse.ArgumentTypeError("--check takes a number of intervals or 'all'")
    return int(text)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
        return 0
    except (CliError, *USER_ERRORS) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except OSError as exc:
        print(f"error: {exc.strerror or exc}" + (f": {exc.filename}" if exc.filename else ""), file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
