"""``saex convert`` end to end, and dictionaries of other libraries through ``saex eval``, ``features`` and
``dashboard`` on a tiny model: each imported file is evaluated beside a saex folder built independently with the
same function, and every number must agree."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from saex.dictionaries import SAE, load_dictionary
from saex.dictionaries.formats import sparsify
from saex.stages.convert import same_function
from tests._cli import run_cli
from tests._support import write_corpus
from tests.dictionaries._formats import (
    weights,
    write_dictionary_learning,
    write_gemma_scope_2,
    write_openai,
    write_sparsify,
)
from tests.store._helpers import RESID, cfg

D, F, K = 32, 96, 6


def _one_error_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("saex convert: error: ") and "Traceback" not in err, err
    return lines[0]


def _topk(seed=0, **kw) -> SAE:
    w = weights(D, F, seed)
    return SAE(w["W_enc"], w["W_dec"], w["b_enc"], w["b_dec"], "topk", k=K, metadata={"hook_name": RESID}, **kw)


def test_saex_to_sparsify_to_saex_is_exact(tmp_path):
    for i, apply in enumerate((True, False)):
        src = _topk(i, apply_b_dec_to_input=apply).save(tmp_path / f"src{i}")
        rc, out, err = run_cli("convert", src, "--to", "sparsify", "--out", tmp_path / f"sp{i}")
        assert rc == 0, err
        folder = tmp_path / f"sp{i}" / "layers.1"
        assert out.strip().startswith(f"wrote {folder} (sparsify; topk")
        # without apply_b_dec_to_input the encoder bias absorbs b_dec (sparsify always subtracts it)
        assert same_function(SAE.load(src), load_dictionary(folder)) < 1e-5
        back = tmp_path / f"back{i}"
        assert run_cli("convert", folder, "--to", "saelens", "--out", back)[0] == 0
        assert same_function(SAE.load(src), load_dictionary(back)) < 1e-5
        assert load_dictionary(back).metadata["hook_name"] == RESID


def test_foreign_formats_to_saelens(tmp_path):
    w = weights(D, F, 3)
    cfg2 = {"model_name": "gemma-3-270m", "hf_hook_point_in": "model.layers.1.output"}
    sources = {
        "gs2": write_gemma_scope_2(tmp_path / "gs2", w, cfg2),
        "openai": write_openai(tmp_path / "resid_post_mlp" / "autoencoders" / "1.pt", w, K),
    }
    for name, src in sources.items():
        rc, _, err = run_cli("convert", src, "--to", "saelens", "--out", tmp_path / f"{name}-sl")
        assert rc == 0, err
        a, b = load_dictionary(src), load_dictionary(tmp_path / f"{name}-sl")
        assert same_function(a, b) == 0 and b.metadata["hook_name"] == RESID
        assert b.metadata["converted_from"] == str(src) and b.normalize == a.normalize


def test_convert_errors(tmp_path):
    src = _topk().save(tmp_path / "src")
    gated = SAE(
        *(torch.zeros(s) for s in ((D, F), (F, D), (F,), (D,))),
        "gated",
        b_gate_F=torch.zeros(F),
        r_mag_F=torch.zeros(F),
    )
    gated.save(tmp_path / "gated")
    bad = {
        ("--to", "sparsify", "--out", tmp_path / "o1"): ("gated", "sparsify coders are TopK"),
        ("--to", "onnx", "--out", tmp_path / "o2"): ("src", "unknown --to 'onnx'"),
        ("--to", "saelens", "--out", src): ("src", "already holds a dictionary"),
        ("--to", "saelens", "--out", tmp_path / "o3", "--hook", "blocks.1.nope"): ("src", "unknown hook point"),
    }
    for args, (which, pattern) in bad.items():
        rc, _, err = run_cli("convert", tmp_path / which, *args)
        assert rc == 2 and pattern in _one_error_line(err), (args, err)
    rc, _, err = run_cli("convert", tmp_path / "missing", "--to", "saelens", "--out", tmp_path / "o4")
    assert rc == 2 and "does not exist" in _one_error_line(err)
    # a source whose hook saex cannot name: sparsify needs one to name its folder, and --hook supplies it
    odd = _topk()
    odd.metadata = {}
    odd.save(tmp_path / "nohook")
    rc, _, err = run_cli("convert", tmp_path / "nohook", "--to", "sparsify", "--out", tmp_path / "o5")
    assert rc == 2 and "--hook" in _one_error_line(err)
    rc, _, err = run_cli("convert", tmp_path / "nohook", "--to", "sparsify", "--out", tmp_path / "o5", "--hook", RESID)
    assert rc == 0, err
    assert (tmp_path / "o5" / "layers.1" / "cfg.json").is_file()


# -- imported dictionaries through the analyses --------------------------------------------------------------
@pytest.fixture(scope="module")
def store(tmp_path_factory, tiny_llama):
    from saex.stages.harvest import run as harvest

    root = tmp_path_factory.mktemp("convert-store")
    corpus = write_corpus(root / "corpus.jsonl")
    return harvest(cfg(root / "acts", tiny_llama, corpus, hooks=RESID, tokens=256, heldout_tokens=160), progress=False)


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    """(folder of imported files, folder of saex twins): each twin is a saex SAE built directly from the same
    tensors with the function the format documents."""
    root = tmp_path_factory.mktemp("imported")
    foreign, twins = root / "foreign", root / "twins"
    w = weights(D, F, 11)
    # the tiny model's residual stream is small: scale the encoder so codes are neither all zero nor all on
    w["W_enc"] *= 4
    args = (w["W_enc"], w["W_dec"], w["b_enc"], w["b_dec"])
    meta = {"hook_name": RESID}
    write_sparsify(foreign, "layers.1", w, K)
    SAE(*args, "topk", k=K, apply_b_dec_to_input=True, metadata=meta).save(twins / "layers.1")
    write_openai(foreign / "resid_post_mlp" / "1.pt", w, K)
    SAE(*args, "topk", k=K, apply_b_dec_to_input=True, normalize="layer_norm", metadata=meta).save(twins / "1")
    write_gemma_scope_2(foreign / "gs2", w, {"model_name": "gemma-3-270m", "hf_hook_point_in": "model.layers.1.output"})
    SAE(*args, "jumprelu", threshold_F=w["threshold"], metadata=meta).save(twins / "gs2")
    sd = {
        "encoder.weight": w["W_enc"].T.contiguous(),
        "encoder.bias": w["b_enc"],
        "decoder.weight": w["W_dec"].T.contiguous(),
        "bias": w["b_dec"],
    }
    write_dictionary_learning(foreign / "dl", "AutoEncoder", sd, layer=1)
    SAE(*args, "standard", apply_b_dec_to_input=True, metadata=meta).save(twins / "dl")
    # the OpenAI file sits one level down: name it directly
    return [foreign, foreign / "resid_post_mlp"], twins


def test_imported_dictionaries_evaluate_like_their_saex_twins(store, imported, tmp_path):
    foreign, twins = imported
    out_f, out_t = tmp_path / "eval-foreign", tmp_path / "eval-twins"
    dicts = ",".join(str(p) for p in foreign)
    rc, _, err = run_cli("eval", "--acts", store, "--dicts", dicts, "--out", out_f, "--contexts", 2, "--quiet")
    assert rc == 0, err
    assert run_cli("eval", "--acts", store, "--dicts", twins, "--out", out_t, "--contexts", 2, "--quiet")[0] == 0
    names = sorted(p.stem for p in (out_t / "results").iterdir())
    assert names == ["1", "dl", "gs2", "layers.1"]
    for name in names:
        a = json.loads((out_f / "results" / f"{name}.json").read_text())
        b = json.loads((out_t / "results" / f"{name}.json").read_text())
        assert a["hook"] == b["hook"] == RESID
        for part in ("metrics", "spliced"):
            numbers = {k: v for k, v in b[part].items() if isinstance(v, (int, float))}
            assert len(numbers) >= 5
            for key, v in numbers.items():
                assert a[part][key] == pytest.approx(v, rel=1e-5, abs=1e-7), (name, part, key)
        assert 0 < b["metrics"]["l0"] < F and b["spliced"]["n_tokens"] > 0, name


def test_imported_dictionaries_index_and_dashboard(store, imported, tmp_path):
    foreign, _ = imported
    out = tmp_path / "features"
    dicts = ",".join(str(p) for p in foreign)
    rc, _, err = run_cli("features", "--acts", store, "--dicts", dicts, "--out", out, "--fragment-length", 8, "--quiet")
    assert rc == 0, err
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == ["1", "dl", "gs2", "layers.1"]
    meta = json.loads((out / "1" / "index.json").read_text())
    assert (
        meta["identity"]["weights_sha256"]
        == __import__("hashlib").sha256((foreign[1] / "1.pt").read_bytes()).hexdigest()
    )
    site = tmp_path / "dash"
    rc, _, err = run_cli(
        "dashboard", "--features", out, "--dict", "1", "--out", site, "--analyses", "histogram,logit_lens", "--quiet"
    )
    assert rc == 0, err
    assert (site / "index.html").is_file()


# -- converted folders in the reference libraries (optional side environment) --------------------------------
@pytest.mark.skipif(
    not os.environ.get("SAEX_SAELENS_PYTHON"), reason="set SAEX_SAELENS_PYTHON to a Python with sparsify"
)
@pytest.mark.timeout(300)
def test_sparsify_opens_converted_folders(tmp_path):
    root = tmp_path / "check"
    x = torch.randn(64, D, generator=torch.Generator().manual_seed(1))
    exp = {"x": x}
    sources = {
        "sae": _topk(0),
        "nob": _topk(1, apply_b_dec_to_input=False),
    }
    w = weights(D, F, 2)
    sources["tc"] = SAE(
        w["W_enc"],
        w["W_dec"],
        w["b_enc"],
        w["b_dec"],
        "topk",
        k=K,
        W_skip_OD=w["W_skip"],
        metadata={"hook_name": "blocks.1.ln2.hook_normalized", "target_hook": "blocks.1.hook_mlp_out"},
    )
    for name, d in sources.items():
        sparsify.write(d, root / name)
        with torch.no_grad():
            exp[f"{name}.c"], exp[f"{name}.out"] = d.encode(x), d(x)
    save_file(exp, str(root / "expected.safetensors"))
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    script = Path(__file__).parents[1] / "dictionaries" / "_sparsify_check.py"
    proc = subprocess.run(
        [os.environ["SAEX_SAELENS_PYTHON"], str(script), str(root)],
        capture_output=True,
        text=True,
        env=env,
        timeout=280,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert sorted(report) == ["nob", "sae", "tc"]
    for name, r in report.items():
        assert "error" not in r, (name, r)
        assert r["encode_max_abs_diff"] < 1e-5 and r["forward_max_abs_diff"] < 1e-5, (name, r)
    assert report["tc"]["hookpoint"] == "layers.1.mlp"


def test_imported_dictionary_exports_to_neuronpedia_with_its_logit_lens(store, imported, tiny_llama, tmp_path):
    import gzip

    from saex.lm.loading import load_model

    foreign, _ = imported
    out = tmp_path / "features"
    rc, _, err = run_cli(
        "features", "--acts", store, "--dicts", foreign[1], "--out", out, "--fragment-length", 8, "--quiet"
    )
    assert rc == 0, err
    rc, _, err = run_cli(
        "export", "neuronpedia", "--features", out, "--out", tmp_path / "np", "--source-set", "oai", "--quiet"
    )
    assert rc == 0, err
    (batch,) = (tmp_path / "np").glob("*/1-oai/features/batch-0.jsonl.gz")  # <model id>/<layer>-<source set>
    rows = [json.loads(line) for line in gzip.decompress(batch.read_bytes()).decode().splitlines()]
    lm = load_model(str(tiny_llama))
    W_U = lm.model.get_output_embeddings().weight.detach().float()
    W_dec = load_dictionary(foreign[1] / "1.pt").W_dec_FD
    for r in rows[:5]:
        f = int(r["index"])
        logits = W_dec[f] @ W_U.T
        top = logits.topk(len(r["pos_values"]))
        assert r["pos_values"] == pytest.approx(top.values.tolist(), rel=1e-4, abs=1e-6)
        assert r["pos_str"] == [lm.tokenizer.decode([int(i)]) for i in top.indices]
        assert r["neg_values"][0] == pytest.approx(float(logits.min()), rel=1e-4, abs=1e-6)
        assert sum(r["logits_hist_data_bar_heights"]) == W_U.shape[0]
        assert r["hookName"] == RESID and r["vector"] == pytest.approx(W_dec[f].tolist())
