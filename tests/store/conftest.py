"""Stores harvested once per session and shared read-only by the store tests (copy one before mutating it)."""

from __future__ import annotations

import shutil

import pytest

from tests.conftest import write_corpus
from tests.store._helpers import cfg


@pytest.fixture(scope="session")
def shared_corpus(tmp_path_factory):
    return write_corpus(tmp_path_factory.mktemp("store-corpus") / "corpus.jsonl", n_docs=200, seed=0)


@pytest.fixture(scope="session")
def make_store(tmp_path_factory, tiny_llama, shared_corpus):
    """``make_store(**config overrides)`` -> path of a complete store on the tiny llama (cached, read-only)."""
    from saex.stages.harvest import run as harvest

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
