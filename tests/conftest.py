"""Fixtures shared by the test modules."""
import pytest
import torch


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread for in-process training runs: on a loaded 2-core machine two threads
    spin-wait (a nano training step took 10 s instead of 0.7 s). Use with
    `pytestmark = pytest.mark.usefixtures("one_thread")`."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
