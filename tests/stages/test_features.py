"""``saex features`` end to end on a synthetic store: one index per dictionary, resumable, one-line errors."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from saex.cli import main
from saex.dictionaries.sae import SAE
from saex.features.fragments import make_fragments
from saex.features.index import FeatureIndex
from saex.store.reader import ActivationStore, store_hash
from tests.features._helpers import (
    HOOK,
    C,
    D,
    L,
    T,
    all_windows,
    encode_np,
    heldout_data,
    heldout_docs,
    heldout_tokens,
    linear_dict,
    standard_sae,
    write_store,
)

OPTS = [
    "--fragment-length",
    str(L),
    "--top",
    "3",
    "--random",
    "5",
    "--zero",
    "4",
    "--chunk",
    "7",
    "--no-decode",
    "--quiet",
]


def _one_error_line(err: str, command: str = "features") -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got {err!r}"
    assert lines[0].startswith(f"saex {command}: error: ") and "Traceback" not in err
    return lines[0]


def _train():
    return torch.from_numpy(np.random.default_rng(9).normal(size=(2 * T, D)).astype(np.float32))


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root = tmp_path_factory.mktemp("features-cli-store")
    return write_store(
        root / "acts",
        _train(),
        torch.from_numpy(heldout_data()),
        T=T,
        shard_rows=4 * T,
        tokens_CT=heldout_tokens(),
        docs_CT=heldout_docs(),
    )


@pytest.fixture
def dicts(tmp_path):
    root = tmp_path / "dicts"
    standard_sae().save(root / "std")
    linear_dict().save(root / "lin")
    return root


def _run(store, dicts, out, *extra):
    return main(["features", "--acts", str(store), "--dicts", str(dicts), "--out", str(out), *OPTS, *extra])


def _stamp(path: Path):
    st = path.stat()
    return st.st_ino, st.st_mtime_ns, hashlib.sha256(path.read_bytes()).hexdigest()


def _stamps(out: Path, names=("std", "lin")):
    return {(n, f): _stamp(out / n / f) for n in names for f in ("index.json", "index.safetensors")}


def test_builds_one_index_per_dictionary(store, dicts, tmp_path, capsys):
    out = tmp_path / "out"
    assert _run(store, dicts, out, "--no-one-per-document") == 0
    assert capsys.readouterr().out.strip() == f"feature indexes in {out}"
    assert sorted(p.name for p in out.iterdir()) == ["features.json", "lin", "std"]
    for name in ("std", "lin"):
        assert sorted(p.name for p in (out / name).iterdir()) == ["index.json", "index.safetensors"]
    cfg = json.loads((out / "features.json").read_text())["config"]
    assert cfg["fragment_length"] == L and cfg["top"] == 3 and cfg["random"] == 5 and cfg["zero"] == 4
    assert cfg["chunk"] == 7 and cfg["one_per_document"] is False and cfg["decode"] is False
    for name, d in (("std", standard_sae()), ("lin", linear_dict())):
        meta = json.loads((out / name / "index.json").read_text())
        ident = meta["identity"]
        weights = (dicts / name / "sae_weights.safetensors").read_bytes()
        assert ident["weights_sha256"] == hashlib.sha256(weights).hexdigest()
        assert ident["hook"] == HOOK and ident["store_hash"] == store_hash(ActivationStore(store), HOOK)
        options = {k: v for k, v in cfg.items() if k not in ("acts", "dicts", "out", "model")}
        assert ident["options"] == options | {"device": "cpu"}  # the kind of device, as resolved
        assert meta["dictionary"]["name"] == name and meta["dictionary"]["path"] == str(dicts / name)
        assert meta["architecture"] == d.architecture and meta["d_dict"] == d.d_dict
        assert meta["n_fragments"] == C * (T // L) and meta["model"] == "synthetic"
        ix = FeatureIndex(out / name)
        assert ix.slots == {"top": 3, "random": 5, "zero": 4} and ix.n_features == d.d_dict
        # the top examples of every feature, recomputed by brute force
        fmax = encode_np(d, heldout_data())[all_windows(C, T, L)].max(1)
        for f in range(d.d_dict):
            active = np.flatnonzero(fmax[:, f] > 0)
            want = active[np.argsort(-fmax[active, f])][:3]
            np.testing.assert_array_equal(ix.examples(f, "top")[0], want)


def test_one_per_document_by_default(store, dicts, tmp_path):
    out = tmp_path / "out"
    assert _run(store, dicts, out, "--seed", "3", "--device", "cpu") == 0
    ix = FeatureIndex(out / "std")
    want = make_fragments(heldout_tokens(), heldout_docs(), L, True, None, 3)
    assert ix.meta["n_fragments"] == want.n < C * (T // L)
    np.testing.assert_array_equal(ix.t["fragment_rows"].numpy(), want.rows_NL[:, 0])
    assert len(set(ix.t["fragment_docs"].tolist())) == want.n
    assert _run(store, dicts, tmp_path / "lim", "--fragments", "4") == 0
    assert FeatureIndex(tmp_path / "lim" / "lin").meta["n_fragments"] == 4


def test_rerun_is_a_no_op_and_changes_rebuild(store, dicts, tmp_path, capsys):
    out = tmp_path / "out"
    assert _run(store, dicts, out) == 0
    first = _stamps(out)
    assert _run(store, dicts, out) == 0
    assert _stamps(out) == first
    # the chunk size is part of an index's identity (the random samples' keys are drawn per chunk)
    assert _run(store, dicts, out, "--chunk", "2") == 0
    assert all(v != first[k] for k, v in _stamps(out).items() if k[1] == "index.safetensors")
    assert _run(store, dicts, out) == 0
    first = _stamps(out)
    # any option that is part of the identity rebuilds every index
    assert _run(store, dicts, out, "--top", "2") == 0
    second = _stamps(out)
    assert all(second[k] != first[k] for k in first)
    assert FeatureIndex(out / "std").slots["top"] == 2
    assert json.loads((out / "std" / "index.json").read_text())["identity"]["options"]["top"] == 2
    # new weights rebuild that dictionary only
    d = standard_sae(seed=11)
    d.save(dicts / "std")
    assert _run(store, dicts, out, "--top", "2") == 0
    third = _stamps(out)
    assert third[("lin", "index.json")] == second[("lin", "index.json")]
    assert third[("lin", "index.safetensors")] == second[("lin", "index.safetensors")]
    assert third[("std", "index.safetensors")] != second[("std", "index.safetensors")]
    sha = hashlib.sha256((dicts / "std" / "sae_weights.safetensors").read_bytes()).hexdigest()
    assert FeatureIndex(out / "std").meta["identity"]["weights_sha256"] == sha
    # a rebuilt index after a kill mid-run: a missing index.json means "not done"
    (out / "lin" / "index.json").unlink()
    assert _run(store, dicts, out, "--top", "2") == 0
    assert FeatureIndex(out / "lin").slots["top"] == 2
    assert _stamps(out, ("std",)) == {k: v for k, v in third.items() if k[0] == "std"}


def test_progress_lines(store, dicts, tmp_path, capsys):
    out = tmp_path / "out"
    args = [a for a in OPTS if a != "--quiet"]
    assert (
        main(
            ["features", "--acts", str(store), "--dicts", str(dicts), "--out", str(out), *args, "--no-one-per-document"]
        )
        == 0
    )
    lines = capsys.readouterr().out.splitlines()
    assert f"std: 5 features over {C * (T // L)} fragments -> {out / 'std'}" in lines
    assert f"lin: 4 features over {C * (T // L)} fragments -> {out / 'lin'}" in lines


def test_same_named_dictionaries_get_distinct_folders(store, tmp_path):
    standard_sae().save(tmp_path / "a" / "sae")
    linear_dict().save(tmp_path / "b" / "sae")
    out = tmp_path / "out"
    assert (
        main(
            [
                "features",
                "--acts",
                str(store),
                "--dicts",
                f"{tmp_path / 'a' / 'sae'},{tmp_path / 'b' / 'sae'}",
                "--out",
                str(out),
                *OPTS,
            ]
        )
        == 0
    )
    assert sorted(p.name for p in out.iterdir()) == ["a__sae", "b__sae", "features.json"]
    assert FeatureIndex(out / "a__sae").meta["dictionary"]["name"] == "a/sae"
    assert FeatureIndex(out / "b__sae").meta["architecture"] == "linear"


def test_hook_option_names_the_hook_of_a_dictionary_without_one(store, tmp_path, capsys):
    d = standard_sae()
    d.metadata = {}
    d.save(tmp_path / "nohook")
    out = tmp_path / "out"
    assert main(["features", "--acts", str(store), "--dicts", str(tmp_path / "nohook"), "--out", str(out), *OPTS]) == 2
    assert "records no hook point" in _one_error_line(capsys.readouterr().err)
    assert not out.exists()
    assert (
        main(
            [
                "features",
                "--acts",
                str(store),
                "--dicts",
                str(tmp_path / "nohook"),
                "--out",
                str(out),
                "--hook",
                HOOK,
                *OPTS,
            ]
        )
        == 0
    )
    assert FeatureIndex(out / "nohook").meta["hook"] == HOOK


# -- errors -----------------------------------------------------------------------------------------------
def _wide_dict(path):
    SAE(
        torch.randn(D + 1, 3),
        torch.randn(3, D + 1),
        torch.zeros(3),
        torch.zeros(D + 1),
        "standard",
        metadata={"hook_name": HOOK},
    ).save(path)


def _other_hook_dict(path):
    standard_sae(hook="blocks.7.hook_resid_post").save(path)


@pytest.mark.parametrize(
    "extra,match",
    [
        (["--fragment-length", "0"], "--fragment-length must be positive"),
        (["--fragment-length", "-4"], "--fragment-length must be positive"),
        (["--chunk", "0"], "--chunk must be positive"),
        (["--chunk", "-1"], "--chunk must be positive"),
        (["--top", "0"], "--top must be positive"),
        (["--random", "-1"], "--random must be >= 0"),
        (["--zero", "-2"], "--zero must be >= 0"),
        (["--fragments", "0"], "--fragments must be positive"),
        (["--hook", "blocks.3.hook_mlp_out"], "lacks"),
    ],
)
def test_bad_options(store, dicts, tmp_path, capsys, extra, match):
    out = tmp_path / "out"
    assert _run(store, dicts, out, *extra) == 2
    assert match in _one_error_line(capsys.readouterr().err)
    assert not out.exists(), "nothing is written before the options are checked"


def test_fragment_length_longer_than_the_context(store, dicts, tmp_path, capsys):
    assert _run(store, dicts, tmp_path / "out", "--fragment-length", str(T + 1)) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert "--fragment-length" in line and str(T) in line
    assert _run(store, dicts, tmp_path / "ok", "--fragment-length", str(T), "--no-one-per-document") == 0
    assert FeatureIndex(tmp_path / "ok" / "std").meta["n_fragments"] == C


@pytest.mark.parametrize("make,match", [(_wide_dict, f"has d_in {D + 1}"), (_other_hook_dict, "lacks")])
def test_incompatible_dictionary(store, dicts, tmp_path, capsys, make, match):
    make(dicts / "bad")
    out = tmp_path / "out"
    assert _run(store, dicts, out) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert match in line and str(dicts / "bad") in line
    assert not out.exists(), "no index is built when one dictionary does not fit"


def test_store_without_heldout_rows(dicts, tmp_path, capsys):
    empty = write_store(tmp_path / "acts", _train(), torch.zeros(0, D), T=T)
    assert _run(empty, dicts, tmp_path / "out") == 2
    assert "no held-out rows" in _one_error_line(capsys.readouterr().err)


def test_missing_paths(store, dicts, tmp_path, capsys):
    assert _run(store, tmp_path / "nope", tmp_path / "out") == 2
    assert "does not exist" in _one_error_line(capsys.readouterr().err)
    (tmp_path / "empty").mkdir()
    assert _run(store, tmp_path / "empty", tmp_path / "out") == 2
    assert "no dictionary folders" in _one_error_line(capsys.readouterr().err)
    assert _run(tmp_path / "no-store", dicts, tmp_path / "out") == 2
    assert "not an activation store" in _one_error_line(capsys.readouterr().err)
    assert not (tmp_path / "out").exists()


def test_refuses_a_foreign_output_folder(store, dicts, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    assert _run(store, dicts, out) == 2
    assert "not empty" in _one_error_line(capsys.readouterr().err)
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]


def test_nan_activations(dicts, tmp_path, capsys):
    X = torch.from_numpy(heldout_data())
    X[20, 3] = float("nan")
    bad = write_store(tmp_path / "acts", _train(), X, T=T, tokens_CT=heldout_tokens(), docs_CT=heldout_docs())
    assert _run(bad, dicts, tmp_path / "out", "--no-one-per-document") == 2  # every row is in a fragment
    assert "NaN or Inf" in _one_error_line(capsys.readouterr().err)


def test_negative_seed_is_a_one_line_error(store, dicts, tmp_path, capsys):
    assert _run(store, dicts, tmp_path / "out", "--seed", "-1") == 2
    _one_error_line(capsys.readouterr().err)


def test_decode_needs_the_store_model(store, dicts, tmp_path, capsys):
    # the synthetic store's model cannot be loaded (offline, no such folder): decoding is refused in one line
    args = [a for a in OPTS if a != "--no-decode"]
    out = tmp_path / "out"
    assert main(["features", "--acts", str(store), "--dicts", str(dicts), "--out", str(out), *args]) == 2
    assert "synthetic" in _one_error_line(capsys.readouterr().err)
    assert not (out / "std").exists()


# -- token text, on a store harvested from a tiny local model ----------------------------------------------
@pytest.fixture(scope="module")
def llama_store(tmp_path_factory):
    from saex.stages.harvest import run as harvest
    from tests._support import save_tiny_model, write_corpus
    from tests.store._helpers import RESID, cfg

    root = tmp_path_factory.mktemp("features-llama")
    model = save_tiny_model(root / "llama", "llama")
    corpus = write_corpus(root / "corpus.jsonl")
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        acts = harvest(cfg(root / "acts", model, corpus, hooks=RESID, tokens=256, heldout_tokens=160), progress=False)
    finally:
        torch.set_num_threads(before)
    dicts = root / "dicts"
    SAE(torch.eye(32), torch.eye(32), torch.zeros(32), torch.zeros(32), "linear", metadata={"hook_name": RESID}).save(
        dicts / "identity"
    )
    return {"acts": acts, "model": model, "dicts": dicts}


def _llama_args(s, out, *extra):
    return [
        "features",
        "--acts",
        str(s["acts"]),
        "--dicts",
        str(s["dicts"]),
        "--out",
        str(out),
        "--fragment-length",
        "4",
        "--top",
        "2",
        "--random",
        "2",
        "--zero",
        "2",
        "--quiet",
        *extra,
    ]


def test_decoded_token_text(llama_store, tmp_path):
    from transformers import AutoTokenizer

    out = tmp_path / "out"
    assert main(_llama_args(llama_store, out)) == 0
    ix = FeatureIndex(out / "identity")
    assert (out / "identity" / "vocab.json").is_file()
    tok = AutoTokenizer.from_pretrained(str(llama_store["model"]))
    ids = list(range(ix.meta["n_fragments"]))
    want = [[tok.decode([i]) for i in row] for row in ix.tokens(ids).tolist()]
    assert ix.token_strings(ids) == want
    recs = ix.records(0, "top")
    top_ids, _ = ix.examples(0, "top")
    assert [r.fragment for r in recs] == top_ids.tolist()
    for r, a in zip(recs, ix.activations(0, "top")):
        assert r.tokens == want[r.fragment] and r.token_ids == ix.tokens([r.fragment])[0].tolist()
        np.testing.assert_array_equal(r.activations, a.astype(np.float64))


def test_no_decode_rebuild_drops_the_old_token_text(llama_store, tmp_path):
    from saex.errors import SaexError

    out = tmp_path / "out"
    assert main(_llama_args(llama_store, out, "--fragments", "2")) == 0  # vocab of 2 fragments' tokens
    assert main(_llama_args(llama_store, out, "--no-decode")) == 0  # every fragment, no token text
    ix = FeatureIndex(out / "identity")
    assert ix.meta["config"]["decode"] is False
    with pytest.raises(SaexError, match="no-decode"):
        ix.token_strings(list(range(ix.meta["n_fragments"])))
