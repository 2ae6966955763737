import pytest


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """Tiny matmuls gain nothing from threads; idle OpenMP workers spinning on a busy 2-core machine slow
    these tests down many times over (and one thread keeps results reproducible across processes)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
