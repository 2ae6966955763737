"""Shared fixtures: tiny models of each supported family, corpora, activation stores, all built locally
(the helpers they use are in tests/_support.py).

No test touches the network: HF_HUB_OFFLINE is set before anything imports huggingface_hub, and the
saex cache points at a per-session folder unless SAEX_TEST_REAL_CACHE keeps the user's (so the
embedded model is converted once, not in every test session).
"""

from __future__ import annotations

import os
import shutil

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

from tests._support import FAMILIES, save_tiny_model, write_corpus  # noqa: E402


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tiny-models")
    return {f: save_tiny_model(root / f, f) for f in FAMILIES}


@pytest.fixture(scope="session")
def tiny_llama(tiny_models) -> Path:
    return tiny_models["llama"]


@pytest.fixture
def corpus_file(tmp_path) -> Path:
    return write_corpus(tmp_path / "corpus.jsonl")


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """The tests' matmuls are tiny and gain nothing from threads, while idle OpenMP workers spinning on a
    busy 2-core machine slow them down many times over; one thread also keeps results reproducible
    across processes."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(autouse=True, scope="session")
def _isolated_cache(tmp_path_factory):
    if not os.environ.get("SAEX_TEST_REAL_CACHE"):
        os.environ["SAEX_CACHE"] = str(tmp_path_factory.mktemp("saex-cache"))
    yield


# Stores harvested once per session and shared read-only by the store and harvest tests (copy one before
# mutating it).
@pytest.fixture(scope="session")
def shared_corpus(tmp_path_factory):
    return write_corpus(tmp_path_factory.mktemp("store-corpus") / "corpus.jsonl", n_docs=200, seed=0)


@pytest.fixture(scope="session")
def make_store(tmp_path_factory, tiny_llama, shared_corpus):
    """``make_store(**config overrides)`` -> path of a complete store on the tiny llama (cached, read-only)."""
    from saex.stages.harvest import run as harvest
    from tests.store._helpers import cfg

    cache = {}

    def make(**kw):
        key = tuple(sorted(kw.items()))
        if key not in cache:
            out = tmp_path_factory.mktemp("store") / "acts"
            harvest(cfg(out, tiny_llama, shared_corpus, **kw), progress=False)
            cache[key] = out
        return cache[key]

    return make


@pytest.fixture
def copy_store(tmp_path):
    """Copy a shared store into this test's folder so the test may modify it."""

    def copy(src, name="acts"):
        dst = tmp_path / name
        shutil.copytree(src, dst)
        return dst

    return copy


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


@pytest.fixture(scope="session")
def transcoder_data():
    """(G_in, G_out, (x, y) train, (x, y) held-out): 32 sparse latents, x in 16 dims, y in 12."""
    from tests.train._synth import transcoder_data

    return transcoder_data(d=16, d_out=12, n=8192, n_heldout=1024, seed=3)


@pytest.fixture(scope="session")
def transcoder_store(tmp_path_factory, transcoder_data):
    """The transcoder data as a store with two hook points per row (input and target). Read-only."""
    from tests.train._synth import TRANSCODER_IN, TRANSCODER_OUT, write_store

    _, _, (x, y), (hx, hy) = transcoder_data
    path = tmp_path_factory.mktemp("transcoder") / "acts"
    return write_store(path, x, hx, hook=TRANSCODER_IN, shard_rows=1024, more={TRANSCODER_OUT: (y, hy)})
