"""`stepchain init`: make a node home from a genesis file (or a dev genesis with this node as validator)."""
from __future__ import annotations

import json
import os
import shutil

from consensus.crypto import PrivateKey, format_address
from consensus.genesis import DEFAULT_PARAMS, GenesisError, load as load_genesis, parse as parse_genesis

from p2p.gossip import parse_peer

from .home import REPO_GENESIS, Config, Home, HomeError
from .wallet import Keystore

DEV_BALANCE = 10**15
DEV_VALIDATOR_STAKE = 10**12
DEV_VALIDATOR_FUNDS = 10**9


def read_template(source) -> dict:
    try:
        return json.loads(open(source).read())
    except FileNotFoundError:
        raise GenesisError(f"genesis file not found: {source}") from None
    except json.JSONDecodeError as exc:
        raise GenesisError(f"genesis file {source} is not valid JSON: {exc}") from None


def dev_genesis(template: dict, validators: list[PrivateKey], funded: list[str]) -> dict:
    """The template with these validators (equal stakes) and the given addresses funded."""
    g = dict(template)
    # Every dev network gets its own chain id: signatures cover the chain id, so a tx signed
    # for one network can never be replayed on another (a shared id made that possible).
    g["chain_id"] = f"{str(template.get('chain_id', 'stepchain'))[:40]}-dev-{os.urandom(6).hex()}"
    # validators get a small balance too: referee votes are txs and pay fees
    g["accounts"] = [{"address": a, "balance": DEV_BALANCE} for a in funded] + [
        {"address": format_address(v.address), "balance": DEV_VALIDATOR_FUNDS} for v in validators]
    g["stakes"] = [{"address": format_address(v.address), "pubkey": v.pubkey.hex(),
                    "role": "validator", "amount": DEV_VALIDATOR_STAKE} for v in validators]
    # Every parameter is written out: a network's state must not hang on this code's defaults,
    # or a later change of a default would move the app hash of every block it replays.
    g["params"] = {**DEFAULT_PARAMS, **template.get("params", {})}
    parse_genesis(g)
    return g


def peer_string(key: PrivateKey, p2p_listen: str) -> str:
    return f"{format_address(key.address)}@{p2p_listen}"


def init_home(home: Home, args) -> dict:
    if home.exists():
        raise HomeError(f"{home.path} is already a node home; pick another --home or delete it")
    source = args.genesis or REPO_GENESIS
    template = read_template(source)
    seeds = [s for s in (args.seeds or "").split(",") if s]
    for s in seeds:
        try:
            parse_peer(s)
        except ValueError as exc:
            raise HomeError(str(exc)) from None
    home.path.mkdir(parents=True, exist_ok=True)
    node_key = PrivateKey.generate()
    info = {"home": str(home.path), "node_address": format_address(node_key.address)}
    if args.dev:
        from .cli import password
        doc = Keystore(home.keystore_dir).create("dev", password("Password for the new dev key: ", confirm=True))
        genesis = dev_genesis(template, [node_key], [doc["address"]])
        home.genesis_path.write_text(json.dumps(genesis, indent=2) + "\n")
        info["dev_address"] = doc["address"]
    else:
        load_genesis(source)
        shutil.copyfile(source, home.genesis_path)
    home.write_node_key(node_key)
    home.write_config(Config(moniker=args.moniker, rpc_listen=f"127.0.0.1:{args.rpc_port}",
                             p2p_listen=f"127.0.0.1:{args.p2p_port}", seeds=seeds))
    info["p2p"] = peer_string(node_key, f"127.0.0.1:{args.p2p_port}")
    info["chain_id"] = load_genesis(home.genesis_path).chain_id
    info["rpc"] = f"http://127.0.0.1:{args.rpc_port}"
    return info
