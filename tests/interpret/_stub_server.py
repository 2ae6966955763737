"""A deterministic OpenAI-wire stub server for offline tests (autointerp.md §5.3).

It speaks just enough of the OpenAI HTTP API for saex's backend: ``GET /v1/models``,
``POST /v1/chat/completions`` (with ``logprobs``/``top_logprobs``) and ``POST /v1/completions`` (with
``echo`` + ``logprobs``). Every answer is decided by a Python callable, so a test scripts exactly what
the "model" says; faults (HTTP 429/500, hangs past the client timeout, malformed bodies) are queued
separately and served before the callable is consulted. What it proves is the protocol, the parsing
and the scoring arithmetic, never the quality of an explanation.

:class:`Oracle` is the scripted model most tests use: it reads the target tokens back out of saex's
prompts and answers with the true 0-10 activation of a synthetic feature, optionally inverted.
"""

from __future__ import annotations

import json
import math
import re
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class StubReply:
    """One scripted HTTP answer: a status, a body (dict → JSON, bytes → sent raw), an optional hang."""

    status: int = 200
    body: dict | bytes | None = None
    hang_s: float = 0.0
    """Sleep this long before answering (longer than the client timeout = a timeout)."""
    path: str | None = None
    """Only serve this fault to requests for this path (None: any path)."""


Handler = Callable[[str, dict], "dict | StubReply"]


@dataclass
class StubServer:
    """Threaded stub on 127.0.0.1 with an ephemeral port; use as a context manager."""

    handler: Handler | None = None
    models: tuple[str, ...] = ("stub-model",)
    faults: deque = field(default_factory=deque)
    requests: list = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __enter__(self) -> StubServer:
        stub = self

        class _H(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep test output quiet
                pass

            def do_GET(self):
                stub._record(self.path, {}, dict(self.headers))
                if self.path.rstrip("/").endswith("/models"):
                    data = [{"id": m, "object": "model", "owned_by": "stub", "created": 0} for m in stub.models]
                    self._send(StubReply(body={"object": "list", "data": data}))
                else:
                    self._send(StubReply(status=404, body={"error": {"message": "no such path"}}))

            def do_POST(self):
                n = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(n) or b"{}")
                stub._record(self.path, body, dict(self.headers))
                self._send(stub._answer(self.path, body))

            def _send(self, reply: StubReply):
                if reply.hang_s:
                    time.sleep(reply.hang_s)
                raw = reply.body if isinstance(reply.body, bytes) else json.dumps(reply.body or {}).encode()
                try:
                    self.send_response(reply.status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(raw)))
                    self.end_headers()
                    self.wfile.write(raw)
                except (BrokenPipeError, ConnectionResetError):  # the client gave up (timeout test)
                    pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _H)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/v1"

    def count(self, suffix: str = "") -> int:
        """How many requests reached the server (those whose path ends with ``suffix``)."""
        with self._lock:
            return sum(1 for path, _, _ in self.requests if path.endswith(suffix))

    def _record(self, path: str, body: dict, headers: dict) -> None:
        with self._lock:
            self.requests.append((path, body, headers))

    def _answer(self, path: str, body: dict) -> StubReply:
        with self._lock:
            fault = next((f for f in self.faults if f.path is None or path.endswith(f.path)), None)
            if fault is not None:
                self.faults.remove(fault)
        if fault is not None:
            return fault
        if self.handler is None:
            return StubReply(status=500, body={"error": {"message": "no handler"}})
        out = self.handler(path, body)
        return out if isinstance(out, StubReply) else StubReply(body=out)


# ---- response builders ------------------------------------------------------------------------------


def chat_body(text: str, pieces: list[tuple[str, dict[str, float]]] | None = None, model: str = "stub-model") -> dict:
    """A chat.completion; ``pieces`` (token, top logprobs) become ``logprobs.content`` when given."""
    choice: dict = {
        "index": 0,
        "finish_reason": "stop",
        "message": {"role": "assistant", "content": text},
        "logprobs": None,
    }
    if pieces is not None:
        assert "".join(t for t, _ in pieces) == text
        choice["logprobs"] = {
            "content": [
                {
                    "token": t,
                    "logprob": max(top.values()) if top else 0.0,
                    "bytes": list(t.encode()),
                    "top_logprobs": [{"token": k, "logprob": v, "bytes": list(k.encode())} for k, v in top.items()],
                }
                for t, top in pieces
            ]
        }
    n_out = len(pieces) if pieces else max(1, len(text.split()))
    return {
        "id": "chatcmpl-stub",
        "object": "chat.completion",
        "created": 0,
        "model": model,
        "choices": [choice],
        "usage": {"prompt_tokens": 100, "completion_tokens": n_out, "total_tokens": 100 + n_out},
    }


def completion_body(
    prompt: str, tops: list[dict[str, float] | None], tokens: list[str], model: str = "stub-model"
) -> dict:
    """An echoed legacy completion: prompt tokens with top logprobs, then one generated token."""
    offsets, pos = [], 0
    for t in tokens:
        offsets.append(pos)
        pos += len(t)
    assert "".join(tokens) == prompt
    tokens, tops, offsets = tokens + ["."], tops + [{".": 0.0}], offsets + [pos]
    return {
        "id": "cmpl-stub",
        "object": "text_completion",
        "created": 0,
        "model": model,
        "choices": [
            {
                "index": 0,
                "finish_reason": "length",
                "text": prompt + ".",
                "logprobs": {
                    "tokens": tokens,
                    "text_offset": offsets,
                    "top_logprobs": tops,
                    "token_logprobs": [None] + [0.0] * (len(tokens) - 1),
                },
            }
        ],
        "usage": {"prompt_tokens": len(tokens) - 1, "completion_tokens": 1, "total_tokens": len(tokens)},
    }


# ---- the oracle -------------------------------------------------------------------------------------


def value_logprobs(v: int, confidence: float = 0.8) -> dict[str, float]:
    """A peaked distribution over "0".."10": ``confidence`` on v, the rest on a neighbour."""
    other = 0 if v != 0 else 1
    return {str(v): math.log(confidence), str(other): math.log(1 - confidence), "unknown": math.log(1e-3)}


def last_block(text: str) -> list[str]:
    """The token column of the last ``<start> ... <end>`` block of a prompt."""
    block = text[text.rfind("<start>\n") + len("<start>\n") :]
    block = block[: block.find("\n<end>")]
    return [line.rsplit("\t", 1)[0] for line in block.split("\n")]


@dataclass
class Oracle:
    """A scripted model that knows the synthetic feature ``activation_of(token) -> 0..10``.

    ``echo`` / ``chat_logprobs`` switch the two logprob capabilities off (the endpoint then answers
    HTTP 400 to echo requests and ignores ``logprobs`` on chat, as many servers do); ``invert`` answers
    10 - v, which must score r ≈ -1.
    """

    activation_of: Callable[[str], int]
    echo: bool = True
    chat_logprobs: bool = True
    invert: bool = False
    explanation: str = "the word cat"

    def value(self, token: str) -> int:
        v = int(self.activation_of(token))
        return 10 - v if self.invert else v

    def __call__(self, path: str, body: dict) -> dict | StubReply:
        if path.endswith("/completions") and "chat" not in path:
            return self.complete(body)
        messages = body["messages"]
        system = messages[0]["content"] if messages[0]["role"] == "system" else ""
        last = messages[-1]["content"]
        want_lp = bool(body.get("logprobs")) and self.chat_logprobs
        if "predict how it will fire" in system:
            return self.simulate(last, want_lp)
        if "possess the latent" in system:
            return self.detect(last, want_lp)
        if "summarize in a single sentence" in system:
            return chat_body(f" {self.explanation}.")
        return chat_body("7", [("7", value_logprobs(7))] if want_lp else None)  # the capability probe

    def complete(self, body: dict) -> dict | StubReply:
        if not (body.get("echo") and self.echo):
            return StubReply(status=400, body={"error": {"message": "echo with logprobs is not supported"}})
        prompt = body["prompt"]
        tokens = re.findall(r"\t|\n|[^\t\n]+", prompt)
        start = prompt.rfind("<start>")
        tops: list[dict | None] = []
        pos = 0
        for i, t in enumerate(tokens):
            if pos > start and i >= 2 and tokens[i - 1] == "\t" and t == "unknown":
                tops.append(value_logprobs(self.value(tokens[i - 2])))
            else:
                tops.append({t: -0.1} if i else None)
            pos += len(t)
        return completion_body(prompt, tops, tokens)

    def simulate(self, user: str, want_lp: bool) -> dict:
        toks = last_block(user)
        vals = [self.value(t) for t in toks]
        if "JSON" in user.split("<end>")[-1]:
            text = json.dumps(vals)
            return chat_body(text)
        pieces: list[tuple[str, dict]] = []
        for i, (t, v) in enumerate(zip(toks, vals)):
            pieces += [(t, {t: 0.0}), ("\t", {"\t": 0.0}), (str(v), value_logprobs(v))]
            if i < len(toks) - 1:
                pieces.append(("\n", {"\n": 0.0}))
        text = "".join(p for p, _ in pieces)
        return chat_body(text, pieces if want_lp else None)

    def detect(self, user: str, want_lp: bool) -> dict:
        examples = re.findall(r"^Example \d+:(.*)$", user, flags=re.M)
        calls = [int(any(self.activation_of(w) > 0 for w in re.findall(r"\S+", ex))) for ex in examples]
        if self.invert:
            calls = [1 - c for c in calls]
        pieces: list[tuple[str, dict]] = [("[", {"[": 0.0})]
        for i, c in enumerate(calls):
            pieces.append((str(c), {str(c): math.log(0.9), str(1 - c): math.log(0.1)}))
            pieces.append(("," if i < len(calls) - 1 else "]", {",": 0.0}))
        text = "".join(p for p, _ in pieces)
        return chat_body(text, pieces if want_lp else None)
