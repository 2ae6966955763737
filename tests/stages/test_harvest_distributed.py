"""Harvesting with several processes under torchrun writes the store a single process writes."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from saex.files import remove_stale_temporaries
from saex.stages.harvest import run as harvest
from tests._support import free_port, write_corpus
from tests.store._helpers import assert_same_content, cfg, cli_args, manifest


@pytest.mark.parametrize("tokens", [2000, 1664])  # 1664 = 13 full shards of 128 tokens: an odd count per rank
def test_two_ranks_write_the_single_process_store(tmp_path, tiny_llama, tokens):
    corpus = write_corpus(tmp_path / "c.jsonl", n_docs=300, seed=2)
    kw = dict(tokens=tokens, shard_tokens=128)
    single = harvest(cfg(tmp_path / "single", tiny_llama, corpus, **kw), progress=False)
    torchrun = Path(sys.executable).with_name("torchrun")
    proc = subprocess.run(
        [
            str(torchrun),
            "--nproc_per_node=2",
            f"--master_port={free_port()}",
            "-m",
            "saex.cli",
            "harvest",
            "--quiet",
            *cli_args(cfg(tmp_path / "ddp", tiny_llama, corpus, **kw)),
        ],
        env={**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("activation store") == 1  # one summary, from rank 0
    assert manifest(tmp_path / "ddp")["status"] == "complete"
    assert_same_content(tmp_path / "ddp", single)


def test_rust_writer_temporaries_are_cleaned(tmp_path):
    # safetensors writes through a '.tmpXXXXXX' file of its own; a kill mid-write leaves it behind.
    (tmp_path / "train").mkdir()
    for name in (".tmpAb3xYz", ".tmp-shard-00001.safetensors.q1w2e3", "shard-00000.safetensors"):
        (tmp_path / "train" / name).write_bytes(b"x")
    assert remove_stale_temporaries(tmp_path) == 2
    assert [p.name for p in (tmp_path / "train").iterdir()] == ["shard-00000.safetensors"]
