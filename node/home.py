"""A node's home directory: config.toml, genesis.json, node_key.json, keystore/, data/.

``stepchain init`` creates it; everything else reads it through ``Home``.
"""
from __future__ import annotations

import json
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from consensus.crypto import PrivateKey, format_address

DEFAULT_HOME = Path(os.environ.get("STEPCHAIN_HOME", Path.home() / ".stepchain"))
REPO_GENESIS = Path(__file__).resolve().parent.parent / "genesis.json"


class HomeError(ValueError):
    pass


@dataclass
class Config:
    moniker: str = "node"
    rpc_listen: str = "127.0.0.1:26657"
    p2p_listen: str = "127.0.0.1:26656"
    seeds: list[str] = field(default_factory=list)
    validator: bool = True
    block_interval_ms: int = 1000
    idle_interval_ms: int = 3000
    max_body_bytes: int = 8 * 1024 * 1024
    max_frame_bytes: int = 4 * 1024 * 1024
    # Test networks only: "double-prevote" makes this validator equivocate; "crash-engine" kills
    # its consensus engine after block 2; "busy-referee" keeps a referee thread in torch;
    # "hang-on-stop" makes the shutdown wait forever, so that the hard deadline ends it;
    # "slow-blobs" serves blob chunks at one per 50 ms per peer (to interrupt a transfer).
    misbehave: str = ""
    # HOST:PORT that peers should dial to reach us (told in the hello and passed on by PEX), for
    # a node behind NAT or a proxy, like CometBFT's external_address; empty: p2p_listen.
    p2p_external: str = ""
    # Test/ops knob: this node's wall clock (block times, the future-block check) runs this many
    # ms ahead (negative: behind), to see how a validator with a wrong clock behaves. Keep 0.
    clock_offset_ms: int = 0
    # Blob storage (README "Storage"): a closed job's blobs are kept this many blocks after it
    # closed; a blob no job pins, and a stale partial upload, is deleted once this many seconds
    # old; RPC uploads are refused (HTTP 507) past this many bytes in the blob directory (0: no
    # bound); a GC pass runs this often (and after a block that closes a job).
    blob_retention_blocks: int = 86_400
    blob_grace_s: int = 3_600
    max_blob_disk_bytes: int = 64 * 1024 ** 3
    blob_gc_interval_s: int = 60

    def to_toml(self) -> str:
        lines = ["# stepchain node configuration"]
        for name, value in self.__dict__.items():
            if isinstance(value, bool):
                lines.append(f"{name} = {'true' if value else 'false'}")
            elif isinstance(value, int):
                lines.append(f"{name} = {value}")
            elif isinstance(value, list):
                lines.append(f"{name} = [{', '.join(json.dumps(v) for v in value)}]")
            else:
                lines.append(f"{name} = {json.dumps(value)}")
        return "\n".join(lines) + "\n"

    @classmethod
    def from_toml(cls, text: str) -> "Config":
        try:
            raw = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise HomeError(f"config.toml is not valid TOML: {exc}") from None
        unknown = sorted(set(raw) - set(cls.__dataclass_fields__))
        if unknown:
            raise HomeError(f"config.toml has unknown settings: {', '.join(unknown)}")
        cfg = cls(**raw)
        for name, f in cls.__dataclass_fields__.items():
            expected = {"str": str, "int": int, "bool": bool}.get(str(f.type), list)
            if type(getattr(cfg, name)) is not expected:
                raise HomeError(f"config.toml: {name} must be a {expected.__name__}")
        for name in ("blob_retention_blocks", "blob_grace_s", "max_blob_disk_bytes"):
            if getattr(cfg, name) < 0:
                raise HomeError(f"config.toml: {name} must not be negative")
        if cfg.blob_gc_interval_s < 1:
            raise HomeError("config.toml: blob_gc_interval_s must be at least 1")
        if cfg.p2p_external:
            split_hostport(cfg.p2p_external)  # HomeError names the bad address
        return cfg

    @property
    def rpc_url(self) -> str:
        return f"http://{self.rpc_listen}"


def split_hostport(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit() or not 0 <= int(port) < 65536:
        raise HomeError(f"bad address {text!r}: expected HOST:PORT")
    return host, int(port)


class Home:
    def __init__(self, path: str | Path):
        self.path = Path(path).expanduser()

    config_path = property(lambda self: self.path / "config.toml")
    genesis_path = property(lambda self: self.path / "genesis.json")
    node_key_path = property(lambda self: self.path / "node_key.json")
    keystore_dir = property(lambda self: self.path / "keystore")
    data_dir = property(lambda self: self.path / "data")

    def exists(self) -> bool:
        return self.config_path.exists()

    def require(self) -> "Home":
        if not self.exists():
            raise HomeError(f"no node home at {self.path}: run `stepchain init --home {self.path}` first")
        return self

    def config(self) -> Config:
        return Config.from_toml(self.require().config_path.read_text())

    def write_config(self, cfg: Config) -> None:
        self.config_path.write_text(cfg.to_toml())

    def node_key(self) -> PrivateKey:
        try:
            doc = json.loads(self.require().node_key_path.read_text())
            return PrivateKey(bytes.fromhex(doc["seed"]))
        except (OSError, ValueError, KeyError) as exc:
            raise HomeError(f"cannot read node key {self.node_key_path}: {exc}") from None

    def write_node_key(self, key: PrivateKey) -> None:
        fd = os.open(self.node_key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump({"address": format_address(key.address), "pubkey": key.pubkey.hex(),
                       "seed": key.seed().hex()}, f, indent=2)
