"""node.wallet: the keystore (scrypt + SecretBox, one 0600 JSON file per key)."""
from __future__ import annotations

import json
import os
import stat

import nacl.secret
import pytest

from consensus.crypto import PrivateKey, format_address
from node import wallet
from node.wallet import Keystore, WalletError, seal, unseal

PW = "correct horse battery staple"


@pytest.fixture
def ks(tmp_path) -> Keystore:
    return Keystore(tmp_path / "keys")  # does not exist yet: created on first save


def test_create_and_unlock_round_trip(ks):
    doc = ks.create("alice", PW)
    key = ks.unlock("alice", PW)
    assert isinstance(key, PrivateKey)
    assert doc["address"] == format_address(key.address)
    assert doc["pubkey"] == key.pubkey.hex()
    assert doc["name"] == "alice" and doc["version"] == 1
    assert doc["kdf"]["name"] == "scrypt"
    assert ks.names() == ["alice"]
    assert ks.load_doc("alice") == doc
    # unlocking twice gives the same key
    assert ks.unlock("alice", PW).seed() == key.seed()


def test_save_existing_key_round_trip(ks):
    key = PrivateKey(bytes(range(32)))
    ks.save("k1", key, PW)
    assert ks.unlock("k1", PW).seed() == bytes(range(32))


def test_file_mode_is_0600(ks):
    ks.create("alice", PW)
    mode = stat.S_IMODE(os.stat(ks.path("alice")).st_mode)
    assert mode == 0o600


def test_file_mode_is_0600_even_with_a_permissive_umask(ks):
    old = os.umask(0)
    try:
        ks.create("bob", PW)
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(ks.path("bob")).st_mode) == 0o600


def test_secret_not_in_the_file(ks):
    key = PrivateKey(bytes([7]) * 32)
    ks.save("alice", key, PW)
    text = ks.path("alice").read_text()
    raw = ks.path("alice").read_bytes()
    assert key.seed().hex() not in text.lower()
    assert key.seed() not in raw
    assert PW not in text
    assert json.loads(text)["pubkey"] == key.pubkey.hex()


def test_two_seals_of_one_key_differ(ks):
    key = PrivateKey(bytes([9]) * 32)
    a, b = seal(key, "x", PW), seal(key, "x", PW)
    assert a["kdf"]["salt"] != b["kdf"]["salt"]
    assert a["ciphertext"] != b["ciphertext"]
    assert unseal(a, PW).seed() == unseal(b, PW).seed() == key.seed()


def test_wrong_password(ks):
    ks.create("alice", PW)
    with pytest.raises(WalletError, match="wrong password for key 'alice'"):
        ks.unlock("alice", PW + "x")
    with pytest.raises(WalletError, match="wrong password"):
        ks.unlock("alice", "")


@pytest.mark.parametrize("name", ["", "a/b", "../evil", "has space", "a" * 65, "émile", "x:y", "a\\b", "a\x00b"])
def test_bad_names_rejected(ks, name):
    with pytest.raises(WalletError, match="bad key name"):
        ks.create(name, PW)
    with pytest.raises(WalletError, match="bad key name"):
        ks.unlock(name, PW)
    assert ks.names() == []


@pytest.mark.parametrize("name", ["a", "A-b_c.d", "9" * 64])
def test_good_names_accepted(ks, name):
    ks.create(name, PW)
    assert ks.names() == [name]


def test_name_with_trailing_newline_rejected(ks):
    with pytest.raises(WalletError, match="bad key name"):
        ks.path("alice\n")


def test_duplicate_name_rejected(ks):
    ks.create("alice", PW)
    first = ks.path("alice").read_text()
    with pytest.raises(WalletError, match="a key named 'alice' already exists"):
        ks.create("alice", "other")
    assert ks.path("alice").read_text() == first  # not overwritten
    assert ks.unlock("alice", PW)


def test_missing_key(ks):
    with pytest.raises(WalletError, match="no key named 'ghost'"):
        ks.unlock("ghost", PW)
    assert ks.names() == []


def test_import_exported_doc(ks, tmp_path):
    doc = ks.create("alice", PW)
    exported = json.loads(ks.path("alice").read_text())
    other = Keystore(tmp_path / "other")
    other.import_doc("alice2", exported, PW)
    assert other.names() == ["alice2"]
    assert other.load_doc("alice2")["name"] == "alice2"
    assert other.unlock("alice2", PW).seed() == ks.unlock("alice", PW).seed()
    assert other.load_doc("alice2")["address"] == doc["address"]
    assert stat.S_IMODE(os.stat(other.path("alice2")).st_mode) == 0o600


def test_import_with_wrong_password_fails_and_writes_nothing(ks, tmp_path):
    ks.create("alice", PW)
    exported = ks.load_doc("alice")
    other = Keystore(tmp_path / "other")
    with pytest.raises(WalletError, match="wrong password"):
        other.import_doc("alice", exported, "nope")
    assert other.names() == []


def test_import_rejects_mismatched_address(ks, tmp_path):
    doc = ks.create("alice", PW)
    forged = dict(doc, address=format_address(b"\x01" * 20))
    with pytest.raises(WalletError, match="address does not match"):
        Keystore(tmp_path / "other").import_doc("x", forged, PW)


def test_import_duplicate_name_rejected(ks):
    doc = ks.create("alice", PW)
    with pytest.raises(WalletError, match="already exists"):
        ks.import_doc("alice", doc, PW)


@pytest.mark.parametrize("content", ["", "not json", "{", "[1, 2"])
def test_invalid_json_file(ks, content):
    ks.dir.mkdir(parents=True)
    ks.path("bad").write_text(content)
    with pytest.raises(WalletError, match="not valid JSON"):
        ks.unlock("bad", PW)


def _mutations():
    yield "kdf missing", lambda d: d.pop("kdf")
    yield "ciphertext missing", lambda d: d.pop("ciphertext")
    yield "salt not hex", lambda d: d["kdf"].__setitem__("salt", "zz")
    yield "ciphertext not hex", lambda d: d.__setitem__("ciphertext", "not hex")
    yield "opslimit not a number", lambda d: d["kdf"].__setitem__("opslimit", "lots")
    yield "kdf not an object", lambda d: d.__setitem__("kdf", 5)


@pytest.mark.parametrize("mutate", [m for _, m in _mutations()], ids=[n for n, _ in _mutations()])
def test_malformed_file(ks, mutate):
    doc = ks.create("alice", PW)
    mutate(doc)
    ks.path("alice").write_text(json.dumps(doc))
    with pytest.raises(WalletError, match="keystore file is malformed"):
        ks.unlock("alice", PW)


@pytest.mark.parametrize("doc", [[], None, "text", 5, {}])
def test_malformed_documents(doc):
    with pytest.raises(WalletError, match="malformed"):
        unseal(doc, PW)


@pytest.mark.parametrize("content", ["[]", "null", "\"x\"", "{}"])
def test_malformed_json_shapes_on_disk(ks, content):
    ks.dir.mkdir(parents=True)
    ks.path("odd").write_text(content)
    with pytest.raises(WalletError):
        ks.unlock("odd", PW)


def test_corrupted_ciphertext_is_a_wallet_error(ks):
    doc = ks.create("alice", PW)
    ct = bytearray(bytes.fromhex(doc["ciphertext"]))
    ct[-1] ^= 1
    doc["ciphertext"] = ct.hex()
    ks.path("alice").write_text(json.dumps(doc))
    with pytest.raises(WalletError):
        ks.unlock("alice", PW)


def test_wrong_length_salt_is_reported_as_malformed(ks):
    doc = ks.create("alice", PW)
    doc["kdf"]["salt"] = "abcd"
    ks.path("alice").write_text(json.dumps(doc))
    with pytest.raises(WalletError, match="malformed"):
        ks.unlock("alice", PW)


def test_sealed_secret_of_wrong_length_is_a_wallet_error(ks):
    doc = ks.create("alice", PW)
    salt = bytes.fromhex(doc["kdf"]["salt"])
    box_key = wallet._derive(PW, salt, doc["kdf"]["opslimit"], doc["kdf"]["memlimit"])
    doc["ciphertext"] = nacl.secret.SecretBox(box_key).encrypt(b"\x01" * 31).hex()
    ks.path("alice").write_text(json.dumps(doc))
    try:
        ks.unlock("alice", PW)
    except WalletError:
        return
    except ValueError as exc:
        pytest.fail(f"bare {type(exc).__name__}: {exc}", pytrace=False)
    pytest.fail("no error for a 31-byte secret", pytrace=False)


def test_names_lists_only_json_files(ks):
    ks.create("b", PW)
    ks.create("a", PW)
    (ks.dir / "notes.txt").write_text("hi")
    assert ks.names() == ["a", "b"]


def test_private_key_repr_hides_the_secret():
    key = PrivateKey(bytes([5]) * 32)
    assert key.seed().hex() not in repr(key)
    assert repr(key) == f"PrivateKey({format_address(key.address)})"
