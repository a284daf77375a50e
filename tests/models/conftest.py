import pytest
import torch


@pytest.fixture(autouse=True)
def single_thread():
    """Tiny models run faster on one thread, and stay fast when other jobs load the CPU."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
