"""A node whose consensus engine dies exits non-zero with one clear log line (it used to log
"consensus stopped" and exit 0), and `stepchain devnet` notices such a node, names it, its exit
code and its last error, stops the others and exits non-zero. The engine is made to die with
the test-only config `misbehave = "crash-engine"` (after block 2)."""
from __future__ import annotations

import time

import pytest

from node.lifecycle import EXIT_FAILED
from tests.nodes import STEPCHAIN, NodeProcess, _pids_naming, init_network, spawn

pytestmark = pytest.mark.slow


def set_misbehave(home, how: str) -> None:
    cfg = home / "config.toml"
    cfg.write_text(cfg.read_text().replace('misbehave = ""', f'misbehave = "{how}"'))


def test_engine_death_exits_non_zero_with_one_line(tmp_path):
    node = NodeProcess.init_dev(tmp_path)
    set_misbehave(node.home, "crash-engine")
    node.start()
    code = node.wait_exit(timeout=60)
    log = node.log()
    assert code == EXIT_FAILED, log
    errors = [ln for ln in log.splitlines() if " ERROR " in ln]
    assert len(errors) == 1, log
    assert "consensus engine failed" in errors[0] and "EngineCrash" in errors[0] and "engine.py" in errors[0], errors
    assert "Traceback" not in log, log
    assert "stopped at height 2" in log, log  # and it still stopped in order: store closed at its height
    # the store is intact: the node resumes from where it was (and, misbehaving no more, goes on)
    node.home.joinpath("config.toml").write_text(
        node.home.joinpath("config.toml").read_text().replace('misbehave = "crash-engine"', 'misbehave = ""'))
    node.start().wait_height(3)
    assert node.stop() == 0


def test_devnet_reports_a_node_that_exited_and_fails(tmp_path):
    base = tmp_path / "devnet"
    nodes = init_network(base, 2, block_interval_ms=200, idle_interval_ms=400)
    set_misbehave(nodes[1].home, "crash-engine")
    log_path = tmp_path / "devnet.log"
    devnet = spawn([*STEPCHAIN, "devnet", "--home", str(base), "--validators", "2"], log_path, owns=base)
    try:
        started = time.monotonic()
        code = devnet.wait(90)
        out = log_path.read_text()
        assert code == 1, out
        report = [ln for ln in out.splitlines() if ln.startswith("error: ")]
        assert len(report) == 1, out
        assert "node1 exited on its own with exit code 1" in report[0], report
        assert "consensus engine failed" in report[0] and "EngineCrash" in report[0], report
        assert "exit codes [0, 1]" in out, out  # node0 was stopped cleanly
        assert "Traceback" not in out, out
        assert time.monotonic() - started < 60
        assert _pids_naming({str(base.resolve())}) == [], "a devnet node outlived the devnet"
    finally:
        if devnet.poll() is None:
            devnet.kill()
