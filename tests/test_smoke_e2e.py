import pytest

pytestmark = pytest.mark.slow


def test_dev_node_produces_blocks(dev_node):
    status = dev_node.wait_height(2)
    assert status["height"] >= 2
    assert len(status["app_hash"]) == 64
