"""Keystore: one JSON file per key, the secret sealed with SecretBox under a scrypt key.

Files are written with mode 0600 and never contain the secret in the clear. Nothing here
logs or returns a secret except ``export_secret``, which the user asks for explicitly.
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path

import nacl.exceptions
import nacl.pwhash
import nacl.secret
import nacl.utils

from consensus.crypto import PrivateKey, format_address

NAME_RE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
KDF = nacl.pwhash.scrypt
OPSLIMIT = KDF.OPSLIMIT_INTERACTIVE
MEMLIMIT = KDF.MEMLIMIT_INTERACTIVE


class WalletError(ValueError):
    pass


def _derive(password: str, salt: bytes, opslimit: int, memlimit: int) -> bytes:
    return KDF.kdf(nacl.secret.SecretBox.KEY_SIZE, password.encode(), salt,
                   opslimit=opslimit, memlimit=memlimit)


def seal(key: PrivateKey, name: str, password: str) -> dict:
    salt = nacl.utils.random(KDF.SALTBYTES)
    box = nacl.secret.SecretBox(_derive(password, salt, OPSLIMIT, MEMLIMIT))
    return {
        "version": 1,
        "name": name,
        "address": format_address(key.address),
        "pubkey": key.pubkey.hex(),
        "kdf": {"name": "scrypt", "salt": salt.hex(), "opslimit": OPSLIMIT, "memlimit": MEMLIMIT},
        "ciphertext": box.encrypt(key.seed()).hex(),
    }


def unseal(doc: dict, password: str) -> PrivateKey:
    # Only a failed decryption means a wrong password; anything else is a damaged file
    # (pynacl's own ValueError subclasses CryptoError, so the order of checks matters).
    try:
        kdf = doc["kdf"]
        key = _derive(password, bytes.fromhex(kdf["salt"]), int(kdf["opslimit"]), int(kdf["memlimit"]))
        box, sealed = nacl.secret.SecretBox(key), bytes.fromhex(doc["ciphertext"])
    except (KeyError, TypeError, ValueError, nacl.exceptions.CryptoError):
        raise WalletError("keystore file is malformed") from None
    try:
        seed = box.decrypt(sealed)
    except nacl.exceptions.ValueError:
        raise WalletError("keystore file is malformed") from None
    except nacl.exceptions.CryptoError:
        raise WalletError(f"wrong password for key {doc.get('name', '?')!r}") from None
    try:
        return PrivateKey(seed)
    except ValueError:
        raise WalletError("keystore file is malformed (sealed secret has the wrong length)") from None


class Keystore:
    def __init__(self, directory: str | Path):
        self.dir = Path(directory)

    def path(self, name: str) -> Path:
        if not NAME_RE.fullmatch(name):
            raise WalletError(f"bad key name {name!r}: use letters, digits, '.', '_' or '-'")
        return self.dir / f"{name}.json"

    def names(self) -> list[str]:
        return sorted(p.stem for p in self.dir.glob("*.json")) if self.dir.exists() else []

    def load_doc(self, name: str) -> dict:
        path = self.path(name)
        try:
            return json.loads(path.read_text())
        except FileNotFoundError:
            raise WalletError(f"no key named {name!r} (see `stepchain wallet list`)") from None
        except json.JSONDecodeError:
            raise WalletError(f"keystore file for {name!r} is not valid JSON") from None

    def save(self, name: str, key: PrivateKey, password: str) -> dict:
        return self.save_doc(name, seal(key, name, password))

    def save_doc(self, name: str, doc: dict) -> dict:
        path = self.path(name)
        if path.exists():
            raise WalletError(f"a key named {name!r} already exists")
        self.dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(dict(doc, name=name), f, indent=2)
        return doc

    def create(self, name: str, password: str) -> dict:
        return self.save(name, PrivateKey.generate(), password)

    def unlock(self, name: str, password: str) -> PrivateKey:
        return unseal(self.load_doc(name), password)

    def import_doc(self, name: str, doc: dict, password: str) -> dict:
        """Import an exported keystore file, checking the password opens it."""
        key = unseal(doc, password)
        if doc.get("address") != format_address(key.address):
            raise WalletError("keystore address does not match its key")
        return self.save_doc(name, doc)
