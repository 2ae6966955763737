"""On-disk cache of LLM responses, so reruns are free and reproducible (autointerp.md §5.2).

A response is stored under the sha256 of the canonical JSON of its request: endpoint (base-URL host,
port and path), API route, model, messages or prompt and every generation parameter. The API key is
never part of a request as saex builds it, and :func:`canonical_request` refuses one anyway, so no cache
file can hold a credential. Only answers that parsed are stored: a malformed answer is retried on the
next run instead of being replayed forever.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from urllib.parse import urlsplit

from saex.files import write_json_atomic

CACHE_VERSION = 1
_SECRET_FIELDS = {"api_key", "authorization", "headers", "extra_headers"}


def endpoint_id(base_url: str) -> str:
    """``host[:port]/path`` of a base URL: identifies the server without scheme, userinfo or query."""
    parts = urlsplit(base_url)
    host = parts.hostname or ""
    port = f":{parts.port}" if parts.port else ""
    return f"{host}{port}{parts.path.rstrip('/')}"


def canonical_request(endpoint: str, route: str, payload: dict) -> dict:
    """The request as cached and hashed. ``payload`` holds the model, messages/prompt and parameters."""
    leaked = _SECRET_FIELDS & {k.lower() for k in payload}
    if leaked:
        raise ValueError(f"refusing to cache a request carrying {sorted(leaked)}")
    return {"v": CACHE_VERSION, "endpoint": endpoint, "route": route, "payload": payload}


def request_key(request: dict) -> str:
    blob = json.dumps(request, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


class ResponseCache:
    """``root/<key[:2]>/<key>.json`` holding ``{"request": ..., "response": ...}``; disabled when root is None."""

    def __init__(self, root: str | Path | None):
        self.root = Path(root).expanduser() if root is not None else None

    def _path(self, key: str) -> Path:
        assert self.root is not None
        return self.root / key[:2] / f"{key}.json"

    def get(self, request: dict) -> dict | None:
        if self.root is None:
            return None
        path = self._path(request_key(request))
        try:
            entry = json.loads(path.read_text())
        except (OSError, ValueError):  # absent, or torn by an older non-atomic writer: a miss
            return None
        return entry.get("response") if isinstance(entry, dict) else None

    def put(self, request: dict, response: dict) -> None:
        if self.root is None:
            return
        write_json_atomic(self._path(request_key(request)), {"request": request, "response": response})
