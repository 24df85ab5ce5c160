import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread():
    """The mesh tests run many small ops: with several pytest workers sharing 2 cores, torch's intra-op threads
    oversubscribe them and small ops get 10-25x slower. One thread per test is faster here; restored after."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
