"""A human-readable (or JSON) summary of an activation store, optionally verifying every shard."""

from __future__ import annotations

import json
from pathlib import Path

from saex.store.reader import ActivationStore


def describe(path: str | Path, verify: bool = False) -> dict:
    store = ActivationStore(path, verify=verify)
    m = store.manifest
    if verify:
        store.verify_all()
    splits = {}
    for split in m["splits"]:
        shards = store.shards(split)
        splits[split] = {
            "rows": store.n_rows(split),
            "shards": len(shards),
            "bytes": sum(s["bytes"] for s in shards),
            "exhausted": m["splits"][split].get("exhausted", False),
        }
    stats = {}
    if store.shards("train"):
        for hook in store.hooks:
            x = store.load_shard("train", 0, hook)
            n = x.norm(dim=1)
            stats[hook] = {
                "width": store.width(hook),
                "mean_norm": n.mean().item(),
                "max_abs": x.abs().max().item(),
                "mean": x.mean().item(),
                "std": x.std().item(),
            }
    return {
        "path": str(store.path),
        "status": m["status"],
        "model": m["model"]["name"],
        "weights_sha256": m["model"]["weights_sha256"],
        "corpus": m["corpus"]["spec"],
        "context_length": store.context_length,
        "bos_policy": m["packing"]["bos_policy"],
        "separator": m["packing"]["separator_token"],
        "dtype": m["dtype"],
        "splits": splits,
        "hooks": {h: {**m["hooks"][h], **stats.get(h, {})} for h in store.hooks},
        "verified": verify,
    }


def summarize(path: str | Path, verify: bool = False, as_json: bool = False) -> str:
    d = describe(path, verify)
    if as_json:
        return json.dumps(d, indent=1)
    lines = [
        f"activation store {d['path']} ({d['status']}{', checksums verified' if verify else ''})",
        f"  model   {d['model']}  weights sha256 {d['weights_sha256'][:16]}…",
        f"  corpus  {d['corpus']}  context {d['context_length']} tokens, BOS policy {d['bos_policy']}, "
        f"separator {d['separator']!r}, dtype {d['dtype']}",
    ]
    for split, s in d["splits"].items():
        lines.append(
            f"  {split:<8}{s['rows']:>10,} rows in {s['shards']} shard(s), {s['bytes'] / 2**20:.1f} MiB"
            + ("  (corpus exhausted)" if s["exhausted"] else "")
        )
    for hook, h in d["hooks"].items():
        extra = (
            f"  train shard 0: mean ‖x‖ {h['mean_norm']:.3g}, max |x| {h['max_abs']:.3g}" if "mean_norm" in h else ""
        )
        lines.append(f"  {hook:<28} width {h['width']:<5} ({h['capture']} of {h['module']}){extra}")
    return "\n".join(lines)
