import pytest

from tests.nodes import NodeProcess


@pytest.fixture
def dev_node(tmp_path):
    """A running single-validator dev node; stopped (and its exit checked) after the test."""
    node = NodeProcess.init_dev(tmp_path).start()
    yield node
    if node.proc is not None:
        assert node.stop() == 0, node.log()
