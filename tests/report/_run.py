"""Build a real, small ``saex reproduce``-shaped run folder by running the real stages on a tiny llama.

The model's tokenizer knows the IOI templates (tests/causal/_helpers.py), so ``saex ioi`` runs on the same
model the store was harvested from; ``saex case-study`` studies the main layer-2 SAE with a circuit into
layer 1. ``inject_hostile`` then puts markup into its token strings, to check that the report escapes them.
reproduce.json is written as ``saex reproduce`` writes it (preset, reproduce_config, plan, stages).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from tests._cli import run_cli

RESID = ["blocks.1.hook_resid_post", "blocks.2.hook_resid_post"]
MLP = "blocks.2.mlp.hook_post"
ALPHAS = [0.0, 3.2e-4, 8.6e-4, 1e-2]
RATIOS = [0.5, 2.0]
MAIN_RATIO = 2.0
HOSTILE = "<script>alert('x')</script>"


def _main(*args: str) -> None:
    rc, _, err = run_cli(*args)
    assert rc == 0, f"saex {args[0]} failed: {err}"


def _name(arch: str, r: float, a: float) -> str:
    return f"{arch}_r{r:g}_a{a:.3g}"


def build_run(root: Path) -> Path:
    from tests.causal._helpers import save_ioi_model

    model_dir, corpus = save_ioi_model(root, docs=120, extra_words=("'", "s"))
    run = root / "run"
    acts = run / "acts"
    hooks = RESID + [MLP]
    _main(
        "harvest",
        "--out",
        acts,
        "--model",
        model_dir,
        "--corpus",
        corpus,
        "--hooks",
        ",".join(hooks),
        "--tokens",
        3072,
        "--heldout-tokens",
        640,
        "--context-length",
        16,
        "--shard-tokens",
        1024,
        "--batch-size",
        8,
        "--quiet",
    )
    alphas = ",".join(f"{a:g}" for a in ALPHAS)
    ratios = ",".join(f"{r:g}" for r in RATIOS)
    main_alpha = {h: 8.6e-4 for h in RESID} | {MLP: 3.2e-4}
    for h in hooks:
        arch = "untied_l1" if h == MLP else "tied_l1"
        _main(
            "train",
            "--acts",
            acts,
            "--hook",
            h,
            "--out",
            run / "dicts" / h,
            "--arch",
            arch,
            "--ratio",
            ratios,
            "--alpha",
            alphas,
            "--steps",
            48,
            "--batch-size",
            256,
            "--decay-fraction",
            0,
            "--normalize",
            "mean_norm",
            "--eval-every",
            0,
            "--checkpoint-every",
            10000,
            "--quiet",
        )
        k_from = run / "dicts" / h / _name(arch, 0.5, main_alpha[h])
        _main(
            "baselines",
            "--acts",
            acts,
            "--hook",
            h,
            "--out",
            run / "baselines" / h,
            "--kinds",
            "neurons,random,pca,pca_topk,ica,ica_topk",
            "--k-from",
            k_from,
            "--ica-max-iter",
            50,
            "--quiet",
        )
        _main(
            "eval",
            "--acts",
            acts,
            "--dicts",
            f"{run / 'dicts' / h},{run / 'baselines' / h}",
            "--contexts",
            4,
            "--context-batch",
            4,
            "--out",
            run / "eval" / h,
            "--quiet",
        )
        chosen = ",".join(str(run / "dicts" / h / _name(arch, r, main_alpha[h])) for r in RATIOS)
        _main(
            "features",
            "--acts",
            acts,
            "--dicts",
            f"{chosen},{run / 'baselines' / h}",
            "--out",
            run / "features" / h,
            "--fragment-length",
            8,
            "--no-one-per-document",
            "--top",
            25,
            "--random",
            30,
            "--zero",
            10,
            "--quiet",
        )
        _main(
            "interpret",
            "--features",
            run / "features" / h,
            "--out",
            run / "interpret" / h,
            "--n-features",
            6,
            "--no-null",
            "--quiet",
        )
    main_dict = {h: run / "dicts" / h / _name("tied_l1", MAIN_RATIO, 8.6e-4) for h in RESID}
    _main(
        "case-study",
        "--acts",
        acts,
        "--dict",
        main_dict[RESID[1]],
        "--features-index",
        run / "features" / RESID[1] / main_dict[RESID[1]].name,
        "--upstream",
        main_dict[RESID[0]],
        "--out",
        run / "case_studies",
        "--contexts",
        5,
        "--effect-contexts",
        5,
        "--candidates",
        16,
        "--max-samples",
        500,
        "--max-density",
        1,
        "--quiet",
    )
    _main(
        "ioi",
        "--model",
        model_dir,
        "--dicts",
        run / "dicts" / RESID[0],
        "--baselines",
        "pca",
        "--acts",
        acts,
        "--prompts",
        6,
        "--mode",
        "quick",
        "--out",
        run / "ioi",
        "--quiet",
    )
    plan = {
        "resid_layers": [1, 2],
        "mlp_layers": [2],
        "main_layer": 2,
        "ioi_layer": 1,
        "alphas_resid": ALPHAS,
        "alphas_mlp": ALPHAS,
        "ratios_resid": RATIOS,
        "ratios_mlp": [2.0, 0.5],
        "main_ratio": MAIN_RATIO,
        "main_alpha_resid": 8.6e-4,
        "main_alpha_mlp": 3.2e-4,
        "tokens": 3072,
    }
    names = ["harvest"] + [f"{st}:{h}" for st in ("train", "baselines", "eval", "features", "interpret") for h in hooks]
    stages = {
        name: {
            "key": hashlib.sha256(name.encode()).hexdigest(),
            "status": "done",
            "seconds": 1.0,
            "finished": "2024-01-01T00:00:00+00:00",
        }
        for name in names + ["case_study", "ioi"]
    }
    (run / "reproduce.json").write_text(
        json.dumps(
            {
                "preset": "test",
                "reproduce_config": {"model": str(model_dir), "corpus": str(corpus), "backend": "offline"},
                "plan": plan,
                "stages": stages,
            }
        )
    )
    return run


def inject_hostile(run: Path) -> dict:
    """Put markup into token strings of case_study.json, as a real tokenizer's vocabulary may hold it."""
    path = run / "case_studies" / "case_study.json"
    cs = json.loads(path.read_text())
    cs["search"]["tokens"][0] = HOSTILE
    f = cs["features"][0]
    f["histogram"]["series"][0]["label"] = HOSTILE
    if f.get("output_effect") and f["output_effect"]["decreased"]:
        f["output_effect"]["decreased"][0]["token"] = HOSTILE
    path.write_text(json.dumps(cs))
    return cs
