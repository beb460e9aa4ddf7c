"""`stepchain wallet new|list|show|import|export`."""
from __future__ import annotations

import json
import sys

from consensus.crypto import PrivateKey

from .wallet import Keystore, WalletError


def _read_seed() -> PrivateKey:
    text = sys.stdin.readline().strip()
    try:
        seed = bytes.fromhex(text)
    except ValueError:
        raise WalletError("the seed must be 64 hex digits") from None
    if len(seed) != 32:
        raise WalletError("the seed must be 64 hex digits (32 bytes)")
    return PrivateKey(seed)


def run_wallet(args, ks: Keystore, emit, password) -> None:
    cmd = args.wallet_command
    if cmd == "list":
        docs = [ks.load_doc(n) for n in ks.names()]
        rows = [{"name": d["name"], "address": d["address"]} for d in docs]
        emit(args, {"keys": rows}, "\n".join(f"{r['name']}\t{r['address']}" for r in rows) or "no keys yet")
    elif cmd == "show":
        d = ks.load_doc(args.name)
        emit(args, {"name": d["name"], "address": d["address"], "pubkey": d["pubkey"]},
             f"{d['name']}\n  address {d['address']}\n  pubkey {d['pubkey']}")
    elif cmd == "new":
        ks.path(args.name)  # validate the name before prompting
        d = ks.create(args.name, password(f"Password for {args.name}: ", confirm=True))
        emit(args, {"name": args.name, "address": d["address"], "pubkey": d["pubkey"]},
             f"created {args.name}: {d['address']}")
    elif cmd == "import":
        ks.path(args.name)
        if args.file:
            try:
                doc = json.loads(open(args.file).read())
            except (OSError, ValueError) as exc:
                raise WalletError(f"cannot read keystore file {args.file}: {exc}") from None
            d = ks.import_doc(args.name, doc, password(f"Password of {args.file}: "))
        else:
            d = ks.save(args.name, _read_seed(), password(f"Password for {args.name}: ", confirm=True))
        emit(args, {"name": args.name, "address": d["address"]}, f"imported {args.name}: {d['address']}")
    elif cmd == "export":
        doc = ks.load_doc(args.name)
        if args.secret:
            key = ks.unlock(args.name, password(f"Password for {args.name}: "))
            emit(args, {"name": args.name, "address": doc["address"], "seed": key.seed().hex()}, key.seed().hex())
        else:
            print(json.dumps(doc, indent=2))
