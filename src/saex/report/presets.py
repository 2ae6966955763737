"""Presets of ``saex reproduce``: which layers, sweeps and sample sizes stand in for the paper's study.

The paper (Cunningham et al. 2023, Sections 3-5 and Appendices B-G) trains tied SAEs on the residual stream
of every layer of Pythia-70M and untied ones on its MLPs, sweeps α and R, scores 150 features per method
with GPT-4 autointerp, patches IOI on Pythia-410M and studies single features. A preset scales that study
to a model and a machine: ``quick`` runs in minutes on 2 CPU cores, ``paper`` keeps the paper's sweeps and
sample sizes. Layers are chosen relative to the model's depth, so a preset works on any model.
"""

from __future__ import annotations

import math

from saex.errors import SaexError

PRESETS = ("quick", "paper")

# The paper's choices (paper-spec §1.4, §3.3, App. E): α = 8.6e-4 residual, 3.2e-4 MLP; R = 2 for Fig. 2.
PAPER_ALPHA_RESID = 8.6e-4
PAPER_ALPHA_MLP = 3.2e-4


def _layers(n_layers: int, count: int) -> list[int]:
    """``count`` layers spread evenly from the first to the last."""
    if count >= n_layers:
        return list(range(n_layers))
    return sorted({round(i * (n_layers - 1) / (count - 1)) for i in range(count)})


def plan(preset: str, n_layers: int) -> dict:
    """The concrete study for a model with ``n_layers`` blocks: every number a stage needs.

    ``main_layer`` is where Fig. 4's prompt search, the R sweep (Fig. 8) and the dashboard run; the layer
    before it is also harvested so that a Fig. 5 circuit has an upstream dictionary.
    """
    if preset not in PRESETS:
        raise SaexError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    if n_layers < 2:
        raise SaexError(f"the model has {n_layers} layer(s); saex reproduce needs at least 2 (a circuit needs a "
                        "layer before the main one)")
    # About a fifth of the way in: Pythia-70M's apostrophe feature sits at layer 4 of 6 but the early-middle
    # layers of a deeper model are where the paper's autointerp advantage is largest (Fig. 2).
    main = max(1, round(0.2 * (n_layers - 1)))
    if preset == "quick":
        return {
            "preset": "quick",
            "resid_layers": [main - 1, main],
            "mlp_layers": [main],
            "main_layer": main,
            "ioi_layer": main,
            "alphas_resid": [1e-4, PAPER_ALPHA_RESID, 3e-3],
            "alphas_mlp": [1e-4, PAPER_ALPHA_MLP, 1e-3],
            "ratios_resid": [1.0, 2.0, 4.0],
            "ratios_mlp": [1.0],
            "main_ratio": 2.0,
            "main_ratio_mlp": 1.0,
            "main_alpha_resid": PAPER_ALPHA_RESID,
            "main_alpha_mlp": PAPER_ALPHA_MLP,
            "tokens": 150_000,
            "heldout_tokens": 60_000,
            "context_length": 128,
            "train_batch": 1024,
            "eval_tokens": 30_000,
            "eval_contexts": 8,
            "ica_rows": 8192,
            "ica_max_iter": 100,
            "fragment_length": 64,
            "fragments": 1500,
            "interpret_features": 60,
            "ioi_prompts": 6,
            "ioi_mode": "quick",
            "case_top": 3,
            "case_max_density": 0.05,
            "circuit_depth": 1,
            "dashboard_features": 0,
        }
    resid = _layers(n_layers, 6)
    if main - 1 not in resid:
        resid = sorted(set(resid) | {main - 1, main})
    return {
        "preset": "paper",
        "resid_layers": resid,
        "mlp_layers": _layers(n_layers, 6),
        "main_layer": main,
        # Pythia-410M layer 11 of 24 for Fig. 3.
        "ioi_layer": round(11 / 23 * (n_layers - 1)),
        # The code's sweep (paper-spec §8.3) around the paper's α, and its R series (Fig. 8).
        "alphas_resid": [0.0, 1e-4, 3e-4, PAPER_ALPHA_RESID, 2e-3, 5e-3],
        "alphas_mlp": [0.0, 1e-4, PAPER_ALPHA_MLP, 1e-3, 3e-3],
        "ratios_resid": [0.5, 1.0, 2.0, 4.0, 8.0],
        "ratios_mlp": [1.0, 2.0],
        "main_ratio": 2.0,
        "main_ratio_mlp": 1.0,
        "main_alpha_resid": PAPER_ALPHA_RESID,
        "main_alpha_mlp": PAPER_ALPHA_MLP,
        "tokens": 20_000_000,
        "heldout_tokens": 2_000_000,
        "context_length": 256,
        "train_batch": 2048,
        "eval_tokens": 0,
        "eval_contexts": 256,
        "ica_rows": 65_536,
        "ica_max_iter": 200,
        "fragment_length": 64,
        "fragments": 50_000,
        "interpret_features": 150,
        "ioi_prompts": 50,
        "ioi_mode": "quick",
        "case_top": 3,
        "case_max_density": 0.05,
        "circuit_depth": 2,
        "dashboard_features": 0,
    }


def estimate_seconds(p: dict, n_params_per_layer: float, d_model: int, d_mlp: int, vocab: int,
                     gflops: float) -> dict[str, float]:
    """Rough time of each stage from FLOP counts and a measured fp32 matmul rate (``gflops``).

    An estimate, not a measurement. The efficiency factors were fitted once to the quick preset on SmolLM2-135M
    on 2 CPU cores (where they reproduce the measured stage times within about 30%); other shapes and machines
    will differ.
    """
    rate = gflops * 1e9
    depth = max(p["resid_layers"] + p["mlp_layers"]) + 1
    tokens = p["tokens"] + p["heldout_tokens"]
    hooks = len(p["resid_layers"]) + len(p["mlp_layers"])
    out = {"harvest": 2 * n_params_per_layer * depth * tokens / (0.7 * rate)}

    def train_flops(d: int, ratios, alphas) -> float:
        # Forward + backward of a tied/untied SAE: about 6 matmuls of B·d·F per step.
        return sum(6 * 2 * d * r * d for r in ratios) * len(alphas) * p["tokens"]

    # The R sweep runs at the main layer only; the other residual layers train the main R.
    train = train_flops(d_model, p["ratios_resid"], p["alphas_resid"])
    train += (len(p["resid_layers"]) - 1) * train_flops(d_model, [p["main_ratio"]], p["alphas_resid"])
    train += len(p["mlp_layers"]) * train_flops(d_mlp, p["ratios_mlp"], p["alphas_mlp"])
    out["train"] = train / rate
    # FastICA: iterations × rows × d² multiply-adds a few times over, per residual layer (PCA is cheap).
    out["baselines"] = len(p["resid_layers"]) * 24 * p["ica_max_iter"] * p["ica_rows"] * d_model ** 2 / rate
    n_model = n_params_per_layer * depth + 2 * vocab * d_model
    n_dicts = len(p["alphas_resid"]) * (len(p["ratios_resid"]) + len(p["resid_layers"]) - 1) + 6 * hooks
    eval_tokens = p["eval_contexts"] * p["context_length"]
    out["eval"] = (n_dicts + 2 * hooks) * 2 * n_model * eval_tokens / (0.25 * rate)
    out["features"] = hooks * 8 * 2 * d_model * 4 * d_model * min(p["heldout_tokens"], 64 * p["fragments"]) / (
        0.5 * rate)
    # Quick mode: ~160 exact evaluations of ~20-token prompts per dictionary (the α sweep and 2 PCA variants).
    out["ioi"] = (len(p["alphas_resid"]) + 2) * 160 * 2 * n_model * p["ioi_prompts"] * 20 / (0.75 * rate)
    out["other"] = 0.1 * sum(out.values())  # autointerp (offline), case studies, dashboard, report
    return {k: math.ceil(v) for k, v in out.items()}
