"""A node stops within seconds of SIGTERM or SIGINT whatever it is doing, and exits 0: idle,
syncing blocks, waiting on a blob from a peer that never answers, writing to a peer that
stopped reading, in a half-done handshake, serving slow RPC clients, with a referee thread
busy in torch. A shutdown that cannot finish ends at the hard deadline with one log line and
exit code 3 (at once on a second signal). Each test measures signal-to-exit on a real process."""
from __future__ import annotations

import asyncio
import base64
import json
import os
import signal
import socket
import threading
import time

import pytest

from consensus.crypto import PrivateKey, parse_address
from node.lifecycle import EXIT_HUNG, HARD_DEADLINE_S
from p2p.transport import PROTOCOL_VERSION, handshake
from tests.nodes import NodeProcess, init_full_node, p2p_id

pytestmark = pytest.mark.slow

QUICK_S = 5.0  # "within a few seconds": every stage is bounded well under this


def misbehaving(tmp_path, how: str, **kw) -> NodeProcess:
    node = NodeProcess.init_dev(tmp_path, **kw)
    cfg = node.home / "config.toml"
    cfg.write_text(cfg.read_text().replace('misbehave = ""', f'misbehave = "{how}"'))
    return node


def assert_quick_clean_stop(node: NodeProcess, sig: int = signal.SIGTERM) -> float:
    code = node.stop(timeout=30, sig=sig)
    log = node.log()
    assert code == 0, f"exit code {code}:\n{log}"
    assert node.stop_seconds < QUICK_S, f"took {node.stop_seconds:.2f} s to stop:\n{log}"
    assert "Traceback" not in log and " ERROR " not in log, log
    assert "stopped at height" in log, log
    print(f"stopped in {node.stop_seconds:.2f} s")
    return node.stop_seconds


def wait_for_log(node: NodeProcess, text: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while text not in node.log_path.read_text():
        assert node.proc.poll() is None, f"node exited:\n{node.log()}"
        assert time.monotonic() < deadline, f"{text!r} never logged:\n{node.log()}"
        time.sleep(0.1)


class FakePeer:
    """Our own P2P peer of a node (p2p.transport on a private event loop), stepped from a
    sync test. Between steps the loop does not run, so nothing the node sends is read."""

    def __init__(self, node: NodeProcess, rcvbuf: int | None = None):
        ident, _, addr = p2p_id(node).partition("@")
        self.node_id = parse_address(ident)
        host, _, port = addr.rpartition(":")
        self.addr = (host, int(port))
        self.rcvbuf = rcvbuf
        self.key = PrivateKey.generate()
        self.loop = asyncio.new_event_loop()
        self.session = None

    def run(self, coro, timeout: float = 15):
        return self.loop.run_until_complete(asyncio.wait_for(coro, timeout))

    def join(self) -> dict:
        return self.run(self._join())

    async def _join(self) -> dict:
        sock = socket.socket()
        if self.rcvbuf:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self.rcvbuf)
        sock.connect(self.addr)
        sock.setblocking(False)
        reader, writer = await asyncio.open_connection(sock=sock, limit=2**16)
        self.local_port = sock.getsockname()[1]
        self.session = await handshake(reader, writer, self.key, True, expect_peer=self.node_id)
        kind, hello = await self.session.recv()
        assert kind == "hello", kind
        await self.session.send(["hello", dict(hello, height=0, listen="127.0.0.1:1", version=PROTOCOL_VERSION)])
        return hello

    def send_many(self, kind: str, payload, n: int) -> None:
        async def go():
            for _ in range(n):
                await self.session.send([kind, payload])
        self.run(go())

    def wait_for(self, kind: str, timeout: float = 15):
        async def go():
            while True:
                msg = await self.session.recv()
                if msg[0] == kind:
                    return msg[1]
        return self.run(go(), timeout)

    def close(self) -> None:
        if self.session is not None:
            self.session.writer.transport.abort()
        self.loop.run_until_complete(asyncio.sleep(0))
        self.loop.close()


def unsent_bytes(local_port: int, remote_port: int) -> int:
    """The kernel's send queue of the TCP socket 127.0.0.1:local_port -> remote_port (Linux)."""
    want_local, want_remote = f"0100007F:{local_port:04X}", f"0100007F:{remote_port:04X}"
    with open("/proc/net/tcp") as f:
        for line in f.readlines()[1:]:
            fields = line.split()
            if fields[1] == want_local and fields[2] == want_remote:
                return int(fields[4].split(":")[0], 16)
    return -1


# -- the states --------------------------------------------------------------------------------

@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_idle_node_stops_at_once(tmp_path, sig):
    node = NodeProcess.init_dev(tmp_path).start()
    node.wait_height(2)
    assert_quick_clean_stop(node, sig)


def test_stops_while_syncing(tmp_path):
    source = NodeProcess.init_dev(tmp_path, "source", block_interval_ms=5, idle_interval_ms=5).start()
    source.wait_height(600, timeout=120)
    source.rpc.post("/admin/isolate", {"seconds": 0.5})  # from here on the source is far ahead
    time.sleep(1)
    tip = source.rpc.status()["height"]
    syncer = init_full_node(tmp_path, "syncer", source.home / "genesis.json", [p2p_id(source)]).start()
    deadline = time.monotonic() + 60
    while syncer.rpc.status()["height"] < 100:
        assert time.monotonic() < deadline, syncer.log()
        time.sleep(0.02)
    assert_quick_clean_stop(syncer)
    stopped_at = int(syncer.log().rsplit("stopped at height ", 1)[1].split()[0])
    assert stopped_at < tip, f"sync had finished ({stopped_at} of {tip}) before the signal"
    assert_quick_clean_stop(source)


def test_stops_while_a_blob_fetch_waits_on_a_silent_peer(tmp_path):
    node = NodeProcess.init_dev(tmp_path).start()
    peer = FakePeer(node)
    try:
        peer.join()
        answer = {}

        def fetch():  # the RPC waits up to 30 s for peers to deliver the blob
            answer["got"] = node.http("GET", "/blob/" + "ab" * 32, timeout=40)
        client = threading.Thread(target=fetch, daemon=True)
        client.start()
        assert peer.wait_for("blob_leaves_get") == bytes.fromhex("ab" * 32)  # the node now waits on us
        assert_quick_clean_stop(node)
        client.join(10)
        status, body = answer["got"]
        assert status == 503 and "shutting down" in json.loads(body)["error"], answer
    finally:
        peer.close()


def test_stops_while_writing_to_a_peer_that_stopped_reading(tmp_path):
    node = NodeProcess.init_dev(tmp_path).start()
    node.wait_height(20)
    peer = FakePeer(node, rcvbuf=4096)
    try:
        peer.join()
        p2p_port = peer.addr[1]
        peer.send_many("get_blocks", [1, 20], 1500)  # ~10 MB of answers that we never read
        deadline = time.monotonic() + 20
        while unsent_bytes(p2p_port, peer.local_port) < 100_000:
            assert time.monotonic() < deadline, f"node's send queue {unsent_bytes(p2p_port, peer.local_port)}"
            time.sleep(0.1)
        assert_quick_clean_stop(node)
    finally:
        peer.close()


def test_stops_during_half_done_handshakes(tmp_path):
    node = NodeProcess.init_dev(tmp_path).start()
    ident, _, addr = p2p_id(node).partition("@")
    host, _, port = addr.rpartition(":")
    silent = socket.create_connection((host, int(port)))  # connected, says nothing
    partial = socket.create_connection((host, int(port)))
    partial.sendall(b"\x00\x00\x00\x50" + b"\x92")  # a frame header and one byte of the first key frame
    try:
        time.sleep(0.5)
        assert_quick_clean_stop(node)
    finally:
        silent.close()
        partial.close()


def test_stops_while_serving_slow_rpc_clients(tmp_path):
    node = NodeProcess.init_dev(tmp_path).start()
    socks = [socket.create_connection(("127.0.0.1", node.rpc_port)) for _ in range(3)]
    try:
        # a body that never finishes
        socks[0].sendall(b"POST /broadcast_tx HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 100000\r\n\r\n{\"tx\": \"")
        # a websocket subscriber
        ws_key = base64.b64encode(os.urandom(16))
        socks[1].sendall(b"GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                         b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: " + ws_key + b"\r\n\r\n")
        assert socks[1].recv(4096).startswith(b"HTTP/1.1 101"), "websocket not upgraded"
        # an idle keep-alive connection after one answered request
        socks[2].sendall(b"GET /status HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        assert socks[2].recv(4096).startswith(b"HTTP/1.1 200")
        time.sleep(0.5)
        assert_quick_clean_stop(node)
    finally:
        for s in socks:
            s.close()


def test_stops_while_a_referee_thread_runs_torch(tmp_path):
    node = misbehaving(tmp_path, "busy-referee").start()
    wait_for_log(node, "referee thread is busy in torch")
    time.sleep(0.5)
    assert_quick_clean_stop(node)
    assert "leaving 1 busy worker thread(s) behind" in node.log()


# -- when the orderly stop cannot finish -------------------------------------------------------

def test_hard_deadline_ends_a_stuck_shutdown(tmp_path):
    node = misbehaving(tmp_path, "hang-on-stop").start()
    node.wait_height(1)
    code = node.stop(timeout=30)
    assert code == EXIT_HUNG, node.log()
    assert HARD_DEADLINE_S - 0.5 < node.stop_seconds < HARD_DEADLINE_S + 3, node.stop_seconds
    errors = [ln for ln in node.log().splitlines() if " ERROR " in ln]
    assert len(errors) == 1 and f"did not finish within {HARD_DEADLINE_S:.0f} s" in errors[0], errors
    assert "Traceback" not in node.log()


def test_second_signal_exits_at_once(tmp_path):
    node = misbehaving(tmp_path, "hang-on-stop").start()
    node.wait_height(1)
    node.proc.send_signal(signal.SIGTERM)
    wait_for_log(node, "shutting down")
    code = node.stop(timeout=30, sig=signal.SIGINT)
    assert code == EXIT_HUNG and node.stop_seconds < 2, (code, node.stop_seconds, node.log())
    errors = [ln for ln in node.log().splitlines() if " ERROR " in ln]
    assert len(errors) == 1 and "SIGINT again while stopping" in errors[0], errors
