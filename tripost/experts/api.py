"""The Anthropic Messages API layer: cached, retried, concurrent (or batched) requests.

Experts stay synchronous; they hand a list of requests to `ApiClient.run_requests` and get one
`ApiResult` back per request, in order:

    client = ApiClient(cfg.edit.api, out_dir)
    results = client.run_requests([ApiRequest(system=..., user=..., tools=[...], tool_choice=...)])
    results[0].response   # the Messages API response as a dict, or None
    results[0].error      # None, or a drop reason such as "llm_api_error_529" (counted, not raised)
    results[0].transient  # True: the request failed for a reason that says nothing about it
                          # (API down, 429/5xx/timeout after the retries): ask again on a rerun
    client.close()        # prints the one-line token/cost summary, writes api_usage.json

What it guarantees:
  * The key comes from the environment variable `api.api_key_env` and is only ever handed to the
    SDK; it is never logged or written anywhere.
  * Only the sampling parameters the config sets are sent (temperature null -> not sent).
  * Each response is written to an on-disk cache the moment it arrives, one file per request
    (sha256 of model, sampling parameters, system, messages, tools), atomically (temp file +
    rename). A run killed at any point and rerun pays for nothing twice.
  * 429, 529, other 5xx, connection errors, timeouts and 200 replies whose body is cut short or
    is not a message are retried with exponential backoff and jitter, honouring `retry-after`, up
    to `api.max_retries` times; then that one item fails with a counted error marked `transient`
    (never cached: a rerun sends it again) and the run goes on. Other 4xx fail the item at once,
    not transient (the request itself is wrong). Authentication (401), permission (403) and
    billing / spend-limit errors stop the run at once with one clear TripostError (finished
    responses are on disk).
  * `api.batch: true` sends uncached requests through the Message Batches API (half price).
    Before a batch is created, an intent record (a client-side marker, the request count and the
    custom_id -> cache key map) goes to `<out>/api_batches.json`; the batch id is added the moment
    the create call returns (and the map is dropped once the batch is collected). A restarted run polls the batches it knows, and for an intent with no
    id (killed between create and saving) looks the batch up in the server's batch list instead
    of paying for it again (see `_recover_batch` for what that can and cannot find). Errored
    (overloaded, rate-limited, server error) and expired results are resubmitted in a new batch,
    up to `api.max_retries` times.
  * Usage: every answered request, retry and final error is appended to
    `<out>/api_usage_ledger.log` the moment it happens (one JSON line each, tagged with this
    invocation's id), so a killed run's spending is still on record. `close()` writes
    `<out>/api_usage.json`: this invocation's figures, and under "cumulative" the sum over every
    invocation in the ledger (resumed runs included).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import random
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from tripost.config import ApiConfig, check_api_config
from tripost.errors import TripostError

# Anthropic's pricing relative to the base input price (see docs/llm.md).
CACHE_READ_FACTOR = 0.1
CACHE_WRITE_FACTOR = 1.25
BATCH_FACTOR = 0.5
BATCH_CHUNK = 10_000  # requests per batch (the API allows up to 100,000)
STATE_FILE = "api_batches.json"
USAGE_FILE = "api_usage.json"
# One JSON object per line, but not named .jsonl: a run's .jsonl files are its records, the same
# after a kill and resume, while this is bookkeeping that differs between the two by design.
LEDGER_FILE = "api_usage_ledger.log"
# Batch results whose error says nothing about the request: resubmitted. Other error types
# (invalid_request_error, not_found_error, ...) are verdicts on the request and stay final.
TRANSIENT_BATCH_ERRORS = ("api_error", "overloaded_error", "rate_limit_error", "timeout_error")
# How far the server's clock may be from ours when matching an unrecorded batch by creation time.
CLOCK_SKEW_S = 600.0


@dataclass
class ApiRequest:
    """One Messages API call. `system` is the shared few-shot prefix (sent with cache_control so
    the API caches it); `user` is the per-item message."""

    system: str
    user: str
    tools: list[dict] | None = None
    tool_choice: dict | None = None


@dataclass
class ApiResult:
    """The outcome of one request: `response` (the message as a dict), or `error` (a drop reason).

    `transient` is True when the request failed for a reason that says nothing about the request:
    connection errors, timeouts, 408, 429, 5xx and 529, a 200 whose body was cut short or was not
    a message, an errored (overloaded, rate-limited, server error), expired or canceled batch
    result, or no answer at all; each after its retries. Such a result is never cached, and a
    caller should treat the item as not done (a rerun sends it again). `transient` is False for a
    success and for a verdict on the request: another 4xx (400, 404, 413, ...) or a batch result
    errored with invalid_request_error. What the model wrote (a reply with no tool call, bad
    fields) is the caller's to judge; a response that arrived is never transient."""

    response: dict | None
    error: str | None = None
    cached: bool = False
    detail: str | None = None  # what the server said about an error
    transient: bool = False


@dataclass
class Usage:
    """Counters for the end-of-run summary (and, summed over the ledger, for the run directory)."""

    sent: int = 0
    cache_hits: int = 0
    errors: dict = field(default_factory=dict)
    retries: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
    cost_usd: float = 0.0

    def add(self, delta: dict) -> None:
        """Add a ledger line's counts (any subset of the fields; errors as {reason: n})."""
        for name, value in delta.items():
            if name == "errors":
                for reason, n in value.items():
                    self.errors[reason] = self.errors.get(reason, 0) + n
            elif name in USAGE_FIELDS:
                setattr(self, name, getattr(self, name) + value)

    def as_dict(self) -> dict:
        return dict(self.__dict__)


USAGE_FIELDS = tuple(f for f in Usage.__dataclass_fields__ if f != "errors")


class _Fatal(Exception):
    """An error no retry can fix (bad key, no permission, out of credit): stops the run."""


class _BadResponse(Exception):
    """A 200 whose body parsed as JSON but is not a Messages API message."""


class _HousekeepingFailed(TripostError):
    """A Message Batches call (create, list, retrieve, results) that failed for good. `kind` is
    "retry" (still failing after the retries) or "fail" (an error retrying cannot fix, such as
    a 404 from a server without that endpoint)."""

    def __init__(self, message: str, kind: str):
        super().__init__(message)
        self.kind = kind


# ----------------------------------------------------------------------------------------------
# Cache


def request_params(cfg: ApiConfig, req: ApiRequest) -> dict:
    """The exact JSON body sent to /v1/messages. Only parameters the config sets are included."""
    params: dict = {
        "model": cfg.model,
        "max_tokens": cfg.max_tokens,
        "system": [{"type": "text", "text": req.system, "cache_control": {"type": "ephemeral"}}],
        "messages": [{"role": "user", "content": req.user}],
    }
    if cfg.temperature is not None:
        params["temperature"] = cfg.temperature
    if req.tools:
        params["tools"] = req.tools
    if req.tool_choice:
        params["tool_choice"] = req.tool_choice
    return params


def _create(client, params: dict):
    """messages.create with exactly `params` as the JSON body. Parameters this SDK version has no
    keyword for (e.g. temperature, which anthropic 2.x dropped) travel in extra_body."""
    core = ("model", "max_tokens", "messages")
    return client.messages.create(**{k: params[k] for k in core},
                                  extra_body={k: v for k, v in params.items() if k not in core})


def cache_key(params: dict) -> str:
    """sha256 of the canonical JSON of everything that determines the answer."""
    return hashlib.sha256(json.dumps(params, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


def atomic_write_json(path: Path, data, fsync: bool = True) -> None:
    """Write JSON so that a reader (or a rerun after SIGKILL) sees the old file or the new one,
    never half of one: temp file in the same directory, then rename. `fsync` also makes it
    survive a power cut."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{id(data)}.tmp")
    with tmp.open("w", encoding="utf-8") as f:
        json.dump(data, f, ensure_ascii=False)
        if fsync:
            f.flush()
            os.fsync(f.fileno())
    os.replace(tmp, path)


class ResponseCache:
    """One JSON file per request key: <dir>/<key[:2]>/<key>.json."""

    def __init__(self, directory: Path):
        self.directory = Path(directory)

    def path(self, key: str) -> Path:
        return self.directory / key[:2] / f"{key}.json"

    def get(self, key: str) -> dict | None:
        path = self.path(key)
        if not path.is_file():
            return None
        try:
            return json.loads(path.read_text(encoding="utf-8"))["response"]
        except (json.JSONDecodeError, KeyError, OSError):
            return None  # cannot happen with atomic writes; treat as a miss and redo it

    def put(self, key: str, response: dict) -> None:
        # No fsync: rename already makes a killed process leave the old state or the new, and
        # an entry lost to a power cut is only a miss (one request paid again). fsync per
        # response would serialise the event loop on the disk (about 10 ms each here).
        atomic_write_json(self.path(key), {"key": key, "response": response}, fsync=False)


# ----------------------------------------------------------------------------------------------
# Errors: which to retry, which stop the run


def _error_kind(exc: BaseException) -> tuple[str, str, float | None]:
    """("retry" | "fail" | "fatal", reason, retry_after_seconds) for an exception from a call.
    "retry" is transient (retried, and not final when the retries run out); "fail" is a verdict
    on the request; "fatal" stops the run."""
    import anthropic

    # A body cut short mid-JSON, not JSON at all, or not a message: the wire's fault, like a 5xx.
    # (A body cut short before its announced length is a connection error, below.)
    if isinstance(exc, (json.JSONDecodeError, _BadResponse, anthropic.APIResponseValidationError)):
        return "retry", "llm_api_bad_response", None
    if isinstance(exc, anthropic.APIStatusError):
        status = exc.status_code
        code = getattr(exc, "error_code", None) or ""
        message = str(getattr(exc, "api_message", None) or exc)
        retry_after = _retry_after(exc.response.headers)
        if status in (401, 403):
            what = "authentication failed (401): check the key" if status == 401 else \
                "permission denied (403): the key may not use this model or endpoint"
            return "fatal", f"API {what}; server said: {message}", None
        if status == 402 or "spend_limit" in code or "billing" in code or "credit balance" in message.lower():
            return "fatal", f"API billing / spend limit reached ({status}); server said: {message}", None
        if status == 429 or status == 408 or status >= 500:
            return "retry", f"llm_api_error_{status}", retry_after
        return "fail", f"llm_api_error_{status}", None
    if isinstance(exc, anthropic.APIConnectionError):
        return "retry", "llm_api_connection_error", None
    return "fail", f"llm_api_{type(exc).__name__}", None


def _retry_after(headers) -> float | None:
    """Seconds from `retry-after-ms` or `retry-after` (seconds; an HTTP date is ignored)."""
    for name, scale in (("retry-after-ms", 1000.0), ("retry-after", 1.0)):
        value = headers.get(name) if headers is not None else None
        if value is not None:
            try:
                return max(0.0, float(value) / scale)
            except ValueError:
                pass
    return None


def backoff_delay(cfg: ApiConfig, attempt: int, retry_after: float | None) -> float:
    """Exponential backoff with full jitter; a server's retry-after is a lower bound."""
    delay = random.uniform(0.5, 1.0) * min(cfg.retry_max_s, cfg.retry_base_s * 2 ** attempt)
    if retry_after is not None:
        delay = max(delay, retry_after)
    return delay


def _run_sync(coro):
    """Run a coroutine to completion from synchronous code, also when the caller already runs an
    event loop (a notebook): then in a helper thread with its own loop."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()


# ----------------------------------------------------------------------------------------------
# Usage ledger


def read_ledger(path: Path) -> tuple[Usage, int]:
    """The sum of every line of a usage ledger, and how many invocations wrote to it."""
    total, invocations = Usage(), set()
    if not path.is_file():
        return total, 0
    with path.open(encoding="utf-8") as f:
        for line in f:
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:
                continue  # only a full disk can cut a line short; the others still count
            invocations.add(entry["invocation"])
            total.add(entry)
    return total, len(invocations)


def _message_dict(message) -> dict:
    """A response as a plain dict; _BadResponse if it is not a message (the SDK builds a Message
    from any JSON object, so a proxy's error page in JSON would otherwise pass as an answer)."""
    response = message.model_dump(mode="json", exclude_none=True)
    if not isinstance(response.get("content"), list):
        raise _BadResponse(f"the reply is not a message: {json.dumps(response)[:200]}")
    return response


def _resubmittable(result: ApiResult) -> bool:
    """A batch result worth a new batch in this run: transient, and not canceled (somebody
    canceled the batch on purpose; a rerun asks again)."""
    return result.transient and result.error != "llm_batch_canceled"


def _n_requests(counts) -> int:
    return counts.processing + counts.succeeded + counts.errored + counts.canceled + counts.expired


# ----------------------------------------------------------------------------------------------
# The client


class ApiClient:
    def __init__(self, cfg: ApiConfig, out_dir: str | Path):
        check_api_config(cfg)  # where the values are used: also for configs built in code
        self.cfg = cfg
        self.out_dir = Path(out_dir)
        # Read here so a missing key fails before any work; kept only in memory.
        self._key = os.environ.get(cfg.api_key_env)
        if not self._key:
            raise TripostError(f"environment variable {cfg.api_key_env} is not set: it must hold the API key "
                               f"(config edit.api.api_key_env names the variable)")
        self.cache = ResponseCache(Path(cfg.cache_dir).expanduser() if cfg.cache_dir else self.out_dir / "api_cache")
        self.usage = Usage()
        self.state_path = self.out_dir / STATE_FILE
        self.ledger_path = self.out_dir / LEDGER_FILE
        self.invocation = uuid.uuid4().hex[:16]

    def __repr__(self) -> str:  # never show the key
        return f"ApiClient(model={self.cfg.model!r}, base_url={self.cfg.base_url!r})"

    def _record(self, **delta) -> None:
        """Count `delta` (Usage fields; errors as {reason: n}) for this invocation, and append it
        to the ledger now, so that a run killed later still has it on record."""
        self.usage.add(delta)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        line = json.dumps({"invocation": self.invocation, "time": round(time.time(), 3), **delta}) + "\n"
        # One write() to an O_APPEND descriptor: each line lands whole, also when several
        # processes share the directory. No fsync (like the cache): a power cut may lose a line.
        fd = os.open(self.ledger_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line.encode())
        finally:
            os.close(fd)

    # -- the synchronous facade --------------------------------------------------------------
    def run_requests(self, requests: list[ApiRequest], desc: str = "api") -> list[ApiResult]:
        """One result per request, in order. Cached responses cost nothing; identical requests
        in one call are sent once."""
        params = [request_params(self.cfg, r) for r in requests]
        keys = [cache_key(p) for p in params]
        results: dict[str, ApiResult] = {}
        todo: dict[str, dict] = {}
        for key, p in zip(keys, params):
            if key in results or key in todo:
                continue
            cached = self.cache.get(key)
            if cached is not None:
                results[key] = ApiResult(cached, cached=True)
            else:
                todo[key] = p
        if results:
            self._record(cache_hits=len(results))
        if todo:
            results.update(_run_sync(self._run_async(todo, desc)))
        return [results[k] for k in keys]

    async def _run_async(self, todo: dict[str, dict], desc: str) -> dict[str, ApiResult]:
        import anthropic

        client = anthropic.AsyncAnthropic(api_key=self._key, base_url=self.cfg.base_url,
                                          max_retries=0, timeout=self.cfg.timeout_s)
        try:
            if self.cfg.batch:
                return await self._run_batches(client, todo)
            return await self._run_concurrent(client, todo, desc)
        except _Fatal as e:
            raise TripostError(f"{e} (responses received so far are cached in {self.cache.directory}; "
                               "rerun the same command after fixing this)") from None
        finally:
            await client.close()

    # -- concurrent mode ---------------------------------------------------------------------
    async def _run_concurrent(self, client, todo: dict[str, dict], desc: str) -> dict[str, ApiResult]:
        from tqdm import tqdm

        semaphore = asyncio.Semaphore(self.cfg.concurrency)
        results: dict[str, ApiResult] = {}
        bar = tqdm(total=len(todo), desc=desc, unit="req", file=sys.stderr, disable=len(todo) < 8, leave=False)

        stop = asyncio.Event()  # set by a fatal error: nothing more is sent

        async def one(key: str, params: dict) -> None:
            async with semaphore:
                if stop.is_set():
                    return
                try:
                    results[key] = await self._call(lambda: _create(client, params), key)
                except _Fatal:
                    stop.set()
                    raise
            bar.update(1)

        tasks = [asyncio.create_task(one(k, p)) for k, p in todo.items()]
        try:
            await asyncio.gather(*tasks)
        except BaseException:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            raise
        finally:
            bar.close()
        return results

    async def _call(self, send, key: str) -> ApiResult:
        """Send with retries; cache and count a success; count a final failure."""
        kind, reason, detail = "fail", "llm_api_error", None
        for attempt in range(self.cfg.max_retries + 1):
            try:
                response = _message_dict(await send())
            except Exception as exc:  # noqa: BLE001 - sorted by _error_kind
                kind, reason, retry_after = _error_kind(exc)
                detail = f"{type(exc).__name__}: {exc}"[:300]
                if kind == "fatal":
                    raise _Fatal(reason) from None
                if kind == "fail" or attempt == self.cfg.max_retries:
                    break
                self._record(retries=1)
                await asyncio.sleep(backoff_delay(self.cfg, attempt, retry_after))
                continue
            # Counted before it is cached: a kill between the two leaves it uncached, so the
            # rerun pays for it again, and the ledger rightly shows both.
            self._count(response, batch=False)
            self.cache.put(key, response)
            return ApiResult(response)
        self._record(errors={reason: 1})
        return ApiResult(None, reason, detail=f"after {attempt + 1} attempt(s): {detail}", transient=kind == "retry")

    async def _retrying(self, send, what: str):
        """For batch housekeeping calls (create, list, retrieve, results): retry, then give up
        loudly with _HousekeepingFailed (a TripostError: the run stops, its state is on disk)."""
        for attempt in range(self.cfg.max_retries + 1):
            try:
                return await send()
            except Exception as exc:  # noqa: BLE001
                kind, reason, retry_after = _error_kind(exc)
                if kind == "fatal":
                    raise _Fatal(reason) from None
                if kind == "fail" or attempt == self.cfg.max_retries:
                    raise _HousekeepingFailed(
                        f"Message Batches API call ({what}) failed: {reason}: {str(exc)[:300]} (batch state "
                        f"in {self.state_path}; rerun the same command to resume)", kind) from None
                self._record(retries=1)
                await asyncio.sleep(backoff_delay(self.cfg, attempt, retry_after))

    def _count(self, response: dict, batch: bool) -> None:
        u = response.get("usage") or {}
        n_in, n_out = u.get("input_tokens") or 0, u.get("output_tokens") or 0
        n_read, n_write = u.get("cache_read_input_tokens") or 0, u.get("cache_creation_input_tokens") or 0
        cost = (n_in + CACHE_READ_FACTOR * n_read + CACHE_WRITE_FACTOR * n_write) * self.cfg.price_input_per_mtok
        cost += n_out * self.cfg.price_output_per_mtok
        self._record(sent=1, input_tokens=n_in, output_tokens=n_out, cache_read_tokens=n_read,
                     cache_write_tokens=n_write, cost_usd=cost / 1e6 * (BATCH_FACTOR if batch else 1.0))

    # -- batch mode --------------------------------------------------------------------------
    def _load_state(self) -> dict:
        if not self.state_path.exists():
            return {"batches": []}
        try:
            return json.loads(self.state_path.read_text(encoding="utf-8"))
        except json.JSONDecodeError:
            raise TripostError(f"{self.state_path}: corrupt batch state file; delete it to resubmit") from None

    def _save_state(self, state: dict) -> None:
        atomic_write_json(self.state_path, state)

    async def _run_batches(self, client, todo: dict[str, dict]) -> dict[str, ApiResult]:
        state = self._load_state()
        results: dict[str, ApiResult] = {}
        # 1. What an earlier run submitted, or was submitting when it was killed: collect it
        #    instead of paying for it again.
        for entry in state["batches"]:
            if not entry["done"]:
                results.update(await self._resume_batch(client, state, entry))
        # 2. Submit what has no answer yet, then resubmit errored and expired results (a new
        #    batch of just those), at most max_retries times, with backoff in between.
        for attempt in range(self.cfg.max_retries + 1):
            pending = [(k, p) for k, p in todo.items() if k not in results or _resubmittable(results[k])]
            if not pending:
                break
            if attempt > 0:
                self._record(retries=len(pending))
                await asyncio.sleep(backoff_delay(self.cfg, attempt - 1, None))
            for start in range(0, len(pending), BATCH_CHUNK):
                entry = await self._submit_batch(client, state, pending[start:start + BATCH_CHUNK])
                results.update(await self._collect_batch(client, state, entry))
        out: dict[str, ApiResult] = {}
        for key in todo:
            out[key] = results.get(key) or ApiResult(None, "llm_api_not_answered", transient=True)
            if out[key].error:
                self._record(errors={out[key].error: 1})
        return out

    async def _submit_batch(self, client, state: dict, chunk: list[tuple[str, dict]]) -> dict:
        # The intent goes to disk before the create call: a run killed during the call, or after
        # it but before the id is saved, then knows that a batch may exist (_recover_batch).
        entry = {"id": None, "intent": uuid.uuid4().hex, "n": len(chunk), "created_after": time.time(),
                 "custom_ids": {key: key for key, _ in chunk}, "done": False}
        state["batches"].append(entry)
        self._save_state(state)
        # A sha256 hex key is 64 chars of [0-9a-f]: a valid custom_id as it is.
        requests = [{"custom_id": key, "params": params} for key, params in chunk]
        try:
            batch = await self._retrying(lambda: client.messages.batches.create(requests=requests), "create")
        except _HousekeepingFailed as e:
            if e.kind == "fail":  # refused outright (e.g. 400): no batch was made, nothing to look for
                self._finish(state, entry)
            raise
        entry["id"] = batch.id
        entry["submitted_at"] = time.time()
        self._save_state(state)
        print(f"api: submitted batch {batch.id} ({len(chunk)} requests); state in {self.state_path}",
              file=sys.stderr)
        return entry

    async def _resume_batch(self, client, state: dict, entry: dict) -> dict[str, ApiResult]:
        if entry["id"] is None:
            return await self._recover_batch(client, state, entry)
        return await self._collect_batch(client, state, entry)

    def _finish(self, state: dict, entry: dict) -> None:
        """Mark an entry collected. Its custom_id map goes: the file is rewritten (with fsync) on
        every change, and the maps of all batches ever sent would make that ever slower."""
        entry["done"] = True
        del entry["custom_ids"]
        self._save_state(state)

    async def _collect_batch(self, client, state: dict, entry: dict) -> dict[str, ApiResult]:
        results = await self._wait_and_read(client, entry["id"], entry["custom_ids"])
        self._finish(state, entry)
        return results

    async def _recover_batch(self, client, state: dict, entry: dict) -> dict[str, ApiResult]:
        """The results of the batch an interrupted run created but did not record, if it exists.

        The Message Batches API takes no idempotency key, and a batch shows its custom_ids only in
        its results. So: list the batches created from `created_after` (minus CLOCK_SKEW_S) up to
        the latest moment the create call could have returned (plus the skew), with the same
        number of requests and not already in the state file; wait for each to end and read its
        results; the first whose custom_ids are this intent's is adopted (its results are used,
        nothing is resubmitted). None found: the create never reached the server, and the caller
        submits the requests again.

        What this cannot rule out: a create still being processed by the server when the rerun
        lists (then paid twice); a server that cannot list batches (then resubmitted, with a
        warning); waiting for a batch of the same size that someone else created on the same key
        at the same time (time lost only: its results do not match and are not used)."""
        known = {e["id"] for e in state["batches"] if e["id"] is not None}
        since = entry["created_after"] - CLOCK_SKEW_S
        until = entry["created_after"] + CLOCK_SKEW_S + \
            (self.cfg.max_retries + 1) * (self.cfg.timeout_s + self.cfg.retry_max_s)
        try:
            listed = await self._list_batches(client, since)
        except _HousekeepingFailed as e:
            if e.kind != "fail":
                raise  # the server is unreachable: keep the intent for the next run
            print(f"api: cannot list batches on this server ({e}); resubmitting the {entry['n']} requests of "
                  f"interrupted batch intent {entry['intent']} (paid twice if that batch was created)",
                  file=sys.stderr)
            listed = []
        candidates = [b for b in listed if b.id not in known and _n_requests(b.request_counts) == entry["n"]
                      and b.created_at.timestamp() <= until]
        results: dict[str, ApiResult] = {}
        for batch in sorted(candidates, key=lambda b: b.created_at):
            try:
                results = await self._wait_and_read(client, batch.id, entry["custom_ids"])
            except _HousekeepingFailed as e:
                if e.kind != "fail":
                    raise
                continue  # e.g. someone else's batch, archived or deleted meanwhile (404)
            if results:
                entry["id"] = batch.id
                print(f"api: found batch {batch.id} of an interrupted run (intent {entry['intent']}); "
                      "using its results", file=sys.stderr)
                break
        entry["recovered"] = entry["id"] is not None
        self._finish(state, entry)
        return results

    async def _list_batches(self, client, since: float) -> list:
        """The batches created at or after `since` (epoch seconds); the API lists newest first."""
        page = await self._retrying(lambda: client.messages.batches.list(limit=100), "list")
        listed = []
        while True:
            for batch in page.data:
                if batch.created_at.timestamp() < since:
                    return listed
                listed.append(batch)
            if not page.has_next_page():
                return listed
            page = await self._retrying(page.get_next_page, "list")

    async def _wait_and_read(self, client, batch_id: str, custom_ids: dict) -> dict[str, ApiResult]:
        """Poll a batch until it ends, then its results for the custom_ids in `custom_ids`
        (cache key by custom_id); successes are counted and cached."""
        while True:
            batch = await self._retrying(lambda: client.messages.batches.retrieve(batch_id), f"retrieve {batch_id}")
            if batch.processing_status == "ended":
                break
            await asyncio.sleep(self.cfg.batch_poll_s)

        async def read_all() -> list:
            # Inside one retried call: a download cut short (a bad JSON line) is fetched again whole.
            decoder = await client.messages.batches.results(batch_id)
            return [item async for item in decoder]

        results: dict[str, ApiResult] = {}
        for item in await self._retrying(read_all, f"results of {batch_id}"):
            key = custom_ids.get(item.custom_id)
            if key is None:
                continue  # not ours: another run's batch looked at by _recover_batch
            result = item.result
            if result.type == "succeeded":
                try:
                    response = _message_dict(result.message)
                except _BadResponse as e:
                    results[key] = ApiResult(None, "llm_api_bad_response", detail=str(e), transient=True)
                    continue
                self._count(response, batch=True)
                self.cache.put(key, response)
                results[key] = ApiResult(response)
            elif result.type == "errored":
                error = result.error.error
                results[key] = ApiResult(None, "llm_batch_errored", detail=f"{error.type}: {error.message}"[:300],
                                         transient=error.type in TRANSIENT_BATCH_ERRORS)
            else:  # expired (not run within 24 h) or canceled
                results[key] = ApiResult(None, f"llm_batch_{result.type}", transient=True)
        return results

    # -- end of run --------------------------------------------------------------------------
    def summary(self) -> str:
        u = self.usage
        errors = sum(u.errors.values())
        detail = f" ({', '.join(f'{k}: {v}' for k, v in sorted(u.errors.items()))})" if errors else ""
        return (f"api {self.cfg.model}: {u.sent} requests answered, {u.cache_hits} from cache, "
                f"{u.retries} retries, {errors} failed{detail}; tokens: {u.input_tokens:,} input, "
                f"{u.output_tokens:,} output, {u.cache_read_tokens:,} cache read; "
                f"estimated cost ${u.cost_usd:.4f}")

    def close(self) -> None:
        """Print the summary; write api_usage.json: this invocation, and the ledger's totals. An
        invocation that asked nothing (a failed start, everything done) leaves both as they were."""
        if not (self.usage.sent or self.usage.cache_hits or self.usage.errors or self.usage.retries):
            return
        total, invocations = read_ledger(self.ledger_path)
        line = self.summary()
        if invocations > 1:
            line += (f"\napi: {self.out_dir} over {invocations} invocations: {total.sent} requests answered, "
                     f"estimated cost ${total.cost_usd:.4f} (see {LEDGER_FILE})")
        print(line, file=sys.stderr)
        atomic_write_json(self.out_dir / USAGE_FILE,
                          {"model": self.cfg.model, "invocation": self.invocation, **self.usage.as_dict(),
                           "cumulative": {"invocations": invocations, **total.as_dict()}})
