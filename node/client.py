"""A small synchronous RPC client, used by the CLI, the workers and the tests."""
from __future__ import annotations

import http.client
import json
import time
import urllib.error
import urllib.request

from consensus.crypto import PrivateKey, address_of, format_address
from consensus.types import Tx


class RpcError(RuntimeError):
    """The node answered with an error, or could not be reached."""


class Client:
    def __init__(self, url: str, timeout: float = 10.0):
        self.url = url.rstrip("/")
        self.timeout = timeout

    def _call(self, path: str, body: dict | None = None) -> dict:
        raw = self._request(path, body)
        try:
            return json.loads(raw)
        except ValueError:  # incl. UnicodeDecodeError: something that is not a stepchain node answered
            raise RpcError(f"{self.url} answered with something that is not JSON; is it a stepchain node's RPC?") from None

    def _request(self, path: str, body: dict | None = None, raw: bytes | None = None) -> bytes:
        data = raw if raw is not None else None if body is None else json.dumps(body).encode()
        ctype = "application/octet-stream" if raw is not None else "application/json"
        try:
            req = urllib.request.Request(self.url + path, data=data,
                                         headers={"Content-Type": ctype} if data is not None else {})
        except ValueError:
            raise RpcError(f"bad RPC URL {self.url!r}: expected something like http://127.0.0.1:26657") from None
        return self._open(req, self.timeout, lambda resp: resp.read())

    def _open(self, req, timeout: float, read):
        """read(response) for a request, with every failure turned into one RpcError."""
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                return read(resp)
        except urllib.error.HTTPError as exc:
            try:
                message = json.loads(exc.read()).get("error", exc.reason)
            except (ValueError, AttributeError):
                message = exc.reason
            raise RpcError(message) from None
        except (urllib.error.URLError, http.client.HTTPException, ConnectionError, TimeoutError) as exc:
            reason = getattr(exc, "reason", exc)
            raise RpcError(f"cannot reach the node at {self.url} ({reason}); is `stepchain node run` going?") from None

    def get(self, path: str) -> dict:
        return self._call(path)

    def get_text(self, path: str) -> str:
        return self._request(path).decode()

    def post(self, path: str, body: dict) -> dict:
        return self._call(path, body)

    def job(self, job_id: str):
        """The job as the chain holds it: a consensus.jobs.Job parsed from the record's bytes."""
        from consensus import codec
        from consensus.jobs import Job
        return Job.from_map(codec.decode(bytes.fromhex(self.get(f"/job/{job_id}")["record"])))

    def put_blob(self, data: bytes) -> str:
        return json.loads(self._request("/blob", raw=data))["hash"]

    def put_blob_file(self, path, timeout: float = 600.0) -> dict:
        """Upload a file as one blob, streamed (the node stores it as it arrives): {hash, size}."""
        import os
        size, cap = os.path.getsize(path), self.get("/params")["max_blob_bytes"]
        if size > cap:  # the node would refuse it mid-stream; say why before sending a byte
            raise RpcError(f"{path} is {size} bytes, more than this network's blob cap of {cap}")
        with open(path, "rb") as f:
            req = urllib.request.Request(self.url + "/blob", data=f, method="POST", headers={
                "Content-Type": "application/octet-stream", "Content-Length": str(size)})
            return json.loads(self._open(req, timeout, lambda resp: resp.read()))

    def get_blob_file(self, digest: str, path, timeout: float = 600.0) -> int | None:
        """Download a blob into a file, streamed (never whole in memory); its size, or None
        when no node has it. The file is written only if the bytes match the hash."""
        import os
        from consensus.blobid import BlobHasher
        tmp = f"{path}.part"

        def save(resp) -> int:
            h, size = BlobHasher(), 0
            with open(tmp, "wb") as out:
                while piece := resp.read(1 << 20):
                    h.update(piece)
                    size += len(piece)
                    out.write(piece)
            if h.digest().hex() != digest:
                raise RpcError(f"the node served bytes that are not blob {digest[:16]}")
            os.replace(tmp, path)
            return size
        try:
            return self._open(urllib.request.Request(self.url + f"/blob/{digest}"), timeout, save)
        except RpcError as exc:
            if "not found" in str(exc):
                return None
            raise
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)

    def get_blob(self, digest: str) -> bytes | None:
        try:
            return self._request(f"/blob/{digest}")
        except RpcError as exc:
            if "not found" in str(exc):
                return None
            raise

    def status(self) -> dict:
        return self.get("/status")

    def account(self, address: str) -> dict:
        return self.get(f"/account/{address}")

    def broadcast(self, tx: Tx) -> str:
        return self.post("/broadcast_tx", {"tx": tx.wire.hex()})["hash"]

    def wait_for_tx(self, tx_hash: str, timeout: float = 60.0) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            try:
                info = self.get(f"/tx/{tx_hash}")
                if info.get("status") == "committed":
                    return info
            except RpcError as exc:
                if "not found" not in str(exc):
                    raise
                why = str(exc).partition("dropped from a block: ")[2]
                raise RpcError(f"tx {tx_hash[:16]} was dropped before inclusion"
                               + (f": {why}" if why else "")) from None
            if time.monotonic() > deadline:
                raise RpcError(f"tx {tx_hash} not included after {timeout:.0f}s; check `stepchain status`")
            time.sleep(0.2)

    def sign_and_send(self, key: PrivateKey, kind: str, body: dict, fee: int | None = None) -> Tx:
        """Sign a tx with the sender's next nonce (counting its pending txs) and broadcast it."""
        status = self.status()
        acct = self.account(format_address(address_of(key.pubkey)))
        tx = make_tx(key, status["chain_id"], kind, body, acct["next_nonce"], fee if fee is not None else 1)
        self.broadcast(tx)
        return tx


def make_tx(key: PrivateKey, chain_id: str, kind: str, body: dict, nonce: int, fee: int) -> Tx:
    unsigned = Tx(chain_id, kind, key.pubkey, nonce, fee, body)
    return Tx(chain_id, kind, key.pubkey, nonce, fee, body, key.sign(unsigned.sign_bytes()))
