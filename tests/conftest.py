import signal

import pytest

from tests.nodes import NodeProcess, kill_started, started_mark


def pytest_configure(config):
    """A SIGTERM (a CI timeout, `kill`) skips fixture teardown: kill every process the run
    started first, then stop as Ctrl-C would, so a killed test run leaves nothing behind."""
    def on_term(signum, frame):
        kill_started()
        raise KeyboardInterrupt
    signal.signal(signal.SIGTERM, on_term)


@pytest.fixture(autouse=True, scope="session")
def _no_process_left_after_the_session():
    """Backstop for processes started by module-scoped fixtures (which stop their own)."""
    yield
    kill_started()


@pytest.fixture(autouse=True)
def _no_process_left_behind():
    """Whatever a test (or its function-scoped fixtures) started through tests/nodes.py and
    did not stop dies when the test ends, passed or failed. Set up after the wider-scoped
    fixtures, so a module's shared network is not counted; torn down after the test's other
    function-scoped fixtures, which stop their nodes first."""
    mark = started_mark()
    yield
    kill_started(mark)


@pytest.fixture
def dev_node(tmp_path):
    """A running single-validator dev node; stopped (and its exit checked) after the test."""
    node = NodeProcess.init_dev(tmp_path).start()
    yield node
    if node.proc is not None:
        assert node.stop() == 0, node.log()


@pytest.fixture
def one_torch_thread():
    """Every test starts on one torch thread (the tolerance profile does not pin threads, and on a
    busy machine two OpenMP threads make tiny steps erratic, up to 30x slower); tests that want
    another count set it themselves. The caller's count comes back afterwards.

    Not autouse: the verifier test modules ask for it with `pytestmark`. torch is imported here,
    not at the top, so that test runs which never train do not pay for importing it."""
    import torch
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def net(tmp_path):
    """The two-validator job network of tests/jobnet.py: (nodes, worker list, tmp_path)."""
    from tests.jobnet import job_network
    yield from job_network(tmp_path)


@pytest.fixture
def forced_net(tmp_path):
    """The job network with a forced error in every shard, so that a test can count on one."""
    from tests.jobnet import job_network
    yield from job_network(tmp_path, forced_error_ppm=1_000_000)
