import pytest

from tests.nodes import NodeProcess


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
