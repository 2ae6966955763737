"""``saex baselines`` on a small synthetic store: every kind, --k-from, resuming, and refused input."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from saex.cli import main
from saex.dictionaries.sae import SAE
from saex.store.reader import ActivationStore, store_hash
from tests.train._synth import HOOK, ground_truth, snapshot, write_store

KINDS = ("neurons", "random", "pca", "pca_split", "pca_topk", "ica", "ica_topk")
WIDTH = 16
ARCH = {
    "neurons": "standard",
    "random": "standard",
    "pca": "linear",
    "pca_split": "standard",
    "pca_topk": "topk",
    "ica": "linear",
    "ica_topk": "topk",
}
D_DICT = {
    "neurons": WIDTH,
    "random": WIDTH,
    "pca": WIDTH,
    "pca_split": 2 * WIDTH,
    "pca_topk": 2 * WIDTH,
    "ica": WIDTH,
    "ica_topk": 2 * WIDTH,
}


@pytest.fixture(scope="module")
def data():
    """(train [4096, 16], heldout [512, 16]): sparse combinations of 32 ground-truth directions."""
    _, X, H = ground_truth(d=WIDTH, n=4096, n_heldout=512, seed=0)
    return X, H


@pytest.fixture(scope="module")
def store(tmp_path_factory, data) -> Path:
    X, H = data
    return write_store(tmp_path_factory.mktemp("bl-store") / "acts", X, H, shard_rows=1024)


def argv(store, out, *extra) -> list[str]:
    # synthetic rows have no attention sink: every position counts unless a test says otherwise
    return [
        "baselines",
        "--acts",
        str(store),
        "--hook",
        HOOK,
        "--out",
        str(out),
        "--ica-rows",
        "1000",
        "--exclude-first",
        "0",
        "--quiet",
        *extra,
    ]


def run(args, capsys) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(args)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def one_error_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got {err!r}"
    assert lines[0].startswith("saex baselines: error: ") and "Traceback" not in err
    return lines[0]


@pytest.fixture(scope="module")
def built(store, tmp_path_factory) -> Path:
    """Every kind with --k 3 (read-only: copy it before running anything that may write)."""
    out = tmp_path_factory.mktemp("bl-all") / "out"
    assert main(argv(store, out, "--kinds", ",".join(KINDS), "--k", "3", "--device", "cpu")) == 0
    return out


def mtimes(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in sorted(folder.rglob("*")) if p.is_file()}


def test_every_kind_is_built_and_loads(built, store):
    expected_hash = store_hash(ActivationStore(store), HOOK)
    assert sorted(p.name for p in built.iterdir()) == sorted([*KINDS, "baselines.json"])
    marker = json.loads((built / "baselines.json").read_text())
    assert marker["identity"] == {"store_hash": expected_hash, "hook": HOOK}
    for kind in KINDS:
        sae = SAE.load(built / kind)
        m = sae.metadata
        assert (m["hook_name"], m["baseline"], m["store_hash"], m["model_name"]) == (
            HOOK,
            kind,
            expected_hash,
            "synthetic",
        ), kind
        assert (sae.architecture, sae.d_in, sae.d_dict) == (ARCH[kind], WIDTH, D_DICT[kind]), kind
        cfg = json.loads((built / kind / "cfg.json").read_text())
        assert cfg["hook_name"] == HOOK and cfg["architecture"] == ARCH[kind]
        np.testing.assert_allclose(sae.W_dec_FD.norm(dim=1).numpy(), np.ones(sae.d_dict), atol=1e-5)
    for kind in ("pca_topk", "ica_topk"):
        sae = SAE.load(built / kind)
        assert sae.k == 3 and sae.metadata["k"] == 3
    assert SAE.load(built / "ica").metadata["fit_rows"] == 1000
    assert SAE.load(built / "ica_topk").metadata["fit_rows"] == 1000
    assert SAE.load(built / "pca").metadata["fit_rows"] == 4096
    assert torch.equal(SAE.load(built / "neurons").W_dec_FD, torch.eye(WIDTH))


def test_the_cli_pca_is_the_pca_of_the_train_split(built, data):
    X, H = data
    x = X.double().numpy()
    mean = x.mean(0)
    _, s, Vt = np.linalg.svd(x - mean, full_matrices=False)
    sae = SAE.load(built / "pca")
    np.testing.assert_allclose(sae.b_dec_D.numpy(), mean, atol=1e-5)
    V = sae.W_dec_FD.double().numpy()
    np.testing.assert_allclose(np.abs((V * Vt).sum(1)), np.ones(WIDTH), atol=1e-4)
    h = H.double().numpy()
    np.testing.assert_allclose(np.abs(sae.encode(H).double().numpy()), np.abs((h - mean) @ Vt.T), atol=1e-4)
    np.testing.assert_allclose(sae.decode(sae.encode(H)).numpy(), h, atol=1e-4)


def test_the_cli_topk_baselines_keep_k_per_token(built, data):
    _, H = data
    for kind in ("pca_topk", "ica_topk"):
        c = SAE.load(built / kind).encode(H)
        assert ((c != 0).sum(1) == 3).all(), kind


def hand_made(seed: int = 0, bias: float = -0.5) -> SAE:
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(WIDTH, 40, generator=g) / WIDTH**0.5
    return SAE(
        W,
        W.T.clone(),
        torch.full((40,), bias),
        torch.zeros(WIDTH),
        "standard",
        apply_b_dec_to_input=False,
        metadata={"hook_name": HOOK},
    )


def mean_l0(sae: SAE, x: torch.Tensor) -> float:
    """By hand, in numpy: the mean number of non-zero codes per row."""
    pre = x.double().numpy() @ sae.W_enc_DF.double().numpy() + sae.b_enc_F.double().numpy()
    return float((pre > 0).sum(1).mean())


@pytest.mark.parametrize("tokens", [None, 64])
def test_k_from_is_the_rounded_mean_l0_on_heldout_rows(store, data, tmp_path, capsys, tokens):
    _, H = data
    sae = hand_made()
    sae.save(tmp_path / "sae")
    rows = H if tokens is None else H[:tokens]
    l0 = mean_l0(sae, rows)
    assert abs(l0 - round(l0)) < 0.45  # not a rounding coin-flip
    k = max(1, round(l0))
    assert k == {None: 2, 64: 3}[tokens]  # (mean L0 2.27 on all 512 held-out rows, 2.59 on the first 64)
    extra = [] if tokens is None else ["--k-tokens", str(tokens)]
    code, _, err = run(
        argv(store, tmp_path / "out", "--kinds", "pca_topk,ica_topk", "--k-from", str(tmp_path / "sae"), *extra), capsys
    )
    assert code == 0, err
    for kind in ("pca_topk", "ica_topk"):
        built = SAE.load(tmp_path / "out" / kind)
        assert built.k == k and built.metadata["k"] == k
    assert json.loads((tmp_path / "out" / "baselines.json").read_text())["config"]["k_from"] == str(tmp_path / "sae")


def test_k_from_a_neurons_dictionary(built, store, data, tmp_path, capsys):
    _, H = data
    expected = round(float((H.numpy() > 0).sum(1).mean()))  # neurons fire where the coordinate is positive
    assert 1 <= expected <= WIDTH
    code, _, err = run(argv(store, tmp_path / "out", "--kinds", "pca_topk", "--k-from", str(built / "neurons")), capsys)
    assert code == 0, err
    assert SAE.load(tmp_path / "out" / "pca_topk").k == expected


def test_rerunning_the_same_command_changes_nothing(store, tmp_path, capsys):
    out = tmp_path / "out"
    args = argv(store, out, "--kinds", "neurons,pca,pca_topk,ica,ica_topk", "--k", "2")
    assert run(args, capsys)[0] == 0
    before, times = snapshot(out), mtimes(out)
    code, stdout, err = run(args, capsys)
    assert code == 0, err
    assert f"baselines in {out}" in stdout
    assert snapshot(out) == before
    after = mtimes(out)
    assert {p: t for p, t in after.items() if p != "baselines.json"} == {
        p: t for p, t in times.items() if p != "baselines.json"
    }


def test_adding_a_kind_keeps_the_others(built, store, tmp_path, capsys):
    out = tmp_path / "out"
    assert run(argv(store, out, "--kinds", "neurons,pca"), capsys)[0] == 0
    before = {p: h for p, h in snapshot(out).items() if p != "baselines.json"}
    times = {p: t for p, t in mtimes(out).items() if p != "baselines.json"}
    assert run(argv(store, out, "--kinds", "neurons,pca,pca_split"), capsys)[0] == 0
    now = snapshot(out)
    assert {p: now[p] for p in before} == before
    assert {p: t for p, t in mtimes(out).items() if p in times} == times
    assert (out / "pca_split" / "cfg.json").is_file()
    # the same dictionary as in the all-kinds build from the same store
    assert torch.equal(SAE.load(out / "pca_split").W_dec_FD, SAE.load(built / "pca_split").W_dec_FD)


def test_rerunning_with_another_k_is_refused(built, store, tmp_path, capsys):
    out = tmp_path / "out"
    shutil.copytree(built, out)
    before = snapshot(out)
    code, _, err = run(argv(store, out, "--kinds", ",".join(KINDS), "--k", "4"), capsys)
    assert code == 2
    line = one_error_line(err)
    assert "pca_topk" in line and "k: folder has 3, asked 4" in line
    assert {p: h for p, h in snapshot(out).items() if p != "baselines.json"} == {
        p: h for p, h in before.items() if p != "baselines.json"
    }


def test_a_refused_rerun_leaves_the_folder_untouched(built, store, tmp_path, capsys):
    out = tmp_path / "out"
    shutil.copytree(built, out)
    before = snapshot(out)
    assert run(argv(store, out, "--kinds", ",".join(KINDS), "--k", "4"), capsys)[0] == 2
    assert snapshot(out) == before


def test_a_refused_rerun_builds_no_new_kind(built, store, tmp_path, capsys):
    out = tmp_path / "out"
    assert run(argv(store, out, "--kinds", "pca_topk", "--k", "3"), capsys)[0] == 0
    assert run(argv(store, out, "--kinds", "pca_split,pca_topk", "--k", "4"), capsys)[0] == 2
    assert not (out / "pca_split").exists()


def test_the_ica_folder_does_not_depend_on_the_order_of_kinds(built, store, tmp_path, capsys):
    assert run(argv(store, tmp_path / "out", "--kinds", "ica_topk,ica", "--k", "3"), capsys)[0] == 0
    assert "k" not in SAE.load(tmp_path / "out" / "ica").metadata
    assert (tmp_path / "out" / "ica" / "sae_weights.safetensors").read_bytes() == (
        built / "ica" / "sae_weights.safetensors"
    ).read_bytes()


def test_rerunning_with_another_center_is_refused(built, store, tmp_path, capsys):
    out = tmp_path / "out"
    shutil.copytree(built, out)
    code, _, err = run(argv(store, out, "--kinds", "pca", "--no-center"), capsys)
    assert code == 2
    assert "center: folder has True, asked False" in one_error_line(err)


def test_a_store_of_another_width_is_refused(built, tmp_path, capsys):
    g = torch.Generator().manual_seed(1)
    other = write_store(tmp_path / "wide", torch.randn(512, 24, generator=g), torch.randn(64, 24, generator=g))
    out = tmp_path / "out"
    shutil.copytree(built, out)
    code, _, err = run(argv(other, out, "--kinds", "neurons"), capsys)
    assert code == 2
    assert "store_hash" in one_error_line(err)


def test_no_center_pca_projects_raw_activations(store, data, tmp_path, capsys):
    _, H = data
    assert run(argv(store, tmp_path / "out", "--kinds", "pca", "--no-center"), capsys)[0] == 0
    sae = SAE.load(tmp_path / "out" / "pca")
    assert not sae.b_dec_D.any() and sae.metadata["center"] is False
    V = sae.W_dec_FD.double().numpy()
    np.testing.assert_allclose(sae.encode(H).numpy(), H.double().numpy() @ V.T, atol=1e-5)


@pytest.mark.parametrize(
    "args, fragments",
    [
        (
            ["--kinds", "neurons,sparse"],
            ["unknown --kinds 'sparse'", "allowed: neurons, random, pca, pca_split, pca_topk, ica, ica_topk"],
        ),
        (["--kinds", "pca_topk"], ["exactly one of --k N or --k-from"]),
        (["--kinds", "ica_topk"], ["exactly one of --k N or --k-from"]),
        (["--kinds", "pca_topk", "--k", "17"], ["--k gives K = 17", "between 1 and the width 16"]),
        (["--kinds", "pca_topk", "--k", "0"], ["--k must be positive, got 0"]),
        (["--kinds", "pca_topk", "--k", "3", "--k-from", "/nonexistent"], ["exactly one of --k N or --k-from"]),
        (["--kinds", "pca_topk", "--k-from", "/nonexistent/sae"], ["dictionary /nonexistent/sae does not exist"]),
        (["--kinds", "neurons", "--random-ratio", "0"], ["--random-ratio must be positive, got 0"]),
        (["--kinds", "ica", "--ica-rows", "0"], ["--ica-rows must be positive, got 0"]),
    ],
)
def test_bad_input_exits_2_with_one_line_and_writes_nothing(store, tmp_path, capsys, args, fragments):
    out = tmp_path / "out"
    code, stdout, err = run(argv(store, out, *args), capsys)
    assert code == 2
    line = one_error_line(err)
    for f in fragments:
        assert f in line, line
    assert not out.exists()


def test_k_from_of_another_width_is_refused(store, tmp_path, capsys):
    g = torch.Generator().manual_seed(0)
    W = torch.randn(8, 12, generator=g)
    SAE(W, W.T.clone(), torch.zeros(12), torch.zeros(8)).save(tmp_path / "narrow")
    code, _, err = run(
        argv(store, tmp_path / "out", "--kinds", "pca_topk", "--k-from", str(tmp_path / "narrow")), capsys
    )
    assert code == 2
    assert "has d_in 8, but" in one_error_line(err) and "width 16" in err


def test_missing_hook_exits_2(store, tmp_path, capsys):
    args = ["baselines", "--acts", str(store), "--out", str(tmp_path / "out"), "--kinds", "neurons", "--quiet"]
    code, _, err = run(args, capsys)
    assert code == 2
    line = one_error_line(err)
    assert "--hook" in line and HOOK in line
    assert not (tmp_path / "out").exists()


def test_a_hook_the_store_lacks_exits_2(store, tmp_path, capsys):
    args = [
        "baselines",
        "--acts",
        str(store),
        "--hook",
        "blocks.9.hook_resid_post",
        "--out",
        str(tmp_path / "out"),
        "--kinds",
        "neurons",
        "--quiet",
    ]
    code, _, err = run(args, capsys)
    assert code == 2
    line = one_error_line(err)
    assert "'blocks.9.hook_resid_post' is not in the store" in line
    assert not (tmp_path / "out").exists()


def test_a_missing_store_exits_2(tmp_path, capsys):
    code, _, err = run(argv(tmp_path / "nope", tmp_path / "out", "--kinds", "neurons"), capsys)
    assert code == 2
    assert "is not an activation store" in one_error_line(err)
    assert not (tmp_path / "out").exists()


def test_an_unrelated_non_empty_folder_is_refused(store, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    code, _, err = run(argv(store, out, "--kinds", "neurons"), capsys)
    assert code == 2
    assert "is not empty" in one_error_line(err)
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]


def test_fits_and_k_use_only_the_kept_rows(store, data, tmp_path, capsys):
    """With position 0 of every (8-token) context excluded, PCA is fitted on the other 7/8 of the train
    rows, and --k-from's L0 is measured on the kept held-out rows."""
    from tests.train._synth import T

    X, H = data
    keep_train, keep_held = torch.arange(len(X)) % T != 0, torch.arange(len(H)) % T != 0
    sae = SAE(
        torch.eye(WIDTH),
        torch.eye(WIDTH),
        -0.3 * torch.ones(WIDTH),
        torch.zeros(WIDTH),
        "standard",
        metadata={"hook_name": HOOK},
    )
    sae.save(tmp_path / "sae")
    code, _, err = run(
        argv(
            store,
            tmp_path / "out",
            "--kinds",
            "pca,pca_topk",
            "--k-from",
            str(tmp_path / "sae"),
            "--exclude-first",
            "1",
        ),
        capsys,
    )
    assert code == 0, err
    pca = SAE.load(tmp_path / "out" / "pca")
    assert pca.metadata["fit_rows"] == int(keep_train.sum()) == 3584
    assert pca.metadata["row_filter"] == {"exclude_first": 1, "exclude_special_tokens": True, "max_norm_ratio": 20.0}
    np.testing.assert_allclose(pca.b_dec_D.numpy(), X[keep_train].double().mean(0).numpy(), atol=1e-5)
    k = SAE.load(tmp_path / "out" / "pca_topk").k
    assert k == max(1, round(mean_l0(sae, H[keep_held])))
