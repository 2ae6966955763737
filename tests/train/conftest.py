import pytest


@pytest.fixture(scope="session")
def small_data():
    """(G, train, heldout): 32 ground-truth features in 16 dims; 8192 train rows, 1024 held-out rows."""
    from tests.train._synth import ground_truth

    return ground_truth(d=16, n=8192, n_heldout=1024, seed=0)


@pytest.fixture(scope="session")
def small_store(tmp_path_factory, small_data):
    """8 train shards of 1024 rows (two buffers of 4 shards per epoch), 1 held-out shard. Read-only."""
    from tests.train._synth import write_store

    _, X, H = small_data
    return write_store(tmp_path_factory.mktemp("small") / "acts", X, H, shard_rows=1024)
