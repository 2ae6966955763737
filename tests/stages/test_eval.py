"""``saex eval`` and ``saex mmcs`` end to end, checked against numpy and plain Hugging Face forwards."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from saex.cli import main
from saex.dictionaries.random_directions import random_directions
from saex.dictionaries.sae import SAE
from tests._support import write_corpus
from tests.store._helpers import MLP, RESID, all_tokens, cfg, read_shard, shard_lists

PNG = b"\x89PNG\r\n\x1a\n"
CONTEXTS = 4


def _one_error_line(err: str, command: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got {err!r}"
    assert lines[0].startswith(f"saex {command}: error: ") and "Traceback" not in err
    return lines[0]


def _identity(d, hook=RESID, **meta):
    return SAE(
        torch.eye(d), torch.eye(d), torch.zeros(d), torch.zeros(d), "linear", metadata={"hook_name": hook, **meta}
    )


@pytest.fixture(scope="module")
def store(tmp_path_factory, tiny_llama):
    from saex.stages.harvest import run as harvest

    root = tmp_path_factory.mktemp("eval-store")
    corpus = write_corpus(root / "corpus.jsonl")
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return harvest(
            cfg(root / "acts", tiny_llama, corpus, hooks=RESID, tokens=256, heldout_tokens=160), progress=False
        )
    finally:
        torch.set_num_threads(before)


@pytest.fixture(scope="module")
def dicts(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval-dicts")
    _identity(32).save(root / "identity")
    random_directions(32, 64, seed=0, metadata={"hook_name": RESID, "baseline": "random"}).save(root / "random")
    return root


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory, store, dicts):
    out = tmp_path_factory.mktemp("eval") / "out"
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        code = main(
            [
                "eval",
                "--acts",
                str(store),
                "--dicts",
                f"{dicts / 'identity'},{dicts / 'random'}",
                "--contexts",
                str(CONTEXTS),
                "--context-batch",
                "3",
                "--reference",
                str(dicts / "identity"),
                "--out",
                str(out),
                "--quiet",
                "--device",
                "cpu",
                "--lm-device",
                "cpu",
                "--lm-dtype",
                "float32",
            ]
        )
    finally:
        torch.set_num_threads(before)
    assert code == 0
    return out


def _result(out, name):
    return json.loads((Path(out) / "results" / f"{name}.json").read_text())


def _kept(store) -> np.ndarray:
    """The held-out rows eval's default row filter keeps, from the tokens and the manifest directly: not
    position 0 of a context, not the separator or BOS token."""
    tok = all_tokens(store, "heldout").numpy()
    packing = json.loads((Path(store) / "manifest.json").read_text())["packing"]
    special = [i for i in (packing["separator_id"], packing["bos_id"]) if i is not None]
    keep = np.ones(tok.shape, dtype=bool)
    keep[:, 0] = False
    return (keep & ~np.isin(tok, special)).reshape(-1)


def _heldout(store):
    """The held-out activations that eval's metrics use by default (the kept rows)."""
    X = (
        torch.cat([read_shard(store / "heldout" / s["file"])[RESID].float() for s in shard_lists(store)["heldout"]])
        .double()
        .numpy()
    )
    return X[_kept(store)]


@pytest.fixture(scope="module")
def reference_ce(store, tiny_llama, dicts):
    """Clean, zero-ablated and random-spliced CE on the first held-out contexts, from a plain HF forward."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(tiny_llama)).eval()
    ids = all_tokens(store, "heldout")[:CONTEXTS].long()
    V_FD = load_file(str(dicts / "random" / "sae_weights.safetensors"))["W_dec"]
    layer = model.model.layers[1]

    def ce(replace=None):
        handle = None
        if replace is not None:
            handle = layer.register_forward_hook(
                lambda m, a, out: (replace(out[0]), *out[1:]) if isinstance(out, tuple) else replace(out)
            )
        try:
            with torch.no_grad():
                logits = model(input_ids=ids, use_cache=False).logits
        finally:
            if handle is not None:
                handle.remove()
        return F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]).double(), ids[:, 1:].reshape(-1)).item()

    return {
        "clean": ce(),
        "zero": ce(torch.zeros_like),
        "random": ce(lambda x: (x @ V_FD.T).relu() @ V_FD),
        "n_tokens": ids.shape[0] * (ids.shape[1] - 1),
    }


def test_result_files(evaluated, store):
    assert sorted(p.name for p in (evaluated / "results").iterdir()) == ["identity.json", "random.json"]
    assert (evaluated / "eval.json").is_file()
    r = _result(evaluated, "identity")
    assert r["hook"] == RESID and r["d_in"] == 32 and r["d_dict"] == 32 and r["ratio"] == 1
    assert r["architecture"] == "linear" and r["kind"] == "linear"
    n = sum(s["rows"] for s in shard_lists(store)["heldout"])
    kept = int(_kept(store).sum())
    # position 0 of each of the 10 contexts and the separators inside them are left out
    assert n == 160 and kept <= n - 10 and r["metrics"]["n_activations"] == kept
    assert r["metrics"]["row_filter"] == {"exclude_first": 1, "exclude_special_tokens": True, "max_norm_ratio": 20.0}
    assert r["spliced"]["positions"] == "all"
    assert r["metrics"]["fvu"] == pytest.approx(0.0, abs=1e-12) and r["metrics"]["mse"] == pytest.approx(0.0, abs=1e-12)
    assert r["metrics"]["cosine"] == pytest.approx(1.0) and r["metrics"]["norm_ratio"] == pytest.approx(1.0)
    s = r["spliced"]
    assert s["n_contexts"] == CONTEXTS and s["n_tokens"] == CONTEXTS * 15
    assert s["ce_recovered"] == pytest.approx(1.0, abs=1e-6)
    assert s["kl"] == pytest.approx(0.0, abs=1e-7)
    assert s["ce_spliced"] == pytest.approx(s["ce_clean"], abs=1e-6)
    assert _result(evaluated, "random")["kind"] == "random"


def test_device_options_are_recorded_not_part_of_the_identity(evaluated):
    """Run with --device cpu --lm-device cpu --lm-dtype float32: the marker records where it ran; a result's
    identity leaves that out (float32 is the precision every earlier result had)."""
    marker = json.loads((evaluated / "eval.json").read_text())
    assert marker["placement"] == {"device": "cpu", "lm_device": "cpu", "lm_dtype": "float32"}
    assert marker["config"]["device"] == "cpu" and marker["config"]["lm_dtype"] == "float32"
    options = _result(evaluated, "identity")["identity"]["options"]
    assert not {"device", "lm_device", "lm_dtype"} & set(options) and options["contexts"] == CONTEXTS


def test_metrics_match_numpy(evaluated, store, dicts):
    X = _heldout(store)
    V = load_file(str(dicts / "random" / "sae_weights.safetensors"))["W_dec"].double().numpy()
    c = np.maximum(X @ V.T, 0)
    err = ((X - c @ V) ** 2).sum()
    m = _result(evaluated, "random")["metrics"]
    assert m["fvu"] == pytest.approx(err / ((X - X.mean(0)) ** 2).sum(), rel=1e-5)
    assert m["mse"] == pytest.approx(err / X.size, rel=1e-5)
    assert m["l0"] == pytest.approx((c > 0).sum(1).mean(), rel=1e-6)
    fires = (c > 0).sum(0)
    assert m["alive"] == int((fires > 10).sum()) and m["never_fired"] == int((fires == 0).sum())
    assert m["alive"] + m["dead"] == 64 and m["n_counted"] == m["n_activations"] == len(X)


def test_spliced_ce_matches_hf(evaluated, reference_ce):
    ref = reference_ce
    for name in ("identity", "random"):
        s = _result(evaluated, name)["spliced"]
        assert s["n_tokens"] == ref["n_tokens"]
        assert s["ce_clean"] == pytest.approx(ref["clean"], abs=1e-5)
        assert s["ce_zero"] == pytest.approx(ref["zero"], abs=1e-5)
        assert s["ppl_clean"] == pytest.approx(math.exp(ref["clean"]), rel=1e-5)
    s = _result(evaluated, "random")["spliced"]
    assert s["ce_spliced"] == pytest.approx(ref["random"], abs=1e-5)
    assert s["ce_recovered"] * (ref["zero"] - ref["clean"]) == pytest.approx(ref["zero"] - ref["random"], abs=2e-5)
    assert s["kl"] > 0


def test_mmcs_to_reference(evaluated, dicts):
    r = _result(evaluated, "identity")["mmcs_to_reference"]
    assert r["mmcs"] == pytest.approx(1.0) and r["hungarian_mmcs"] == pytest.approx(1.0)
    assert r["reference"] == str(dicts / "identity")
    # against the axes, each unit atom's best cosine is its largest coordinate
    V = load_file(str(dicts / "random" / "sae_weights.safetensors"))["W_dec"].double().numpy()
    V = V / np.linalg.norm(V, axis=1, keepdims=True)
    r = _result(evaluated, "random")["mmcs_to_reference"]
    assert r["mmcs"] == pytest.approx(V.max(1).mean(), abs=1e-6)
    assert r["matched_pairs"] == 32


def test_comparison(evaluated, store, dicts):
    rows = json.loads((evaluated / "comparison.json").read_text())
    assert [r["name"] for r in rows] == ["identity", "random"]
    for row in rows:
        res = _result(evaluated, row["name"])
        assert row["fvu"] == res["metrics"]["fvu"] and row["l0"] == res["metrics"]["l0"]
        assert row["ce_recovered"] == res["spliced"]["ce_recovered"] and row["kl"] == res["spliced"]["kl"]
        assert row["mmcs"] == res["mmcs_to_reference"]["mmcs"]
        assert row["hook"] == RESID and row["path"] == str(dicts / row["name"])
    # the identity's codes are the activations themselves: L0 counts their non-zero coordinates
    assert rows[0]["l0"] == pytest.approx((_heldout(store) != 0).sum(1).mean())
    md = (evaluated / "comparison.md").read_text()
    lines = md.splitlines()
    assert lines[0].startswith("| dictionary | kind |") and "CE recovered" in lines[0] and "MMCS" in lines[0]
    assert lines[2].startswith("| identity |") and lines[3].startswith("| random |")
    assert f"At {RESID}: the model's own CE" in md


def test_plots(evaluated):
    plots = evaluated / "plots"
    for rel in ("fvu_vs_l0", "alive_vs_alpha", "density/identity", "density/random"):
        assert (plots / f"{rel}.png").read_bytes()[:8] == PNG, rel
        assert json.loads((plots / f"{rel}.json").read_text()), rel
    pts = json.loads((plots / "fvu_vs_l0.json").read_text())["points"]
    assert [(p["name"], p["fvu"]) for p in pts] == [
        (n, _result(evaluated, n)["metrics"]["fvu"]) for n in ("identity", "random")
    ]
    dens = json.loads((plots / "density" / "random.json").read_text())
    m = _result(evaluated, "random")["metrics"]
    assert sum(dens["counts"]) == 64 - m["never_fired"] and dens["never_fired"] == m["never_fired"]


def test_rerun_is_a_no_op_and_a_changed_dictionary_is_redone(tmp_path, store, dicts, capsys):
    d = tmp_path / "dicts"
    shutil.copytree(dicts, d)
    out = tmp_path / "out"
    argv = ["eval", "--acts", str(store), "--dicts", str(d), "--contexts", "2", "--out", str(out), "--quiet"]
    assert main(argv) == 0
    first = capsys.readouterr().out
    assert "| identity |" in first and f"results, comparison and plots in {out}" in first
    res = {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in (out / "results").iterdir()}
    assert sorted(res) == ["identity.json", "random.json"]  # a folder of dictionaries names each
    assert main(argv) == 0
    assert {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in (out / "results").iterdir()} == res
    assert capsys.readouterr().out == first

    random_directions(32, 64, seed=1, metadata={"hook_name": RESID}).save(d / "random")
    assert main(argv) == 0
    assert (out / "results" / "identity.json").stat().st_mtime_ns == res["identity.json"][0]
    assert (out / "results" / "random.json").read_bytes() != res["random.json"][1]

    # other options make a different result
    assert main(argv[:-1] + ["--alive-threshold", "0", "--quiet"]) == 0
    assert json.loads((out / "results" / "identity.json").read_text())["metrics"]["alive_threshold"] == 0


def _assert_exit_2(argv, capsys, *fragments):
    capsys.readouterr()
    assert main(argv) == 2
    captured = capsys.readouterr()
    line = _one_error_line(captured.err, argv[0])
    for f in fragments:
        assert f in line, (f, line)
    assert captured.out == ""
    return line


def test_width_mismatch_exits_2(tmp_path, store, capsys):
    _identity(16).save(tmp_path / "narrow")
    _assert_exit_2(
        ["eval", "--acts", str(store), "--dicts", str(tmp_path / "narrow"), "--out", str(tmp_path / "o")],
        capsys,
        "d_in 16",
        "width 32",
        RESID,
    )
    assert not (tmp_path / "o").exists()


def test_hook_missing_from_store_exits_2(tmp_path, store, capsys):
    _identity(48, hook=MLP).save(tmp_path / "mlp")
    _assert_exit_2(
        ["eval", "--acts", str(store), "--dicts", str(tmp_path / "mlp"), "--out", str(tmp_path / "o")],
        capsys,
        MLP,
        "lacks",
    )
    assert not (tmp_path / "o").exists()


def test_bad_dicts_and_options_exit_2(tmp_path, store, dicts, capsys):
    base = ["eval", "--acts", str(store), "--out", str(tmp_path / "o")]
    _assert_exit_2(base + ["--dicts", str(tmp_path / "nowhere")], capsys, "nowhere", "does not exist")
    (tmp_path / "empty").mkdir()
    _assert_exit_2(base + ["--dicts", str(tmp_path / "empty")], capsys, "holds no dictionary folders")
    SAE(torch.eye(32), torch.eye(32), torch.zeros(32), torch.zeros(32), "linear").save(tmp_path / "nohook")
    _assert_exit_2(base + ["--dicts", str(tmp_path / "nohook")], capsys, "--hook")
    _assert_exit_2(base + ["--dicts", str(dicts / "identity"), "--contexts", "-1"], capsys, "--contexts")
    assert not (tmp_path / "o").exists()


def test_metric_only_eval_on_a_synthetic_store(tmp_path, capsys):
    from tests.train._synth import HOOK, write_store

    g = torch.Generator().manual_seed(0)
    X = torch.randn(128, 8, generator=g) * 2 + 1
    H = torch.randn(64, 8, generator=g) * 2 + 1
    store = write_store(tmp_path / "syn", X, H)
    W = torch.randn(8, 12, generator=g)
    b = torch.randn(12, generator=g)
    D = torch.randn(12, 8, generator=g) * 0.3
    for parent in ("a", "b"):  # same folder name in two parents
        SAE(W, D, b, torch.zeros(8), "standard", metadata={"hook_name": HOOK, "alpha": 0.1}).save(
            tmp_path / parent / "sae"
        )
    out = tmp_path / "out"
    assert (
        main(
            [
                "eval",
                "--acts",
                str(store),
                "--dicts",
                f"{tmp_path / 'a'},{tmp_path / 'b' / 'sae'}",
                "--contexts",
                "0",
                "--alive-threshold",
                "3",
                "--batch-size",
                "5",
                "--out",
                str(out),
                "--exclude-first",
                "0",
                "--quiet",
            ]
        )
        == 0
    )  # synthetic rows: every position counts
    assert sorted(p.name for p in (out / "results").iterdir()) == ["a__sae.json", "b__sae.json"]
    r = json.loads((out / "results" / "a__sae.json").read_text())
    assert r["name"] == "a/sae" and r["spliced"] is None and r["alpha"] == 0.1
    Hn, Wn, bn, Dn = (t.double().numpy() for t in (H, W, b, D))
    c = np.maximum(Hn @ Wn + bn, 0)
    err = ((Hn - c @ Dn) ** 2).sum()
    assert r["metrics"]["fvu"] == pytest.approx(err / ((Hn - Hn.mean(0)) ** 2).sum(), rel=1e-5)
    assert r["metrics"]["l0"] == pytest.approx((c > 0).sum(1).mean())
    assert r["metrics"]["alive"] == int(((c > 0).sum(0) > 3).sum())
    rows = json.loads((out / "comparison.json").read_text())
    assert [row["name"] for row in rows] == ["a/sae", "b/sae"] and rows[0]["ce_recovered"] is None
    md = (out / "comparison.md").read_text()
    assert "CE" not in md.splitlines()[0] and "MMCS" not in md and "own CE" not in md
    assert (out / "plots" / "density" / "a__sae.png").read_bytes()[:8] == PNG
    series = json.loads((out / "plots" / "alive_vs_alpha.json").read_text())["series"]
    assert list(series) == ["standard R=1.5"] and len(series["standard R=1.5"]) == 2


def test_mmcs_command(tmp_path, capsys):
    g = torch.Generator().manual_seed(2)
    A, B = torch.randn(6, 4, generator=g), torch.randn(5, 4, generator=g)
    for name, W in (("A", A), ("B", B)):
        SAE(W.T.clone(), W, torch.zeros(len(W)), torch.zeros(4), "standard").save(tmp_path / name)
    capsys.readouterr()
    assert main(["mmcs", str(tmp_path / "A"), str(tmp_path / "B"), "--json", "--device", "cpu"]) == 0
    r = json.loads(capsys.readouterr().out)
    An = A.double().numpy() / np.linalg.norm(A.double().numpy(), axis=1, keepdims=True)
    Bn = B.double().numpy() / np.linalg.norm(B.double().numpy(), axis=1, keepdims=True)
    cos = Bn @ An.T
    assert r["mmcs"] == pytest.approx(cos.max(1).mean(), abs=1e-6)
    from itertools import permutations

    best = max(sum(cos[i, p[i]] for i in range(5)) for p in permutations(range(6), 5))
    assert r["hungarian_mmcs"] == pytest.approx(best / 5, abs=1e-6) and r["matched_pairs"] == 5

    assert main(["mmcs", str(tmp_path / "A"), str(tmp_path / "A"), "--json", "--no-hungarian"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert set(r) == {"mmcs", "frac_max_above_0.9"} and r["mmcs"] == pytest.approx(1.0)

    assert main(["mmcs", str(tmp_path / "A"), str(tmp_path / "B")]) == 0
    assert capsys.readouterr().out.startswith("mmcs ")

    _identity(3).save(tmp_path / "C")
    _assert_exit_2(["mmcs", str(tmp_path / "A"), str(tmp_path / "C")], capsys, "4", "3")
    _assert_exit_2(["mmcs", str(tmp_path / "A"), str(tmp_path / "nowhere")], capsys, "nowhere")


def test_tokens_limits_rows_across_shards(tmp_path):
    from tests.train._synth import HOOK, write_store

    g = torch.Generator().manual_seed(3)
    H = torch.randn(64, 8, generator=g) * torch.linspace(0.5, 2, 8)
    store = write_store(tmp_path / "syn", torch.randn(64, 8, generator=g), H, shard_rows=16)  # 4 held-out shards
    W = torch.randn(8, 8, generator=g)
    SAE(W, W.T.clone(), torch.zeros(8), torch.zeros(8), "standard", metadata={"hook_name": HOOK}).save(tmp_path / "d")
    out = tmp_path / "out"
    assert (
        main(
            [
                "eval",
                "--acts",
                str(store),
                "--dicts",
                str(tmp_path / "d"),
                "--contexts",
                "0",
                "--tokens",
                "40",
                "--alive-threshold",
                "30",
                "--batch-size",
                "7",
                "--out",
                str(out),
                "--quiet",
            ]
        )
        == 0
    )
    m = json.loads((out / "results" / "d.json").read_text())["metrics"]
    assert m["n_activations"] == 40
    # the first 40 rows the default filter keeps: position 0 of each 8-token context is left out
    kept, Wn = H[torch.arange(64) % 8 != 0].double().numpy(), W.double().numpy()
    X = kept[:40]
    err = ((X - np.maximum(X @ Wn, 0) @ Wn.T) ** 2).sum()
    assert m["fvu"] == pytest.approx(err / ((X - X.mean(0)) ** 2).sum(), rel=1e-5)
    assert m["l0"] == pytest.approx((X @ Wn > 0).sum(1).mean())
    # the firing counts go on over all 56 kept rows (the encoder only): alive > 30 firings, never fired
    fires_all, fires_40 = (kept @ Wn > 0).sum(0), (X @ Wn > 0).sum(0)
    assert m["n_counted"] == 56
    assert m["alive"] == int((fires_all > 30).sum()) == 8 - m["dead"]
    assert int((fires_40 > 30).sum()) != m["alive"]  # counted over the 40 metric rows, the answer would differ
    assert m["never_fired"] == int((fires_all == 0).sum())
    assert sum(m["density_histogram"]["counts"]) + m["density_histogram"]["never_fired"] == 8


def test_a_store_harvested_from_a_relative_model_path_evaluates_from_another_folder(tmp_path, monkeypatch, capsys):
    from saex.stages.harvest import run as harvest
    from tests._support import save_tiny_model

    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    monkeypatch.chdir(a)
    save_tiny_model(Path("tiny"), "llama")
    write_corpus(Path("corpus.jsonl"))
    harvest(cfg("acts", "tiny", "corpus.jsonl", hooks=RESID, tokens=256, heldout_tokens=64), progress=False)
    _identity(32).save("id")
    monkeypatch.chdir(b)
    code = main(["eval", "--acts", "../a/acts", "--dicts", "../a/id", "--contexts", "2", "--out", "out", "--quiet"])
    assert code == 0, capsys.readouterr().err
    assert _result(b / "out", "id")["spliced"]["kl"] == pytest.approx(0.0, abs=1e-6)
    # another model's weights are refused by name
    save_tiny_model(Path("other"), "llama", seed=1)
    code = main(
        [
            "eval",
            "--acts",
            "../a/acts",
            "--dicts",
            "../a/id",
            "--contexts",
            "2",
            "--out",
            "out2",
            "--model",
            "other",
            "--quiet",
        ]
    )
    line = _one_error_line(capsys.readouterr().err, "eval")
    assert code == 2 and "other" in line and "same weights" in line


TC_IN, TC_OUT = "blocks.1.ln2.hook_normalized", "blocks.1.hook_mlp_out"


def test_transcoders_are_scored_on_their_target_and_spliced_as_replacements(tmp_path, tiny_llama):
    """A transcoder from the MLP's input to its output: FVU of its prediction of hook_mlp_out (numpy), and CE
    with the MLP's output replaced by that prediction in the same forward (a plain HF forward hook)."""
    from transformers import AutoModelForCausalLM

    from saex.stages.harvest import run as harvest

    corpus = write_corpus(tmp_path / "corpus.jsonl")
    store = harvest(
        cfg(tmp_path / "acts", tiny_llama, corpus, hooks=f"{TC_IN},{TC_OUT}", tokens=256, heldout_tokens=160),
        progress=False,
    )
    g = torch.Generator().manual_seed(3)
    W_enc, W_dec = torch.randn(32, 48, generator=g) / 6, torch.randn(48, 32, generator=g) / 6
    W_skip = torch.randn(32, 32, generator=g) / 10
    meta = {"hook_name": TC_IN, "target_hook": TC_OUT}
    tc = SAE(W_enc, W_dec, torch.full((48,), -0.1), torch.randn(32, generator=g) / 10, metadata=meta, W_skip_OD=W_skip)
    tc.save(tmp_path / "dicts" / "tc")
    out = tmp_path / "eval"
    assert main(["eval", "--acts", str(store), "--dicts", str(tmp_path / "dicts"), "--contexts", str(CONTEXTS),
                 "--out", str(out), "--quiet"]) == 0  # fmt: skip
    r = _result(out, "tc")
    assert r["target"] == TC_OUT and r["hook"] == TC_IN
    # FVU on the rows kept at both hook points, against numpy
    keep = _kept(store)
    shards = [read_shard(store / "heldout" / s["file"]) for s in shard_lists(store)["heldout"]]
    X = torch.cat([s[TC_IN].float() for s in shards]).double().numpy()[keep]
    Y = torch.cat([s[TC_OUT].float() for s in shards]).double().numpy()[keep]
    Wd, We, Ws = W_dec.double().numpy(), W_enc.double().numpy(), W_skip.double().numpy()
    c = np.maximum(X @ We - 0.1, 0)
    pred = c @ Wd + tc.b_dec_D.double().numpy() + X @ Ws.T
    assert r["metrics"]["fvu"] == pytest.approx(((Y - pred) ** 2).sum() / ((Y - Y.mean(0)) ** 2).sum(), rel=1e-5)
    # CE with the MLP replaced by the transcoder, and with its output zeroed, from a plain HF forward
    model = AutoModelForCausalLM.from_pretrained(str(tiny_llama)).eval()
    ids = all_tokens(store, "heldout")[:CONTEXTS].long()
    mlp = model.model.layers[1].mlp

    def ce(replace):
        handle = mlp.register_forward_hook(lambda m, args, o: replace(args[0], o))
        try:
            with torch.no_grad():
                logits = model(input_ids=ids, use_cache=False).logits
        finally:
            handle.remove()
        return F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]).double(), ids[:, 1:].reshape(-1)).item()

    s = r["spliced"]
    assert s["ce_spliced"] == pytest.approx(ce(lambda x, o: tc(x)), abs=1e-5)
    assert s["ce_zero"] == pytest.approx(ce(lambda x, o: torch.zeros_like(o)), abs=1e-5)
    assert s["ce_spliced"] != pytest.approx(s["ce_clean"], abs=1e-3)


def test_a_transcoder_whose_target_is_missing_exits_2(tmp_path, store, capsys):
    meta = {"hook_name": RESID, "target_hook": TC_OUT}
    SAE(torch.eye(32), torch.eye(32), torch.zeros(32), torch.zeros(32), metadata=meta, transcoder=True).save(
        tmp_path / "tc"
    )
    _assert_exit_2(
        ["eval", "--acts", str(store), "--dicts", str(tmp_path / "tc"), "--out", str(tmp_path / "o")],
        capsys,
        f"transcoder tc reconstructs '{TC_OUT}', which the store",
    )
