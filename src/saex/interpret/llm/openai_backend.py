"""Any OpenAI-compatible endpoint (OpenAI, vLLM, llama-cpp-python, llama.cpp, Ollama) via the ``openai`` SDK.

Design from autointerp.md §5.2: the SDK's own retries are off and saex retries itself, with exponential
backoff on HTTP 429/5xx, timeouts, dropped connections and malformed answers, so every retry and
failure is counted in ``stats``. A semaphore caps concurrent requests. Parsed answers are cached on
disk (``cache.py``). The API key is read from an environment variable whose *name* is configurable; it
is handed to the SDK client and never stored, logged or cached by saex.

The capability probe (cached in memory and on disk) finds which simulation rung the endpoint supports:
echo + prompt logprobs on ``/v1/completions`` (Bills et al.'s all-at-once trick; ``max_tokens=1``
because llama-cpp-python reads 0 as unlimited), generated-token ``top_logprobs`` on chat, or text only.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlsplit

import numpy as np

from saex.errors import SaexError
from saex.interpret.llm.base import ChatResult, Counter, MalformedAnswer, RequestRejected, best_mode, value_probs
from saex.interpret.llm.cache import ResponseCache, canonical_request, endpoint_id
from saex.interpret.llm.parsing import echo_slot_tops
from saex.interpret.llm.prompts import simulation_segments
from saex.interpret.secrets import check_key_env_name, redact_text

DEFAULT_BASE_URL = "https://api.openai.com/v1"
LOCAL_HOSTS = {"localhost", "127.0.0.1", "::1", "0.0.0.0"}
PROBE_VERSION = 1
_NO_KEY = "sk-no-key-required"  # local servers ignore the key, but the SDK refuses to run without one


class OpenAIBackend(Counter):
    """An OpenAI-wire endpoint as a saex LLM backend (see ``saex.interpret.llm.base.Backend``).

    Implements the client of autointerp.md §5.2 for Bills et al. 2023's simulator (§1.4: echo + prompt
    logprobs, ``logprobs=15``) and its logprob fallbacks, and for Paulo et al. 2024's detection (§2.3).
    ``model=None`` asks ``GET /models`` and takes the server's only model. ``token_budget`` (prompt +
    completion tokens) stops the run with a SaexError once spent.
    """

    def __init__(
        self,
        model: str | None = None,
        base_url: str | None = None,
        *,
        api_key_env: str = "OPENAI_API_KEY",
        cache_dir=None,
        concurrency: int = 4,
        timeout: float = 60.0,
        max_retries: int = 4,
        top_logprobs: int = 20,
        echo_logprobs: int = 15,
        backoff_s: float = 1.0,
        max_backoff_s: float = 30.0,
        parse_retries: int = 1,
        token_budget: int | None = None,
    ):
        try:
            import openai
        except ImportError:
            raise SaexError("the openai backend needs the openai SDK: pip install openai==3.51.0") from None

        super().__init__()
        check_key_env_name(api_key_env, "api_key_env")  # a key pasted as the name: refused, never echoed
        # Like the SDK itself: an explicit URL, else $OPENAI_BASE_URL, else OpenAI's.
        self.base_url = (base_url or os.environ.get("OPENAI_BASE_URL") or DEFAULT_BASE_URL).rstrip("/")
        self.shown_url = redact_text(self.base_url)  # what messages name: no user:key@ of the URL
        host = urlsplit(self.base_url).hostname or ""
        key = os.environ.get(api_key_env, "")
        if not key and host not in LOCAL_HOSTS:
            raise SaexError(
                f"the environment variable {api_key_env} holding the API key for {host or self.shown_url} "
                "is not set; export it, name another variable with api_key_env, or use a local server"
            )
        if concurrency < 1 or max_retries < 0:
            raise SaexError(f"concurrency must be >= 1 and max_retries >= 0, got {concurrency} and {max_retries}")
        self._client = openai.OpenAI(api_key=key or _NO_KEY, base_url=self.base_url, timeout=timeout, max_retries=0)
        self._errors = openai
        self.concurrency, self.max_retries, self.parse_retries = concurrency, max_retries, parse_retries
        self.top_logprobs, self.echo_logprobs = top_logprobs, echo_logprobs
        self.backoff_s, self.max_backoff_s, self.token_budget = backoff_s, max_backoff_s, token_budget
        self._slots = threading.BoundedSemaphore(concurrency)
        self._probe_lock = threading.Lock()
        self._caps: dict[str, bool] | None = None
        self._cache = ResponseCache(cache_dir)
        self.endpoint = endpoint_id(self.base_url)
        self.model = model or self._only_model()
        self.name = f"openai:{self.model}"

    def __repr__(self) -> str:  # never the client: it holds the key
        return f"OpenAIBackend(model={self.model!r}, base_url={self.shown_url!r})"

    # ---- plumbing ---------------------------------------------------------------------------------------

    def map(self, fn, items: list) -> list:
        """Apply fn to every item with up to ``concurrency`` requests in flight, keeping the order."""
        if len(items) <= 1:
            return [fn(x) for x in items]
        with ThreadPoolExecutor(max_workers=min(self.concurrency, len(items))) as pool:
            return list(pool.map(fn, items))

    def _only_model(self) -> str:
        try:
            ids = [m.id for m in self._client.models.list().data]
        except self._errors.APIError as e:
            raise SaexError(
                f"no model given and {self.shown_url}/models failed ({type(e).__name__}); pass a model"
            ) from None
        if len(ids) != 1:
            raise SaexError(
                f"no model given and {self.shown_url} serves {len(ids)} models "
                f"({', '.join(ids[:5])}{'...' if len(ids) > 5 else ''}); pass one"
            )
        return ids[0]

    def _delay(self, attempt: int, error: Exception | None) -> float:
        delay = self.backoff_s * 2 ** (attempt - 1) * (1 + 0.25 * random.random())
        retry_after = getattr(getattr(error, "response", None), "headers", {}).get("retry-after")
        with contextlib.suppress(ValueError):
            delay = max(delay, float(retry_after)) if retry_after else delay
        return min(delay, self.max_backoff_s)

    def _send(self, route: str, payload: dict) -> dict:
        """One HTTP request; the decoded JSON body, or MalformedAnswer when the body is not a completion."""
        api = self._client.chat.completions if route == "chat.completions" else self._client.completions
        with self._slots:
            raw = api.with_raw_response.create(**payload)
        try:
            body = json.loads(raw.http_response.text)
        except ValueError:
            raise MalformedAnswer("the body is not JSON") from None
        if not isinstance(body, dict) or not isinstance(body.get("choices"), list) or not body["choices"]:
            raise MalformedAnswer("the body has no choices")
        return body

    def _post(self, route: str, payload: dict, usage: dict | None) -> dict | None:
        """Send with retries on transient errors; None once they are exhausted (counted as a failure)."""
        e = self._errors
        error: Exception | None = None
        for attempt in range(self.max_retries + 1):
            if attempt:
                self.count(usage, "retries")
                time.sleep(self._delay(attempt, error))
            if (
                self.token_budget is not None
                and self.stats["prompt_tokens"] + self.stats["completion_tokens"] >= self.token_budget
            ):
                raise SaexError(f"the token budget of {self.token_budget} tokens is spent ({self.endpoint})")
            self.count(usage, "requests")
            try:
                body = self._send(route, payload)
            except (e.AuthenticationError, e.PermissionDeniedError) as err:
                raise SaexError(
                    f"{self.shown_url} refused the credentials (HTTP {err.status_code}); check the key "
                    "in the configured environment variable"
                ) from None
            except e.RateLimitError as err:
                error, key = err, "rate_limited"
            except e.APITimeoutError as err:
                error, key = err, "timeouts"
            except e.APIConnectionError as err:
                error, key = err, "connection_errors"
            except e.APIStatusError as err:
                if err.status_code < 500 and err.status_code not in (408, 409):
                    self.note_error(f"HTTP {err.status_code}: {err}")
                    raise RequestRejected(err.status_code, redact_text(str(err))[:300]) from None
                error, key = err, "server_errors"
            except MalformedAnswer as err:
                error, key = err, "malformed"
            else:
                u = body.get("usage") or {}
                self.count(usage, "prompt_tokens", int(u.get("prompt_tokens") or 0))
                self.count(usage, "completion_tokens", int(u.get("completion_tokens") or 0))
                return body
            status = getattr(error, "status_code", None)
            self.note_error(f"{f'HTTP {status}' if status else type(error).__name__}: {error}")
            self.count(usage, key)
        self.count(usage, "failures")
        return None

    def _request(self, route: str, payload: dict, parse, usage: dict | None, probe: bool = False):
        """Cached request → parsed answer, or None after retries (counted). A 4xx raises only when probing."""
        request = canonical_request(self.endpoint, route, payload)
        hit = self._cache.get(request)
        if hit is not None:
            try:
                value = parse(hit)
                self.count(usage, "cache_hits")
                return value
            except MalformedAnswer:  # cached under an older parser; ask again
                pass
        for attempt in range(1 + (0 if probe else self.parse_retries)):
            try:
                body = self._post(route, payload, usage)
            except RequestRejected:
                if probe:
                    raise
                self.count(usage, "rejected")
                self.count(usage, "failures")
                return None
            if body is None:
                if probe:  # never record "unsupported" for an endpoint that merely did not answer
                    raise SaexError(
                        f"{self.shown_url} did not answer the capability probe after "
                        f"{self.max_retries + 1} attempts (last error: {self.last_error})"
                    )
                return None
            try:
                value = parse(body)
            except MalformedAnswer as err:
                if probe:
                    return None
                self.note_error(f"malformed answer: {err}")
                self.count(usage, "malformed")
                if attempt < self.parse_retries:
                    self.count(usage, "retries")
                continue
            self._cache.put(request, body)
            return value
        self.count(usage, "failures")
        return None

    # ---- the two primitives -----------------------------------------------------------------------------

    def chat(
        self,
        messages: list[dict],
        *,
        max_tokens: int,
        temperature: float = 0.0,
        top_logprobs: int = 0,
        parse,
        usage: dict | None = None,
        probe: bool = False,
    ):
        payload = {"model": self.model, "messages": messages, "max_tokens": max_tokens, "temperature": temperature}
        if top_logprobs:
            payload.update(logprobs=True, top_logprobs=min(top_logprobs, self.top_logprobs))
        return self._request("chat.completions", payload, lambda body: parse(_chat_result(body)), usage, probe)

    def slot_probs(self, segments: list[str], *, usage: dict | None = None, probe: bool = False):
        """Echo the all-at-once prompt; per slot the renormalised distribution over "0".."10" (or None)."""
        prompt = "".join(segments)
        offsets = np.cumsum([len(s) for s in segments[:-1]]).tolist()
        payload = {
            "model": self.model,
            "prompt": prompt,
            "echo": True,
            "logprobs": self.echo_logprobs,
            "max_tokens": 1,
            "temperature": 0.0,
        }
        tops = self._request("completions", payload, lambda body: echo_slot_tops(body, offsets), usage, probe)
        return None if tops is None else [value_probs(t) for t in tops]

    # ---- capability probe -------------------------------------------------------------------------------

    def capabilities(self) -> dict[str, bool]:
        with self._probe_lock:
            if self._caps is None:
                request = {"probe": PROBE_VERSION, "endpoint": self.endpoint, "model": self.model}
                cached = self._cache.get(request)
                if cached is not None and set(cached) == {"echo", "chat_logprobs"}:
                    self._caps = cached
                else:
                    self._caps = {"echo": self._probe_echo(), "chat_logprobs": self._probe_chat()}
                    self._cache.put(request, self._caps)
            return dict(self._caps)

    def probe(self) -> str:
        return best_mode(self.capabilities())

    def _probe_echo(self) -> bool:
        try:
            rows = self.slot_probs(simulation_segments("the word cat", ["The", " cat", " sat"]), probe=True)
        except RequestRejected:
            return False
        return rows is not None

    def _probe_chat(self) -> bool:
        messages = [{"role": "user", "content": "Answer with one digit only: how many legs does a cat have?"}]

        def has_logprobs(r: ChatResult) -> bool:
            return bool(r.pieces and r.pieces[0][1])

        try:
            if self.chat(messages, max_tokens=5, top_logprobs=5, parse=has_logprobs, probe=True):
                return True
        except RequestRejected:  # some servers reject the logprobs parameters outright
            pass
        try:
            self.chat(messages, max_tokens=5, parse=lambda r: True, probe=True)
        except RequestRejected as err:
            raise SaexError(f"{self.shown_url} rejected a plain chat request for model {self.model!r}: {err}") from None
        return False


def _chat_result(body: dict) -> ChatResult:
    try:
        choice = body["choices"][0]
        text = choice["message"].get("content") or ""
    except (KeyError, IndexError, TypeError, AttributeError):
        raise MalformedAnswer("chat answer without a message") from None
    content = (choice.get("logprobs") or {}).get("content")
    pieces = None
    if content:
        pieces = [
            (c.get("token", ""), {t["token"]: t["logprob"] for t in c.get("top_logprobs") or []}) for c in content
        ]
    return ChatResult(text=text, pieces=pieces)
