"""Credentials kept out of everything saex writes or prints: URLs lose their userinfo (``user:key@``) and the
values of credential-named query parameters, and an API key pasted where the NAME of an environment variable is
asked for (``--api-key-env``) is refused without being shown.

Every recorded config (``interpret.json``, ``reproduce.json`` and its stage records, the report that reads them)
passes through :func:`redact`; messages that may quote a URL (a failure reason recorded in ``reproduce.json``, the
last error of a backend) through :func:`redact_text`.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from typing import TypeVar, cast

from saex.errors import SaexError

ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
"""What an environment variable's name looks like (POSIX portable names)."""

_USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.\-]*://)[^/?#@\s]*@")
_SECRET_QUERY = re.compile(
    r"(?i)([?&](?:api[_-]?key|access[_-]?token|auth|key|token|secret|password|passwd|sig|signature)=)[^&#\s]*"
)
REDACTED = "REDACTED"
T = TypeVar("T")


def redact_text(text: str) -> str:
    """``text`` with the userinfo of every URL in it removed (``http://u:KEY@host/v1`` → ``http://host/v1``)
    and the value of every credential-named query parameter (``?api_key=…``) replaced by ``REDACTED``."""
    return _SECRET_QUERY.sub(rf"\g<1>{REDACTED}", _USERINFO.sub(r"\1", text))


def redact(obj: T, path: str = "") -> tuple[T, list[str]]:
    """``obj`` (a config dict, a list, a text) with :func:`redact_text` applied to every text in it, and the
    dotted paths of the values that changed: what a record states as "credentials given, not recorded"."""
    clean, found = _redact(obj, path)
    return cast(T, clean), found


def _redact(obj, path: str) -> tuple[object, list[str]]:
    if isinstance(obj, dict):
        out, found = {}, []
        for k, v in obj.items():
            out[k], f = _redact(v, f"{path}.{k}" if path else str(k))
            found += f
        return out, found
    if isinstance(obj, (list, tuple)):
        items, found = [], []
        for i, v in enumerate(obj):
            item, f = _redact(v, f"{path}[{i}]")
            items.append(item)
            found += f
        return (items if isinstance(obj, list) else tuple(items)), found
    if isinstance(obj, str):
        clean = redact_text(obj)
        return clean, ([path or "value"] if clean != obj else [])
    return obj, []


def entropy_bits(text: str) -> float:
    """Shannon entropy of the characters of ``text``, bits per character."""
    n = len(text)
    return -sum(c / n * math.log2(c / n) for c in Counter(text).values()) if n else 0.0


def looks_like_key(value: str) -> bool:
    """Whether a value given as an environment variable's name looks like a credential instead: not a name at
    all, an ``sk-`` key, or long and random (high character entropy with mixed-case letters and digits, or in
    lower case with a fifth of it digits), where variable names are UPPER_SNAKE words."""
    if not ENV_NAME.fullmatch(value) or value.lower().startswith(("sk-", "sk_")):
        return True
    if len(value) < 20 or entropy_bits(value) < 3.5:
        return False
    classes = sum(bool(re.search(p, value)) for p in ("[a-z]", "[A-Z]", "[0-9]"))
    digits = sum(c.isdigit() for c in value) / len(value)
    # mixed case and digits, or a lower-case hex / base-36 token (names in capitals with a date stay names)
    return classes == 3 or (len(value) >= 24 and digits >= 0.2 and value != value.upper())


def check_key_env_name(name: str, option: str = "--api-key-env") -> None:
    """Refuse a value of ``option`` that is not an environment variable's name, without echoing it (it may be
    the key itself)."""
    if not name:
        raise SaexError(f"{option} is empty: give the NAME of the environment variable holding the API key")
    if looks_like_key(name):
        raise SaexError(
            f"{option} takes the NAME of the environment variable holding the API key (letters, digits and _, "
            f"e.g. OPENAI_API_KEY), and the value given looks like a key itself; it is neither shown nor recorded. "
            f"Export the key (export OPENAI_API_KEY=...) and pass the variable's name"
        )
