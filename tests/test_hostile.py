"""Hostile and careless input, command by command: exit status 2, one line on stderr naming the bad value, no
traceback, and nothing on disk changed — every existing folder byte-identical afterwards, no new file.

A table of hand-written bad inputs per subcommand, then generated ones (``hypothesis``): random bytes as a
corpus, random JSON as a dictionary's cfg.json, random tensors (NaN / Inf included) as its weights, random
strings as option values.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file, save_file

from saex.dictionaries import SAE, load_dictionary
from saex.errors import SaexError
from tests._cli import run_cli
from tests.store._helpers import RESID

STORE = dict(tokens=1024, dtype="float32")
D = 32  # the tiny llama's d_model (RESID's width)


def _snapshot(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, make_store, tiny_llama):
    """A store, a dictionary on it, and a finished training run: what a user's folder holds before the mistake."""
    from saex.train.trainer import train
    from tests.train._synth import train_cfg

    root = tmp_path_factory.mktemp("hostile")
    shutil.copytree(make_store(**STORE), root / "acts")
    g = torch.Generator().manual_seed(0)
    SAE(
        torch.randn(D, 64, generator=g) / D**0.5, torch.randn(64, D, generator=g) / D**0.5, torch.zeros(64),
        torch.zeros(D), metadata={"hook_name": RESID},
    ).save(root / "dicts" / "d")  # fmt: skip
    train(
        train_cfg(root / "acts", root / "run", hook=RESID, steps=20, batch_size=32, eval_every=10, alpha="0.01"),
        progress=False,
    )
    (root / "bad.txt").write_bytes(b"fine line\n\n\xff\xfe not utf-8\n")
    (root / "bad.jsonl").write_text('{"text": "ok"}\n{"text": \n')
    return {"root": root, "model": tiny_llama}


def _bad_dict(root: Path, name: str, edit_weights=None, edit_cfg=None, keep_checksum: bool = False) -> Path:
    """A copy of the good dictionary with its weights and / or cfg.json edited (the checksum removed unless kept,
    as in another library's folder, so that the deeper checks see the edit)."""
    folder = root / "bad-dicts" / name
    if folder.exists():
        return folder
    shutil.copytree(root / "dicts" / "d", folder)
    if edit_weights is not None:
        path = folder / "sae_weights.safetensors"
        save_file(edit_weights(load_file(str(path))), str(path))
    cfg = json.loads((folder / "cfg.json").read_text())
    if not keep_checksum:
        del cfg["metadata"]["weights_sha256"]
    (folder / "cfg.json").write_text(json.dumps(cfg))
    if edit_cfg is not None:
        (folder / "cfg.json").write_text(edit_cfg(json.dumps(cfg)))
    return folder


def _nan(w):
    return w | {"W_dec": torch.full_like(w["W_dec"], float("nan"))}


DICTS = {
    "truncated_cfg": dict(edit_cfg=lambda t: t[: len(t) // 2]),
    "cfg_not_object": dict(edit_cfg=lambda t: "[1, 2, 3]"),
    "no_W_enc": dict(edit_weights=lambda w: {k: v for k, v in w.items() if k != "W_enc"}),
    "nan_weights": dict(edit_weights=_nan),
    "int_weights": dict(edit_weights=lambda w: w | {"W_enc": w["W_enc"].to(torch.int32)}),
    "wrong_width": dict(edit_cfg=lambda t: json.dumps({**json.loads(t), "d_sae": 65})),
    "bit_flip": dict(edit_weights=lambda w: w | {"b_enc": w["b_enc"] + 1e-3}, keep_checksum=True),
}
DICT_ERRORS = {
    "truncated_cfg": "is not readable JSON",
    "cfg_not_object": "holds a JSON list, not an object",
    "no_W_enc": "has no tensor 'W_enc'",
    "nan_weights": "W_dec holds NaN or Inf values",
    "int_weights": "W_enc has dtype torch.int32",
    "wrong_width": "says d_sae = 65 but W_enc has shape",
    "bit_flip": "is corrupted or was changed after it was written",
}

# (command, arguments with {root} / {model} / {dict} placeholders, what the one error line must contain)
CASES = [
    ("harvest", ["--model", "{model}", "--context-length", "16", "--hooks", RESID, "--corpus", "{root}/bad.txt", "--out", "{root}/new"], "bad.txt:3 is not UTF-8 text"),
    ("harvest", ["--model", "{model}", "--context-length", "16", "--hooks", RESID, "--corpus", "{root}/bad.jsonl", "--out", "{root}/new"], "bad.jsonl:2 is not valid JSON"),
    ("harvest", ["--model", "{model}", "--context-length", "16", "--hooks", RESID, "--corpus", "data/corpus.txt", "--out", "{root}/new"], "'data/corpus.txt' does not exist"),
    ("harvest", ["--model", "{model}", "--hooks", f"{RESID},{RESID}", "--out", "{root}/new"], "names a hook point twice"),
    ("harvest", ["--model", "{model}", "--context-length", "16", "--hooks", RESID, "--tokens", "0", "--out", "{root}/new"], "--tokens must be"),
    ("harvest", ["--model", "{model}", "--context-length", "16", "--hooks", RESID, "--out", "{root}/run"], "{root}/run"),
    ("train", ["--acts", "{root}/acts", "--hook", RESID, "--lr", "nan", "--out", "{root}/new"], "--lr must be finite, got nan"),
    ("train", ["--acts", "{root}/acts", "--hook", RESID, "--arch", "topk", "--alpha", "1e-3", "--out", "{root}/new"], "--alpha does not apply to --arch topk"),
    ("train", ["--acts", "{root}/acts", "--hook", "blocks.9.hook_resid_post", "--out", "{root}/new"], "'blocks.9.hook_resid_post' is not in the store"),
    ("train", ["--acts", "{root}/acts", "--hook", RESID, "--corpus", "x.txt", "--out", "{root}/new"], "--corpus applies only when training from a model"),
    ("train", ["--acts", "{root}/acts", "--hook", RESID, "--aux-coef", "nan", "--arch", "topk", "--out", "{root}/new"], "--aux-coef must be finite"),
    ("train", ["--acts", "{root}/acts", "--hook", RESID, "--steps", "7", "--out", "{root}/run"], "holds a different training run"),
    ("train", ["--acts", "{root}/nowhere", "--hook", RESID, "--out", "{root}/new"], "is not an activation store"),
    ("baselines", ["--acts", "{root}/acts", "--hook", RESID, "--random-ratio", "nan", "--out", "{root}/new"], "--random-ratio must be finite"),
    ("baselines", ["--acts", "{root}/acts", "--hook", RESID, "--ica-tol", "nan", "--out", "{root}/new"], "--ica-tol must be finite"),
    ("interpret", ["--features", "{root}/nowhere", "--timeout", "-1", "--out", "{root}/new"], "--timeout must be positive"),
    ("store", ["{root}/run", "--verify"], "is not an activation store"),
    ("ioi", ["--dicts", "{root}/nowhere", "--out", "{root}/new"], "--dicts path {root}/nowhere does not exist"),
    ("case-study", ["--acts", "{root}/acts", "--dict", "{root}/bad-dicts/bit_flip", "--out", "{root}/new"], "is corrupted or was changed"),
    ("dashboard", ["--features", "{root}/nowhere", "--out", "{root}/new"], "{root}/nowhere does not exist"),
    ("export", ["neuronpedia", "--features", "{root}/nowhere", "--out", "{root}/new"], "--source-set is required"),
    ("convert", ["{root}/bad-dicts/nan_weights", "--to", "sparsify", "--out", "{root}/new"], "W_dec holds NaN or Inf"),
    ("calibrate", ["--acts", "{root}/acts", "--hook", RESID, "--grid", "1e-3", "--out", "{root}/new"], "--grid needs at least two"),
    ("compare", ["--archs", "nope", "--out", "{root}/new"], "unknown --archs 'nope'"),
    ("reproduce", ["--backend", "foo", "--out", "{root}/new"], "unknown --backend 'foo'"),
    ("reproduce", ["--model", "{model}", "--out", "{root}/run"], "{root}/run is not empty and holds no saex reproduce run"),
    ("report", ["{root}/run"], "{root}/run"),
    ("steer", ["{root}/bad-dicts/int_weights", "--prompt", "hi", "--edits", "5:add:10"], "W_enc has dtype torch.int32"),
    ("train", ["--steps", "abc", "--out", "{root}/new"], "argument --steps: invalid int value: 'abc'"),
    ("train", ["--bogus", "1", "--out", "{root}/new"], "unrecognized arguments: --bogus 1"),
    ("eval", ["--acts", "{root}/acts", "--dicts", "{root}/dicts", "--device", "tpu", "--out", "{root}/new"], "unknown --device 'tpu'"),
] + [
    (cmd, ["--acts", "{root}/acts", "--dicts", f"{{root}}/bad-dicts/{name}", "--out", "{root}/new"], DICT_ERRORS[name])
    for cmd in ("eval", "features")
    for name in DICTS
] + [
    ("mmcs", ["{root}/dicts/d", f"{{root}}/bad-dicts/{name}"], DICT_ERRORS[name]) for name in ("nan_weights", "bit_flip")
]  # fmt: skip


@pytest.mark.parametrize(("command", "args", "message"), CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_one_error_line_and_nothing_changed(workspace, command, args, message):
    root = workspace["root"]
    for name, how in DICTS.items():
        _bad_dict(root, name, **how)
    fill = {"root": str(root), "model": str(workspace["model"])}
    before = _snapshot(root)
    rc, out, err = run_cli(command, *[a.format(**fill) for a in args], "--quiet")
    lines = err.strip().splitlines()
    assert rc == 2, (rc, err[-2000:])
    assert len(lines) == 1 and lines[0].startswith(f"saex {command}: error: "), err[-2000:]
    assert message.format(**fill) in lines[0], lines[0]
    assert "Traceback" not in err and not (root / "new").exists()
    assert _snapshot(root) == before


# -- generated inputs -----------------------------------------------------------------------------------------

SETTINGS = settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def _one_line_or_success(rc: int, err: str, command: str) -> None:
    """Success, or exit 2 with one error line (after any "note:" lines: a foreign dictionary that loaded, say)."""
    assert rc in (0, 2), err[-2000:]
    if rc == 2:
        lines = [line for line in err.strip().splitlines() if not line.startswith("note: ")]
        assert len(lines) == 1 and lines[0].startswith(f"saex {command}: error: "), err[-2000:]
    assert "Traceback" not in err


@SETTINGS
@given(data=st.binary(min_size=0, max_size=400), suffix=st.sampled_from([".txt", ".jsonl"]))
def test_random_bytes_as_a_corpus(workspace, tmp_path_factory, data, suffix):
    """Whatever the bytes, resolving the corpus gives documents or one SaexError (never another exception)."""
    from saex.data.corpora import resolve_corpus

    path = tmp_path_factory.mktemp("corpus") / f"c{suffix}"
    path.write_bytes(data)
    try:
        corpus = resolve_corpus(str(path))
    except SaexError as e:
        assert str(path) in str(e) or "no documents" in str(e), str(e)
        return
    assert all(isinstance(d.text, str) and d.text.strip() for d in corpus.finite_docs or [])


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=6),
    max_leaves=12,
)
CFG_KEYS = ["architecture", "d_in", "d_sae", "k", "apply_b_dec_to_input", "normalize_activations", "metadata"]


@SETTINGS
@given(value=JSON, keyed=st.dictionaries(st.sampled_from(CFG_KEYS), JSON, max_size=6))
def test_random_json_as_a_cfg(workspace, tmp_path_factory, value, keyed):
    """Any JSON in cfg.json (random values, or SAELens's keys with random values): the dictionary opens or
    `saex eval` fails with one line, and nothing else is written."""
    root = workspace["root"]
    for cfg in (value, keyed):
        folder = tmp_path_factory.mktemp("cfg") / "d"
        shutil.copytree(root / "dicts" / "d", folder)
        (folder / "cfg.json").write_text(json.dumps(cfg))
        out = folder.parent / "out"
        rc, _, err = run_cli(
            "eval", "--acts", root / "acts", "--dicts", folder, "--out", out, "--contexts", "0", "--quiet"
        )
        _one_line_or_success(rc, err, "eval")


FLOATS = st.floats(allow_nan=True, allow_infinity=True, width=32)


@SETTINGS
@given(
    shape=st.tuples(st.integers(1, 5), st.integers(1, 5)),
    values=st.lists(FLOATS, min_size=1, max_size=25),
    dtype=st.sampled_from([torch.float32, torch.float16, torch.int32, torch.bool]),
    key=st.sampled_from(["W_enc", "W_dec", "b_enc", "b_dec"]),
)
def test_random_tensors_as_weights(workspace, tmp_path_factory, shape, values, dtype, key):
    """A weights file with one tensor replaced by random values, shape and dtype: loading gives a dictionary
    with finite floating-point weights of consistent shapes, or one SaexError."""
    folder = tmp_path_factory.mktemp("w") / "d"
    shutil.copytree(workspace["root"] / "dicts" / "d", folder)
    path = folder / "sae_weights.safetensors"
    n = shape[0] * shape[1]
    t = torch.tensor((values * n)[:n], dtype=torch.float32).reshape(shape).to(dtype)
    save_file(load_file(str(path)) | {key: t}, str(path))
    cfg = json.loads((folder / "cfg.json").read_text())
    del cfg["metadata"]["weights_sha256"]
    (folder / "cfg.json").write_text(json.dumps(cfg))
    try:
        d = load_dictionary(folder)
    except SaexError:
        return
    for p in (d.W_enc_DF, d.W_dec_FD, d.b_enc_F, d.b_dec_D):
        assert p.is_floating_point() and bool(torch.isfinite(p).all())
    assert d.W_dec_FD.shape == (d.d_dict, d.d_out) and d.b_enc_F.shape == (d.d_dict,)


OPTIONS = ["--steps", "--lr", "--ratio", "--alpha", "--batch-size", "--seed", "--arch", "--normalize", "--device"]


@SETTINGS
@given(option=st.sampled_from(OPTIONS), value=st.text(max_size=12).filter(lambda v: not v.startswith("-")))
def test_random_option_values(workspace, option, value):
    """Any string as an option's value: one error line (the value, or the missing store named), never a
    traceback, and nothing written."""
    root = workspace["root"]
    before = _snapshot(root)
    rc, _, err = run_cli("train", "--acts", root / "nowhere", "--hook", RESID, option, value, "--out", root / "new")
    assert rc == 2
    _one_line_or_success(rc, err, "train")
    assert _snapshot(root) == before and not (root / "new").exists()
