"""Synthetic activation stores for the training tests: a valid store written straight from given matrices.

The store follows ``docs/activation-store.md`` (format version 1): a manifest with the keys the reader and
trainer use, and shards holding one activation tensor per hook plus ``tokens`` / ``doc_ids``, each shard's
sha256 taken from :func:`saex.files.write_safetensors_atomic`. Rows are ``C*T`` with a small context
length ``T`` so that any matrix whose row count is a multiple of ``T`` can be stored.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch

from saex.files import write_json_atomic, write_safetensors_atomic

HOOK = "blocks.0.hook_resid_post"
T = 8


def write_store(
    path,
    train_ND: torch.Tensor,
    heldout_ND: torch.Tensor,
    hook: str = HOOK,
    shard_rows: int = 4096,
    name: str = "synthetic",
    dtype: torch.dtype = torch.float32,
    T: int = T,
    tokens_CT: torch.Tensor | None = None,
    docs_CT: torch.Tensor | None = None,
    vocab_size: int = 50,
    more: dict[str, tuple[torch.Tensor, torch.Tensor]] | None = None,
) -> Path:
    """Write ``train_ND`` / ``heldout_ND`` as a complete store at ``path``; returns the path. ``T`` is the
    context length; ``tokens_CT`` / ``docs_CT`` (``[contexts, T]``), if given, are the held-out split's token
    and document ids (default: counting tokens, one document per context). ``more`` adds other hook points
    (name -> (train, held-out) rows, the same rows as the first hook's)."""
    more = more or {}
    path = Path(path)
    width = train_ND.shape[1]
    assert heldout_ND.shape[1] == width
    assert shard_rows % T == 0
    splits = {}
    for s_i, (split, X) in enumerate((("train", train_ND), ("heldout", heldout_ND))):
        assert len(X) % T == 0, f"rows must be a multiple of {T}"
        given_tok = tokens_CT if split == "heldout" else None
        given_doc = docs_CT if split == "heldout" else None
        assert given_tok is None or given_tok.shape == (len(X) // T, T)
        assert given_doc is None or given_doc.shape == (len(X) // T, T)
        shards, doc = [], 0
        for i, lo in enumerate(range(0, len(X), shard_rows)):
            x = X[lo : lo + shard_rows].to(dtype).contiguous()
            C = len(x) // T
            if given_tok is None:
                tok = torch.arange(C * T, dtype=torch.int32).remainder(50).view(C, T)
            else:
                tok = given_tok[doc : doc + C].to(torch.int32).contiguous()
            if given_doc is None:
                docs = (torch.arange(C, dtype=torch.int32) + doc).unsqueeze(1).expand(C, T).contiguous()
            else:
                docs = given_doc[doc : doc + C].to(torch.int32).contiguous()
            doc += C
            file = path / split / f"shard-{i:05d}.safetensors"
            extra = {h: rows[s_i][lo : lo + shard_rows].to(dtype).contiguous() for h, rows in more.items()}
            digest = write_safetensors_atomic(
                file,
                {hook: x, **extra, "tokens": tok, "doc_ids": docs},
                {"split": split, "index": str(i), "format": "saex.activation_store"},
            )
            shards.append(
                {
                    "file": file.name,
                    "contexts": C,
                    "rows": C * T,
                    "bytes": file.stat().st_size,
                    "sha256": digest,
                    "tokens_sha256": hashlib.sha256(tok.numpy().tobytes()).hexdigest(),
                }
            )
        splits[split] = {"shards": shards, "rows": len(X), "contexts": len(X) // T, "target_tokens": len(X)}
    content = hashlib.sha256()
    for s in splits.values():
        for sh in s["shards"]:
            content.update(sh["sha256"].encode())
    manifest = {
        "format": "saex.activation_store",
        "format_version": 1,
        "saex_version": "test",
        "status": "complete",
        "identity": {"synthetic": name, "content": content.hexdigest()},
        "config": {"synthetic": name},
        "model": {
            "name": name,
            "source": "local",
            "weights_sha256": "-",
            "model_type": "synthetic",
            "family": "synthetic",
            "n_layers": 1,
            "d_model": width,
            "d_mlp": None,
            "max_context": T,
        },
        "tokenizer": {"name_or_path": "-", "class": "-", "vocab_size": vocab_size, "sha256": "-"},
        "corpus": {"spec": "synthetic"},
        "split": {
            "method": "given",
            "seed": 0,
            "heldout_fraction": len(heldout_ND) / max(1, len(train_ND) + len(heldout_ND)),
        },
        "packing": {"context_length": T, "bos_policy": "separator"},
        "dtype": {torch.float32: "float32", torch.float16: "float16", torch.bfloat16: "bfloat16"}[dtype],
        "hooks": {
            h: {"module": "synthetic", "capture": "output", "width": w, "layer": 0}
            for h, w in [(hook, width)] + [(h, rows[0].shape[1]) for h, rows in more.items()]
        },
        "versions": {"torch": torch.__version__},
        "splits": splits,
    }
    write_json_atomic(path / "manifest.json", manifest)
    return path


def ground_truth(
    d: int = 32, n_gt: int | None = None, n: int = 65_536, n_heldout: int = 4096, active: float = 5.0, seed: int = 0
):
    """Sharkey et al. 2022 style data: ``n_gt`` random unit features in ``d`` dims, each active with
    probability ``active / n_gt`` with a magnitude uniform in (0, 1]; returns (G [n_gt, d], train, heldout)."""
    n_gt = n_gt or 2 * d
    g = torch.Generator().manual_seed(seed)
    G = torch.randn(n_gt, d, generator=g)
    G = G / G.norm(dim=1, keepdim=True)

    def sample(rows):
        on = torch.rand(rows, n_gt, generator=g) < active / n_gt
        mag = 1.0 - torch.rand(rows, n_gt, generator=g)  # (0, 1]
        return (on * mag) @ G

    return G, sample(n), sample(n_heldout)


def mmcs(G_gd: torch.Tensor, W_FD: torch.Tensor) -> float:
    """Mean over ground-truth features of the max cosine similarity with any learned feature."""
    a = G_gd / G_gd.norm(dim=1, keepdim=True)
    b = W_FD / W_FD.norm(dim=1, keepdim=True)
    return (a @ b.T).max(dim=1).values.mean().item()


def snapshot(folder) -> dict[str, str]:
    """sha256 of every file under a folder, by relative path."""
    folder = Path(folder)
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def metrics(out) -> list[dict]:
    return [json.loads(line) for line in (Path(out) / "metrics.jsonl").read_text().splitlines() if line]


def random_data(n: int, d: int, seed: int = 0, scale: float = 1.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g) * scale


def train_cfg(store, out, **kw):
    """A small, fast training config on a synthetic store (override anything with keywords)."""
    from saex.dictionaries.ensemble import architectures
    from saex.train.config import TrainConfig

    base = dict(
        acts=str(store),
        hook=HOOK,
        out=str(out),
        ratio="4",
        alpha="0.01,0.02",
        steps=300,
        batch_size=64,
        eval_every=50,
        eval_tokens=512,
        checkpoint_every=50,
        # synthetic data has no attention sink or separator tokens: every row is a training row
        exclude_first=0,
        exclude_special_tokens=False,
    )
    # α only where the architecture reads it (an option that does not apply is refused)
    if "alpha" not in architectures()[kw.get("arch", "tied_l1")].reads or kw.get("target_l0"):
        del base["alpha"]
    return TrainConfig(**(base | kw))


def weights(out) -> dict[str, dict[str, torch.Tensor]]:
    """Every saved dictionary's tensors, by folder name."""
    from safetensors.torch import load_file

    return {
        p.name: load_file(str(p / "sae_weights.safetensors"))
        for p in sorted(Path(out).iterdir())
        if (p / "cfg.json").is_file()
    }


def assert_same_weights(a, b, exact: bool = True) -> None:
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys() and wa
    for name in wa:
        for key in wa[name]:
            if exact:
                assert torch.equal(wa[name][key], wb[name][key]), f"{name}/{key} differs"
            else:
                torch.testing.assert_close(wa[name][key], wb[name][key], rtol=1e-6, atol=1e-6)


def transcoder_data(
    d: int = 16,
    d_out: int = 12,
    n_gt: int = 32,
    n: int = 8192,
    n_heldout: int = 1024,
    seed: int = 0,
    active: float = 5.0,
):
    """A sparse map from one space to another: latent codes s (``ground_truth``'s law) give the input
    x = s G_in and the target y = s G_out; returns (G_in, G_out, (x_train, y_train), (x_heldout, y_heldout))."""
    g = torch.Generator().manual_seed(seed)
    G_in = torch.nn.functional.normalize(torch.randn(n_gt, d, generator=g), dim=1)
    G_out = torch.nn.functional.normalize(torch.randn(n_gt, d_out, generator=g), dim=1)

    def sample(rows):
        on = torch.rand(rows, n_gt, generator=g) < active / n_gt
        s = on * (1.0 - torch.rand(rows, n_gt, generator=g))
        return s @ G_in, s @ G_out

    return G_in, G_out, sample(n), sample(n_heldout)


#: The synthetic transcoder store's input and target hook points (an MLP's normalised input and its output).
TRANSCODER_IN, TRANSCODER_OUT = "blocks.0.ln2.hook_normalized", "blocks.0.hook_mlp_out"


class Interrupted(Exception):
    pass


def interrupt_at(monkeypatch, n: int):
    """Make the (n+1)-th training step of this process raise, as a crash would."""
    import saex.train.trainer as trainer

    real, calls = trainer._train_step, [0]

    def step(*args):
        if calls[0] == n:
            raise Interrupted(n)
        calls[0] += 1
        return real(*args)

    monkeypatch.setattr(trainer, "_train_step", step)


# Each architecture at a sparsity near the data's (~5 active). Matryoshka gets one prefix of half the
# dictionary: with 64 equally frequent true features there is no hierarchy, and a prefix smaller than 64 must
# learn mixtures of them (measured MMCS 0.846 with the default prefixes 1/16…1/2, 0.927 with 1/2).
RECOVERY = {
    "tied_l1": {"alpha": "0.01"},
    "untied_l1": {"alpha": "0.01"},
    "topk": {"k": "5"},
    "batchtopk": {"k": "5"},
    "matryoshka": {"k": "5", "matryoshka_prefixes": "0.5"},
    "jumprelu": {"target_l0": "5"},
    "gated": {"alpha": "0.03"},
}
