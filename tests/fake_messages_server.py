"""A local stand-in for the Anthropic Messages API, for tests and benchmarks.

    server = FakeMessagesServer(rule=gold_rule(golds)).start()   # http://127.0.0.1:<port>
    ... point edit.api.base_url at server.url, set the key variable to anything ...
    server.requests        # every request received: path, headers, body, body hash, answered?
    server.stop()

It speaks enough of the protocol for the anthropic SDK:
    POST /v1/messages                        answered by `rule(body) -> list of content blocks`
    POST /v1/messages/batches                create a batch (answered at once, "ended" after
                                             `batch_polls_until_end` retrieves)
    GET  /v1/messages/batches                list batches, newest first (one page)
    GET  /v1/messages/batches/<id>           retrieve
    GET  /v1/messages/batches/<id>/results   JSONL results

Faults for the retry tests:
    server.fail_next(429, n=2, retry_after=0.2)   the next 2 message requests get a 429
    server.fail_when(pred, 500)                   every request with pred(body) true gets a 500
    server.fail_fraction(0.2, 529, seed=0)        each message request fails with probability 0.2
    server.malformed_next(n)                      the next n get a tool call with bad fields (a
                                                  content verdict: the model's fault, not the wire's)
    server.bad_body_next(n, "truncated")          the next n get a 200 whose body is cut short
                                                  (connection closed), "garbage" (not JSON) or
                                                  "not_a_message" (JSON, but no message)
    server.delay_s = 0.5                          slow replies
    server.hold_after(n)                          answer n requests, then hold every later one
                                                  unanswered (for kill-mid-run tests)
Batch faults (per request inside a batch; such a request is not billed):
    server.batch_fail_when(pred, "errored", "overloaded_error")   also "expired", "canceled"
    server.batch_fail_fraction(0.2, "errored", seed=0)
    server.batch_results_truncated_next(n)        the next n results downloads are cut short
    server.hold_batch_create()                    the next batch is created, but the reply to
                                                  the create call waits for release() (for a
                                                  client killed between create and saving the id)
    server.list_supported = False                 GET /v1/messages/batches answers 404

`python tests/fake_messages_server.py --log requests.jsonl` runs it as its own process (prints the
URL, uses the simple `judge_all_correct` rule).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import re
import sys
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

# ----------------------------------------------------------------------------------------------
# Reading a tripost prompt back (the templates put each item's parts in tags)


def tag(text: str, name: str) -> str | None:
    m = re.search(rf"<{name}>\n?(.*?)\n?</{name}>", text, re.DOTALL)
    return m.group(1).strip() if m else None


def user_text(body: dict) -> str:
    content = body["messages"][-1]["content"]
    if isinstance(content, str):
        return content
    return "\n".join(b.get("text", "") for b in content if b.get("type") == "text")


def tool_name(body: dict) -> str | None:
    choice = body.get("tool_choice") or {}
    if choice.get("type") == "tool":
        return choice["name"]
    tools = body.get("tools") or []
    return tools[0]["name"] if tools else None


def _steps(text: str) -> list[tuple[str, str]]:
    out = []
    for line in text.strip().splitlines():
        m = re.match(r"^\((\d+|Final response)\)\s?(.*)$", line.strip())
        if m:
            out.append((m.group(1), m.group(2)))
    return out


def tool_use(name: str, data: dict) -> list[dict]:
    return [{"type": "tool_use", "id": "toolu_fake", "name": name, "input": data}]


def final_answer(text: str) -> str | None:
    m = re.search(r"the answer is\s*(.*?)\.?\s*$", text.strip().splitlines()[-1] if text.strip() else "")
    return m.group(1).strip() if m else None


def remark_call(body: dict, attempt: str | None, gold: str | None) -> list[dict]:
    """`write_remark` (SAIE's partner): judged against gold by the final answer; the stance is
    sent too (read only when the tool asks for it, i.e. when the model picks the stance)."""
    right = attempt is not None and gold is not None and final_answer(attempt) == final_answer(gold)
    remark = ("Step (1) is incorrect: check it again." if right
              else f"The final response is incorrect: the answer is {final_answer(gold or '') or 'something else'}.")
    return tool_use("write_remark", {"stance": "adversarial" if right else "supportive", "remark": remark})


def gold_rule(golds: dict[str, str]):
    """A rule that judges attempts against known gold rationales (question -> gold attempt): the
    first step that differs from gold is wrong; the improvement is gold from that step on; a
    remark is adversarial on a right final answer, supportive on a wrong one."""

    def rule(body: dict) -> list[dict]:
        text = user_text(body)
        question, attempt = tag(text, "question"), tag(text, "attempt")
        gold = golds.get(question or "")
        name = tool_name(body)
        if name == "write_rationale":
            return tool_use(name, {"rationale": gold or "(Final response) So the answer is unknown."})
        if name == "write_remark":
            return remark_call(body, attempt, gold)
        if gold is None or attempt is None:
            return [{"type": "text", "text": "I cannot tell."}]
        gold_steps, att_steps = _steps(gold), _steps(attempt)
        wrong = None
        for i, (label, step_text) in enumerate(att_steps):
            if i >= len(gold_steps) or gold_steps[i] != (label, step_text):
                wrong = i
                break
        if wrong is None and len(att_steps) < len(gold_steps):
            wrong = len(att_steps) - 1 if att_steps else 0
        if name == "report_feedback":
            if wrong is None:
                return tool_use(name, {"all_correct": True, "first_wrong_step": "", "wrong_part": "",
                                       "reason": ""})
            label, step_text = att_steps[wrong] if att_steps else ("1", "")
            return tool_use(name, {"all_correct": False, "first_wrong_step": label, "wrong_part": step_text,
                                   "reason": f"it should be: {gold_steps[min(wrong, len(gold_steps) - 1)][1]}"})
        if name == "write_continuation":
            label = tag(text, "first_wrong_step")
            start = next((i for i, (lab, _) in enumerate(gold_steps) if lab == label), len(gold_steps) - 1)
            cont = "\n".join(f"({lab}) {t}" for lab, t in gold_steps[start:])
            return tool_use(name, {"continuation": cont})
        return [{"type": "text", "text": "unknown request"}]

    return rule


def judge_all_correct(body: dict) -> list[dict]:
    """The simplest rule: every attempt is correct; continuations and rationales are a bare final line."""
    name = tool_name(body)
    if name == "report_feedback":
        return tool_use(name, {"all_correct": True, "first_wrong_step": "", "wrong_part": "", "reason": ""})
    if name == "write_continuation":
        return tool_use(name, {"continuation": "(Final response) So the answer is 0."})
    if name == "write_rationale":
        return tool_use(name, {"rationale": "(1) Nothing to do.\n(Final response) So the answer is 0."})
    if name == "write_remark":
        return tool_use(name, {"stance": "adversarial", "remark": "Are you sure?"})
    return [{"type": "text", "text": "ok"}]


# ----------------------------------------------------------------------------------------------
# The server


def body_hash(body: dict) -> str:
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


@dataclass
class Recorded:
    method: str
    path: str
    headers: dict
    body: dict | None
    hash: str
    time: float
    answered: bool = False
    status: int | None = None


class FakeMessagesServer:
    def __init__(self, rule=judge_all_correct, batch_polls_until_end: int = 1, log_path: str | None = None):
        self.rule = rule
        self.batch_polls_until_end = batch_polls_until_end
        self.log_path = log_path
        self.requests: list[Recorded] = []
        self.batches: dict[str, dict] = {}
        self.delay_s = 0.0
        self._faults: list[tuple[int, float | None, str | None]] = []
        self._persistent: list[tuple[object, int]] = []
        self._malformed = 0
        self._bad_bodies: list[str] = []
        self._fraction: tuple[float, int, random.Random] | None = None
        self._batch_faults: list[tuple[object, str, str]] = []
        self._batch_fraction: tuple[float, str, str, random.Random] | None = None
        self._truncated_results = 0
        self._hold_create = False
        self._create_release = threading.Event()
        self.list_supported = True
        self._admitted = 0
        self._hold_after: int | None = None
        self._release = threading.Event()
        self._lock = threading.Lock()
        self._seen_system: set[str] = set()
        self._httpd: ThreadingHTTPServer | None = None

    # -- control ---------------------------------------------------------------------------
    def fail_next(self, status: int, n: int = 1, retry_after: float | None = None,
                  error_code: str | None = None) -> None:
        """The next n message requests get `status` (error_code: e.g. "enforced_spend_limit_reached")."""
        with self._lock:
            self._faults.extend([(status, retry_after, error_code)] * n)

    def fail_when(self, pred, status: int) -> None:
        self._persistent.append((pred, status))

    def fail_fraction(self, p: float, status: int = 529, seed: int = 0) -> None:
        """Each later message request fails with `status` with probability p (seeded)."""
        self._fraction = (p, status, random.Random(seed))

    def malformed_next(self, n: int = 1) -> None:
        self._malformed += n

    def bad_body_next(self, n: int = 1, kind: str = "truncated") -> None:
        assert kind in ("truncated", "garbage", "not_a_message"), kind
        with self._lock:
            self._bad_bodies.extend([kind] * n)

    def batch_fail_when(self, pred, kind: str = "errored", error_type: str = "overloaded_error") -> None:
        """Requests in later batches with pred(params) true get result `kind` instead of a message."""
        self._batch_faults.append((pred, kind, error_type))

    def batch_fail_fraction(self, p: float, kind: str = "errored", error_type: str = "overloaded_error",
                            seed: int = 0) -> None:
        self._batch_fraction = (p, kind, error_type, random.Random(seed))

    def batch_results_truncated_next(self, n: int = 1) -> None:
        self._truncated_results += n

    def hold_batch_create(self) -> None:
        self._hold_create = True
        self._create_release.clear()

    def hold_after(self, n: int) -> None:
        """Answer n more message requests, then hold every later one."""
        self._admitted = 0
        self._hold_after = n
        self._release.clear()

    def release(self) -> None:
        self._hold_after = None
        self._release.set()
        self._hold_create = False
        self._create_release.set()

    @property
    def message_requests(self) -> list[Recorded]:
        return [r for r in self.requests if r.path == "/v1/messages"]

    @property
    def answered(self) -> list[Recorded]:
        """Message requests that got a 200 (what a real service would bill), batched ones included."""
        return [r for r in self.requests if r.answered and r.path in ("/v1/messages", "batch")]

    # -- lifecycle -------------------------------------------------------------------------
    def start(self, port: int = 0) -> "FakeMessagesServer":
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # quiet
                pass

            def do_POST(self):
                server._handle(self, "POST")

            def do_GET(self):
                server._handle(self, "GET")

        class Server(ThreadingHTTPServer):
            def handle_error(self, request, client_address):  # a killed client is not an error
                if not isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)):
                    super().handle_error(request, client_address)

        self._httpd = Server(("127.0.0.1", port), Handler)
        self._httpd.daemon_threads = True
        threading.Thread(target=self._httpd.serve_forever, daemon=True).start()
        return self

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._httpd.server_address[1]}"

    def stop(self) -> None:
        self.release()
        if self._httpd:
            self._httpd.shutdown()
            self._httpd.server_close()

    def __enter__(self):
        return self.start() if self._httpd is None else self

    def __exit__(self, *exc):
        self.stop()

    # -- handling --------------------------------------------------------------------------
    def _record(self, rec: Recorded) -> None:
        with self._lock:
            self.requests.append(rec)
        if self.log_path:
            with self._lock, open(self.log_path, "a") as f:
                f.write(json.dumps({"path": rec.path, "hash": rec.hash, "time": rec.time}) + "\n")

    def _handle(self, h: BaseHTTPRequestHandler, method: str) -> None:
        length = int(h.headers.get("content-length") or 0)
        raw = h.rfile.read(length) if length else b""
        body = json.loads(raw) if raw else None
        path = h.path.split("?")[0]
        rec = Recorded(method, path, {k.lower(): v for k, v in h.headers.items()}, body,
                       body_hash(body) if body is not None else "", time.time())
        self._record(rec)
        try:
            if path == "/v1/messages" and method == "POST":
                self._messages(h, rec)
            elif path == "/v1/messages/batches" and method == "POST":
                self._batch_create(h, body)
            elif path == "/v1/messages/batches" and method == "GET":
                self._batch_list(h)
            elif (m := re.fullmatch(r"/v1/messages/batches/([\w-]+)", path)) and method == "GET":
                self._batch_retrieve(h, m.group(1))
            elif (m := re.fullmatch(r"/v1/messages/batches/([\w-]+)/results", path)) and method == "GET":
                self._batch_results(h, m.group(1))
            else:
                self._send(h, 404, _error("not_found_error", f"no route {method} {path}"))
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client went away (killed): nothing was delivered

    def _send(self, h, status: int, data, headers: dict | None = None, content_type="application/json") -> None:
        payload = data if isinstance(data, bytes) else json.dumps(data).encode()
        h.send_response(status)
        h.send_header("content-type", content_type)
        h.send_header("content-length", str(len(payload)))
        h.send_header("request-id", "req_fake")
        for k, v in (headers or {}).items():
            h.send_header(k, v)
        h.end_headers()
        h.wfile.write(payload)
        h.wfile.flush()

    def _messages(self, h, rec: Recorded) -> None:
        body = rec.body
        if request_key(rec.headers) in (None, "", "bad-key"):
            return self._send(h, 401, _error("authentication_error", "invalid x-api-key"))
        with self._lock:
            held = self._hold_after is not None and self._admitted >= self._hold_after
            if not held:
                self._admitted += 1
            fault = self._faults.pop(0) if self._faults else None
            if fault is None and self._fraction is not None:
                p, status, rng = self._fraction
                if rng.random() < p:
                    fault = (status, None, None)
            malformed = self._malformed > 0
            if malformed and fault is None:
                self._malformed -= 1
            bad_body = self._bad_bodies.pop(0) if self._bad_bodies and fault is None else None
        if held:
            self._release.wait()  # held: the test kills the client meanwhile
            rec.status = 503
            return self._send(h, 503, _error("api_error", "released"))
        for pred, status in self._persistent:
            if pred(body):
                fault = (status, None, None)
        if fault is not None:
            status, retry_after, code = fault
            headers = {"retry-after": str(retry_after)} if retry_after is not None else {}
            kind = {401: "authentication_error", 403: "permission_error", 429: "rate_limit_error",
                    529: "overloaded_error"}.get(status, "api_error")
            rec.status = status
            return self._send(h, status, _error(kind, f"injected {status}", code), headers)
        if self.delay_s:
            time.sleep(self.delay_s)
        if bad_body is not None:
            rec.status = 200  # a 200 the client cannot use: not billed here (answered stays False)
            return self._send_bad_body(h, body, bad_body)
        if malformed:
            content = self._malformed_content(body)
        else:
            content = self.rule(body)
        message = self._message(body, content)
        rec.status, rec.answered = 200, True
        self._send(h, 200, message)

    def _send_bad_body(self, h, body: dict, kind: str) -> None:
        payload = json.dumps(self._message(body, self.rule(body))).encode()
        if kind == "not_a_message":
            payload = b'{"ok": true}'
        h.send_response(200)
        h.send_header("content-type", "application/json")
        if kind == "truncated":
            # The full length is announced, half is sent, then the connection closes.
            h.send_header("content-length", str(len(payload)))
            h.end_headers()
            h.wfile.write(payload[: len(payload) // 2])
            h.wfile.flush()
            h.close_connection = True
            return
        if kind == "garbage":
            payload = payload[: len(payload) // 2]  # a complete HTTP body that is not JSON
        h.send_header("content-length", str(len(payload)))
        h.end_headers()
        h.wfile.write(payload)
        h.wfile.flush()

    def _malformed_content(self, body: dict) -> list[dict]:
        name = tool_name(body)
        if name:  # a tool call missing its fields
            return tool_use(name, {"all_correct": "maybe"})
        return [{"type": "text", "text": "???"}]

    def _message(self, body: dict, content: list[dict]) -> dict:
        system = json.dumps(body.get("system"), sort_keys=True)
        with self._lock:
            hit = system in self._seen_system
            self._seen_system.add(system)
        n_system = len(system) // 4
        n_in = len(json.dumps(body.get("messages"))) // 4
        return {
            "id": "msg_" + body_hash(body)[:20], "type": "message", "role": "assistant",
            "model": body.get("model"), "content": content,
            "stop_reason": "tool_use" if content and content[0]["type"] == "tool_use" else "end_turn",
            "stop_sequence": None,
            "usage": {"input_tokens": n_in, "output_tokens": len(json.dumps(content)) // 4,
                      "cache_read_input_tokens": n_system if hit else 0,
                      "cache_creation_input_tokens": 0 if hit else n_system},
        }

    # -- batches ---------------------------------------------------------------------------
    def _batch_fault(self, params: dict) -> tuple[str, str] | None:
        for pred, kind, error_type in self._batch_faults:
            if pred(params):
                return kind, error_type
        if self._batch_fraction is not None:
            p, kind, error_type, rng = self._batch_fraction
            if rng.random() < p:
                return kind, error_type
        return None

    def _batch_create(self, h, body: dict) -> None:
        with self._lock:
            batch_id = f"msgbatch_{len(self.batches):04d}_{body_hash(body)[:12]}"
        results = []
        for item in body["requests"]:
            params = item["params"]
            fault = self._batch_fault(params)
            rec = Recorded("POST", "batch", {}, params, body_hash(params), time.time(),
                           answered=fault is None, status=200 if fault is None else None)
            self._record(rec)
            if fault is None:
                result = {"type": "succeeded", "message": self._message(params, self.rule(params))}
            elif fault[0] == "errored":
                result = {"type": "errored", "error": _error(fault[1], f"injected {fault[1]}")}
            else:
                result = {"type": fault[0]}
            results.append({"custom_id": item["custom_id"], "result": result})
        self.batches[batch_id] = {"results": results, "polls": 0, "created_at": time.time()}
        if self._hold_create:
            self._create_release.wait()  # created, but the client has not heard of it yet
        self._send(h, 200, self._batch_object(batch_id))

    def _batch_object(self, batch_id: str) -> dict:
        b = self.batches[batch_id]
        ended = b["polls"] >= self.batch_polls_until_end
        n = len(b["results"])
        counts = {"processing": 0 if ended else n, "succeeded": 0, "errored": 0, "canceled": 0, "expired": 0}
        if ended:
            for r in b["results"]:
                counts[r["result"]["type"]] += 1
        created = datetime.fromtimestamp(b["created_at"], timezone.utc)
        return {
            "id": batch_id, "type": "message_batch",
            "processing_status": "ended" if ended else "in_progress",
            "request_counts": counts,
            "created_at": created.isoformat(), "expires_at": "2099-01-01T00:00:00Z",
            "ended_at": created.isoformat() if ended else None,
            "archived_at": None, "cancel_initiated_at": None,
            "results_url": f"{self.url}/v1/messages/batches/{batch_id}/results" if ended else None,
        }

    def _batch_list(self, h) -> None:
        if not self.list_supported:
            return self._send(h, 404, _error("not_found_error", "no route GET /v1/messages/batches"))
        # Listing does not count as a poll: the status stays where it is.
        data = [self._batch_object(i) for i in sorted(self.batches, key=lambda i: -self.batches[i]["created_at"])]
        self._send(h, 200, {"data": data, "has_more": False, "first_id": data[0]["id"] if data else None,
                            "last_id": data[-1]["id"] if data else None})

    def _batch_retrieve(self, h, batch_id: str) -> None:
        if batch_id not in self.batches:
            return self._send(h, 404, _error("not_found_error", batch_id))
        data = self._batch_object(batch_id)
        self.batches[batch_id]["polls"] += 1
        self._send(h, 200, data)

    def _batch_results(self, h, batch_id: str) -> None:
        lines = "".join(json.dumps(r) + "\n" for r in self.batches[batch_id]["results"]).encode()
        with self._lock:
            truncated = self._truncated_results > 0
            self._truncated_results -= truncated
        if truncated:
            lines = lines[: len(lines) // 2]  # a complete HTTP body whose last JSON line is cut
        self._send(h, 200, lines, content_type="application/binary")


def request_key(headers: dict) -> str | None:
    """The key a request carries: `x-api-key`, or `Authorization: Bearer` (what anthropic 2.x sends)."""
    if headers.get("x-api-key"):
        return headers["x-api-key"]
    auth = headers.get("authorization") or ""
    return auth[len("Bearer "):] if auth.startswith("Bearer ") else None


def _error(kind: str, message: str, code: str | None = None) -> dict:
    error = {"type": kind, "message": message}
    if code:
        error["details"] = {"error_code": code}
    return {"type": "error", "error": error}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--log", help="append one JSON line per request (path, body hash)")
    args = p.parse_args()
    server = FakeMessagesServer(log_path=args.log).start(args.port)
    print(server.url, flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        server.stop()


if __name__ == "__main__":
    sys.exit(main())
