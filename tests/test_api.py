"""tripost.api against the local fake Messages server: request shape, retries, fatal errors,
the on-disk cache and batch mode (including a client killed after submitting a batch)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fake_messages_server import FakeMessagesServer, user_text
from tripost.experts.api import ApiClient, ApiRequest, ResponseCache, cache_key, request_params
from tripost.config import ApiConfig
from tripost.errors import TripostError

KEY_ENV = "TRIPOST_TEST_API_KEY"
SECRET = "sk-test-very-secret-0123456789"
TOOL = {"name": "report_feedback", "description": "judge",
        "input_schema": {"type": "object", "properties": {"all_correct": {"type": "boolean"}}}}


@pytest.fixture
def server():
    with FakeMessagesServer() as s:
        yield s


@pytest.fixture(autouse=True)
def api_key(monkeypatch):
    monkeypatch.setenv(KEY_ENV, SECRET)


def make_cfg(server, **kw) -> ApiConfig:
    base = dict(model="claude-test", base_url=server.url, api_key_env=KEY_ENV, max_tokens=300,
                retry_base_s=0.01, retry_max_s=0.05, max_retries=3, concurrency=4, batch_poll_s=0.05)
    base.update(kw)
    return ApiConfig(**base)


def reqs(n: int, prefix: str = "item") -> list[ApiRequest]:
    return [ApiRequest(system="shared few-shot prefix", user=f"{prefix} {i}", tools=[TOOL],
                       tool_choice={"type": "tool", "name": "report_feedback"}) for i in range(n)]


def all_files_text(*dirs: Path) -> str:
    return "".join(p.read_text(errors="replace") for d in dirs for p in Path(d).rglob("*") if p.is_file())


def test_requests_are_well_formed_and_the_key_stays_secret(server, tmp_path):
    client = ApiClient(make_cfg(server), tmp_path)
    results = client.run_requests(reqs(3))
    client.close()
    assert [r.error for r in results] == [None] * 3
    assert len(server.message_requests) == 3
    for rec in server.message_requests:
        body = rec.body
        assert body["model"] == "claude-test" and body["max_tokens"] == 300
        assert body["system"] == [{"type": "text", "text": "shared few-shot prefix",
                                   "cache_control": {"type": "ephemeral"}}]
        assert body["tools"] == [TOOL] and body["tool_choice"] == {"type": "tool", "name": "report_feedback"}
        assert "temperature" not in body and "top_p" not in body and "top_k" not in body
        assert [m["role"] for m in body["messages"]] == ["user"]  # no assistant prefill
        # the key travels in a header (x-api-key, or Authorization: Bearer in anthropic 2.x)
        assert SECRET in (rec.headers.get("x-api-key", "") + rec.headers.get("authorization", ""))
    assert sorted(user_text(r.body) for r in server.message_requests) == ["item 0", "item 1", "item 2"]
    assert SECRET not in all_files_text(tmp_path)
    assert SECRET not in repr(client)
    usage = json.loads((tmp_path / "api_usage.json").read_text())
    assert usage["sent"] == 3 and usage["input_tokens"] > 0 and usage["cost_usd"] > 0


def test_temperature_is_sent_only_when_set(server, tmp_path):
    client = ApiClient(make_cfg(server, temperature=0.0), tmp_path)
    client.run_requests(reqs(1))
    assert server.message_requests[0].body["temperature"] == 0.0


def test_missing_key_names_the_variable(monkeypatch, server, tmp_path):
    monkeypatch.delenv(KEY_ENV)
    with pytest.raises(TripostError, match=KEY_ENV):
        ApiClient(make_cfg(server), tmp_path)


@pytest.mark.parametrize("status", [429, 529, 500])
def test_transient_errors_are_retried_honouring_retry_after(server, tmp_path, status):
    server.fail_next(status, n=2, retry_after=0.3)
    client = ApiClient(make_cfg(server, concurrency=1), tmp_path)
    [result] = client.run_requests(reqs(1))
    assert result.error is None and result.response["content"][0]["name"] == "report_feedback"
    sent = server.message_requests
    assert [r.status for r in sent] == [status, status, 200]
    # retry-after (0.3 s) is honoured although the configured backoff is at most 0.05 s
    assert sent[1].time - sent[0].time >= 0.29 and sent[2].time - sent[1].time >= 0.29
    assert client.usage.retries == 2 and client.usage.errors == {}


def test_persistent_fault_fails_that_item_only(server, tmp_path):
    server.fail_when(lambda body: user_text(body) == "item 1", 500)
    client = ApiClient(make_cfg(server, max_retries=2), tmp_path)
    results = client.run_requests(reqs(3))
    assert [r.error for r in results] == [None, "llm_api_error_500", None]
    assert len([r for r in server.message_requests if user_text(r.body) == "item 1"]) == 3  # 1 + 2 retries
    assert client.usage.errors == {"llm_api_error_500": 1}
    assert "1 failed" in client.summary()
    # a failure is not cached: a rerun asks again (and now succeeds)
    server._persistent.clear()
    again = ApiClient(make_cfg(server), tmp_path).run_requests(reqs(3))
    assert [r.error for r in again] == [None, None, None] and [r.cached for r in again] == [True, False, True]


def test_bad_request_is_not_retried(server, tmp_path):
    server.fail_next(400)
    client = ApiClient(make_cfg(server, concurrency=1), tmp_path)
    results = client.run_requests(reqs(2))
    assert [r.error for r in results] == ["llm_api_error_400", None]
    assert len(server.message_requests) == 2


@pytest.mark.parametrize("status,code,words", [
    (401, None, "authentication failed"),
    (403, None, "permission denied"),
    (429, "enforced_spend_limit_reached", "spend limit"),
    (402, None, "billing"),
])
def test_auth_permission_and_billing_errors_stop_the_run(server, tmp_path, status, code, words):
    client = ApiClient(make_cfg(server, concurrency=1), tmp_path)
    client.run_requests(reqs(1, prefix="before"))  # finished work is on disk
    server.fail_next(status, n=10, error_code=code)
    with pytest.raises(TripostError, match=words) as err:
        client.run_requests(reqs(3))
    assert SECRET not in str(err.value)
    assert len(server.message_requests) == 2  # no retries, no further requests
    assert len(list((tmp_path / "api_cache").rglob("*.json"))) == 1


def test_cache_rerun_sends_nothing_and_writes_atomically(server, tmp_path):
    cfg = make_cfg(server)
    first = ApiClient(cfg, tmp_path).run_requests(reqs(4) + reqs(2))  # 2 duplicates: sent once
    assert len(server.message_requests) == 4
    files = list((tmp_path / "api_cache").rglob("*"))
    assert not [f for f in files if f.name.endswith(".tmp")]
    client = ApiClient(cfg, tmp_path)
    second = client.run_requests(reqs(4))
    assert len(server.message_requests) == 4 and all(r.cached for r in second)
    assert [r.response for r in second] == [r.response for r in first[:4]]
    assert client.usage.cache_hits == 4 and "4 from cache" in client.summary()


def test_cache_key_covers_model_sampling_system_messages_tools():
    cfg = ApiConfig()
    base = cache_key(request_params(cfg, reqs(1)[0]))
    variants = [
        request_params(ApiConfig(model="other"), reqs(1)[0]),
        request_params(ApiConfig(temperature=0.5), reqs(1)[0]),
        request_params(ApiConfig(max_tokens=7), reqs(1)[0]),
        request_params(cfg, ApiRequest("another prefix", "item 0", [TOOL])),
        request_params(cfg, ApiRequest("shared few-shot prefix", "item 9", [TOOL])),
        request_params(cfg, ApiRequest("shared few-shot prefix", "item 0", None)),
    ]
    assert len({base} | {cache_key(v) for v in variants}) == 7


def test_corrupt_cache_entry_is_a_miss(tmp_path):
    cache = ResponseCache(tmp_path)
    cache.put("ab" * 32, {"x": 1})
    assert cache.get("ab" * 32) == {"x": 1}
    cache.path("ab" * 32).write_text('{"key": "abab", "resp')
    assert cache.get("ab" * 32) is None


def test_batch_mode_uses_the_batches_api_and_the_cache(server, tmp_path):
    cfg = make_cfg(server, batch=True)
    client = ApiClient(cfg, tmp_path)
    results = client.run_requests(reqs(5))
    assert [r.error for r in results] == [None] * 5
    creates = [r for r in server.requests if r.path == "/v1/messages/batches"]
    assert len(creates) == 1 and len(creates[0].body["requests"]) == 5
    assert not server.message_requests  # nothing went through /v1/messages
    state = json.loads((tmp_path / "api_batches.json").read_text())
    assert len(state["batches"]) == 1 and state["batches"][0]["done"]
    assert "batch_1" not in client.summary()
    # rerun: everything cached, nothing sent
    n = len(server.requests)
    assert all(r.cached for r in ApiClient(cfg, tmp_path).run_requests(reqs(5)))
    assert len(server.requests) == n


BATCH_CLIENT = """
import sys
from tripost.experts.api import ApiClient, ApiRequest
from tripost.config import ApiConfig
cfg = ApiConfig(model="claude-test", base_url=sys.argv[1], api_key_env="{env}", batch=True, batch_poll_s=0.05)
reqs = [ApiRequest(system="shared few-shot prefix", user=f"item {{i}}") for i in range(4)]
ApiClient(cfg, sys.argv[2]).run_requests(reqs)
"""


def test_batch_mode_resumes_polling_after_a_kill(tmp_path):
    # The batch never ends while the first client polls; the client is SIGKILLed after it saved
    # the batch id. The rerun must poll the same batch, not submit a second one.
    with FakeMessagesServer(batch_polls_until_end=10**9) as server:
        env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
        proc = subprocess.Popen([sys.executable, "-c", BATCH_CLIENT.format(env=KEY_ENV), server.url, str(tmp_path)],
                                env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        state_path = tmp_path / "api_batches.json"
        deadline = time.time() + 60
        while not [r for r in server.requests if "/batches/" in r.path] and time.time() < deadline:
            time.sleep(0.05)
        assert state_path.exists(), proc.stderr.read1().decode() if proc.poll() is not None else "no state"
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        [batch_id] = server.batches
        assert json.loads(state_path.read_text())["batches"][0]["id"] == batch_id
        server.batch_polls_until_end = 0  # the batch has ended meanwhile
        cfg = ApiConfig(model="claude-test", base_url=server.url, api_key_env=KEY_ENV, batch=True, batch_poll_s=0.05)
        results = ApiClient(cfg, tmp_path).run_requests(
            [ApiRequest(system="shared few-shot prefix", user=f"item {i}") for i in range(4)])
        assert [r.error for r in results] == [None] * 4
        assert len(server.batches) == 1
        assert len([r for r in server.requests if r.path == "/v1/messages/batches"]) == 1
        assert json.loads(state_path.read_text())["batches"][0]["done"] is True


def test_connection_errors_are_retried_then_counted(tmp_path):
    with FakeMessagesServer() as dead:
        url = dead.url  # a port with nobody listening once stopped
    cfg = ApiConfig(model="claude-test", base_url=url, api_key_env=KEY_ENV, max_retries=2,
                    retry_base_s=0.01, retry_max_s=0.02, timeout_s=5)
    client = ApiClient(cfg, tmp_path)
    [result] = client.run_requests(reqs(1))
    assert result.error == "llm_api_connection_error"
    assert client.usage.retries == 2 and client.usage.errors == {"llm_api_connection_error": 1}


# ----------------------------------------------------------------------------------------------
# Issue 13: transient failures are not verdicts; batches lose nothing; usage adds up; config ranges


def cache_entries(out: Path) -> int:
    return len(list((out / "api_cache").rglob("*.json"))) if (out / "api_cache").exists() else 0


def test_transient_failures_are_flagged_and_sent_again_on_rerun(server, tmp_path):
    server.fail_when(lambda body: user_text(body) in ("item 1", "item 3"), 529)
    cfg = make_cfg(server, max_retries=1)
    client = ApiClient(cfg, tmp_path)
    results = client.run_requests(reqs(4))
    assert [r.error for r in results] == [None, "llm_api_error_529", None, "llm_api_error_529"]
    assert [r.transient for r in results] == [False, True, False, True]
    assert cache_entries(tmp_path) == 2  # failures are never cached
    server._persistent.clear()  # the API is back
    n = len(server.message_requests)
    again = ApiClient(cfg, tmp_path).run_requests(reqs(4))
    assert [r.error for r in again] == [None] * 4
    assert sorted(user_text(r.body) for r in server.message_requests[n:]) == ["item 1", "item 3"]


def test_a_4xx_is_a_final_verdict_not_transient(server, tmp_path):
    server.fail_next(400)
    [result] = ApiClient(make_cfg(server, concurrency=1), tmp_path).run_requests(reqs(1))
    assert result.error == "llm_api_error_400" and result.transient is False


def test_connection_errors_are_transient(tmp_path):
    with FakeMessagesServer() as dead:
        url = dead.url
    cfg = ApiConfig(model="claude-test", base_url=url, api_key_env=KEY_ENV, max_retries=0, timeout_s=5)
    [result] = ApiClient(cfg, tmp_path).run_requests(reqs(1))
    assert result.error == "llm_api_connection_error" and result.transient is True


@pytest.mark.parametrize("kind,reason", [("truncated", "llm_api_connection_error"),
                                         ("garbage", "llm_api_bad_response"),
                                         ("not_a_message", "llm_api_bad_response")])
def test_bodies_cut_short_or_unparseable_are_retried_like_a_5xx(server, tmp_path, kind, reason):
    server.bad_body_next(2, kind)
    client = ApiClient(make_cfg(server, concurrency=1), tmp_path)
    [result] = client.run_requests(reqs(1))
    assert result.error is None and result.response["content"][0]["name"] == "report_feedback"
    assert len(server.message_requests) == 3 and client.usage.retries == 2
    # out of retries: a transient failure, nothing cached, and a rerun asks again
    server.bad_body_next(1, kind)
    [failed] = ApiClient(make_cfg(server, max_retries=0), tmp_path).run_requests(reqs(1, prefix="other"))
    assert failed.error == reason and failed.transient is True
    assert cache_entries(tmp_path) == 1
    [ok] = ApiClient(make_cfg(server), tmp_path).run_requests(reqs(1, prefix="other"))
    assert ok.error is None and not ok.cached


@pytest.mark.parametrize("key,value", [
    ("max_retries", -1), ("timeout_s", 0.0), ("timeout_s", float("nan")), ("concurrency", 0),
    ("retry_base_s", -0.5), ("retry_max_s", -1.0), ("max_tokens", 0), ("batch_poll_s", 0.0),
    ("temperature", -0.1), ("price_input_per_mtok", -3.0), ("model", " "), ("base_url", "localhost:8080"),
])
def test_api_config_ranges_are_checked_naming_the_key(server, tmp_path, key, value):
    from tripost.experts.api import check_api_config

    cfg = make_cfg(server, **{key: value})
    with pytest.raises(TripostError, match=rf"'edit\.api\.{key}' must"):
        check_api_config(cfg)
    with pytest.raises(TripostError, match=rf"'edit\.api\.{key}'"):
        ApiClient(cfg, tmp_path)  # checked where the values are used, too
    assert not server.requests


def test_check_api_config_accepts_the_defaults_and_edge_values(server):
    from tripost.experts.api import check_api_config

    check_api_config(ApiConfig())
    check_api_config(make_cfg(server, max_retries=0, retry_base_s=0.0, temperature=0.0, concurrency=1, max_tokens=1))


# -- batch mode: nothing lost -------------------------------------------------------------------


def once_for(texts):
    """A predicate true the first time it sees a request for each of `texts` (then never)."""
    seen = set()

    def pred(params):
        text = user_text(params)
        if text in texts and text not in seen:
            seen.add(text)
            return True
        return False

    return pred


def creates(server) -> list:
    return [r for r in server.requests if r.path == "/v1/messages/batches" and r.method == "POST"]


@pytest.mark.parametrize("kind", ["errored", "expired"])
def test_errored_and_expired_batch_results_are_resubmitted(server, tmp_path, kind):
    server.batch_fail_when(once_for({"item 1", "item 4"}), kind, "overloaded_error")
    client = ApiClient(make_cfg(server, batch=True), tmp_path)
    results = client.run_requests(reqs(6))
    assert [r.error for r in results] == [None] * 6
    made = creates(server)
    assert [len(c.body["requests"]) for c in made] == [6, 2]  # a new batch of just the failed ones
    assert sorted(user_text(q["params"]) for q in made[1].body["requests"]) == ["item 1", "item 4"]
    assert client.usage.retries == 2 and client.usage.errors == {} and client.usage.sent == 6
    assert cache_entries(tmp_path) == 6


def test_batch_resubmission_is_bounded_and_left_transient_for_a_rerun(server, tmp_path):
    server.batch_fail_when(lambda params: user_text(params) == "item 2", "errored", "api_error")
    cfg = make_cfg(server, batch=True, max_retries=2)
    client = ApiClient(cfg, tmp_path)
    results = client.run_requests(reqs(3))
    assert [r.error for r in results] == [None, None, "llm_batch_errored"]
    assert results[2].transient is True and "api_error" in results[2].detail
    assert [len(c.body["requests"]) for c in creates(server)] == [3, 1, 1]  # 1 + max_retries
    assert client.usage.errors == {"llm_batch_errored": 1}
    server._batch_faults.clear()
    again = ApiClient(cfg, tmp_path).run_requests(reqs(3))
    assert [r.error for r in again] == [None] * 3 and [r.cached for r in again] == [True, True, False]


def test_a_batch_result_errored_as_invalid_request_is_final(server, tmp_path):
    server.batch_fail_when(lambda params: user_text(params) == "item 0", "errored", "invalid_request_error")
    results = ApiClient(make_cfg(server, batch=True), tmp_path).run_requests(reqs(2))
    assert results[0].error == "llm_batch_errored" and results[0].transient is False
    assert len(creates(server)) == 1


def test_a_batch_results_download_cut_short_is_fetched_again(server, tmp_path):
    server.batch_results_truncated_next(1)
    client = ApiClient(make_cfg(server, batch=True), tmp_path)
    results = client.run_requests(reqs(5))
    assert [r.error for r in results] == [None] * 5
    downloads = [r for r in server.requests if r.path.endswith("/results")]
    assert len(downloads) == 2 and len(creates(server)) == 1 and client.usage.sent == 5


HELD_CREATE_CLIENT = """
import sys
from tripost.experts.api import ApiClient, ApiRequest
from tripost.config import ApiConfig
cfg = ApiConfig(model="claude-test", base_url=sys.argv[1], api_key_env="{env}", batch=True, batch_poll_s=0.05)
reqs = [ApiRequest(system="shared few-shot prefix", user=f"item {{i}}") for i in range(4)]
ApiClient(cfg, sys.argv[2]).run_requests(reqs)
"""


def batch_reqs(n: int) -> list[ApiRequest]:
    return [ApiRequest(system="shared few-shot prefix", user=f"item {i}") for i in range(n)]


def test_a_kill_between_creating_a_batch_and_saving_its_id_does_not_pay_twice(tmp_path):
    # The server creates the batch but holds its reply; the client is SIGKILLed meanwhile, so
    # only the intent record is on disk. The rerun finds the batch in the server's list.
    with FakeMessagesServer() as server:
        server.hold_batch_create()
        env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
        proc = subprocess.Popen([sys.executable, "-c", HELD_CREATE_CLIENT.format(env=KEY_ENV), server.url,
                                 str(tmp_path)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        deadline = time.time() + 60
        while not server.batches and time.time() < deadline and proc.poll() is None:
            time.sleep(0.05)
        assert server.batches, proc.stderr.read().decode()[-2000:]
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        server.release()
        [entry] = json.loads((tmp_path / "api_batches.json").read_text())["batches"]
        assert entry["id"] is None and entry["n"] == 4 and entry["intent"] and len(entry["custom_ids"]) == 4
        cfg = ApiConfig(model="claude-test", base_url=server.url, api_key_env=KEY_ENV, batch=True, batch_poll_s=0.05)
        results = ApiClient(cfg, tmp_path).run_requests(batch_reqs(4))
        assert [r.error for r in results] == [None] * 4
        assert len(creates(server)) == 1 and len(server.answered) == 4
        [entry] = json.loads((tmp_path / "api_batches.json").read_text())["batches"]
        assert entry["id"] == next(iter(server.batches)) and entry["recovered"] and entry["done"]


def write_intent(tmp_path: Path, server, n: int) -> None:
    """The state a run leaves when it is killed after saving the intent, before the create call."""
    cfg = ApiConfig(model="claude-test", base_url=server.url, api_key_env=KEY_ENV)
    keys = [cache_key(request_params(cfg, r)) for r in batch_reqs(n)]
    state = {"batches": [{"id": None, "intent": "feedfacefeedface", "n": n, "created_after": time.time(),
                          "custom_ids": {k: k for k in keys}, "done": False}]}
    (tmp_path / "api_batches.json").write_text(json.dumps(state))


def test_an_intent_whose_batch_was_never_created_is_submitted_once(server, tmp_path, capsys):
    write_intent(tmp_path, server, 3)
    # someone else's batch of the same size, made at the same time on the same key: looked at
    # (its results do not match this intent's custom_ids), not adopted
    ApiClient(make_cfg(server, batch=True), tmp_path / "other").run_requests(reqs(3))
    results = ApiClient(make_cfg(server, batch=True), tmp_path).run_requests(batch_reqs(3))
    assert [r.error for r in results] == [None] * 3
    assert [len(c.body["requests"]) for c in creates(server)] == [3, 3]
    assert len(server.answered) == 6
    first = json.loads((tmp_path / "api_batches.json").read_text())["batches"][0]
    assert first["done"] and not first["recovered"]


def test_a_server_that_cannot_list_batches_resubmits_with_a_warning(server, tmp_path, capsys):
    server.list_supported = False
    write_intent(tmp_path, server, 2)
    results = ApiClient(make_cfg(server, batch=True), tmp_path).run_requests(batch_reqs(2))
    assert [r.error for r in results] == [None] * 2 and len(creates(server)) == 1
    assert "cannot list batches" in capsys.readouterr().err


# -- usage adds up across resumed runs -----------------------------------------------------------


def test_usage_adds_up_across_runs_in_a_ledger(server, tmp_path):
    cfg = make_cfg(server)
    first = ApiClient(cfg, tmp_path)
    first.run_requests(reqs(3))  # never closed: a killed run
    second = ApiClient(cfg, tmp_path)
    server.fail_next(529, n=1)
    second.run_requests(reqs(5))
    second.close()
    usage = json.loads((tmp_path / "api_usage.json").read_text())
    assert usage["sent"] == 2 and usage["cache_hits"] == 3 and usage["retries"] == 1
    total = usage["cumulative"]
    assert total["invocations"] == 2 and total["sent"] == 5 == len(server.answered)
    assert total["retries"] == 1 and total["cost_usd"] == pytest.approx(first.usage.cost_usd + second.usage.cost_usd)
    lines = [json.loads(line) for line in (tmp_path / "api_usage_ledger.log").read_text().splitlines()]
    assert {line["invocation"] for line in lines} == {first.invocation, second.invocation}


KILLED_CLIENT = """
import sys
from tripost.experts.api import ApiClient, ApiRequest
from tripost.config import ApiConfig
cfg = ApiConfig(model="claude-test", base_url=sys.argv[1], api_key_env="{env}", concurrency=2)
ApiClient(cfg, sys.argv[2]).run_requests([ApiRequest(system="p", user=f"item {{i}}") for i in range(8)])
"""


def test_a_killed_run_still_counts_in_the_cumulative_usage(tmp_path):
    with FakeMessagesServer() as server:
        server.hold_after(3)
        env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]), **{KEY_ENV: SECRET})
        proc = subprocess.Popen([sys.executable, "-c", KILLED_CLIENT.format(env=KEY_ENV), server.url, str(tmp_path)],
                                env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.time() + 60
        while (cache_entries(tmp_path) < 3 or len(server.message_requests) < 5) and time.time() < deadline:
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        server.release()
        cfg = ApiConfig(model="claude-test", base_url=server.url, api_key_env=KEY_ENV, concurrency=2)
        client = ApiClient(cfg, tmp_path)
        client.run_requests([ApiRequest(system="p", user=f"item {i}") for i in range(8)])
        client.close()
        usage = json.loads((tmp_path / "api_usage.json").read_text())
        assert usage["sent"] == 5 and usage["cumulative"]["sent"] == 8 == len(server.answered)
        assert usage["cumulative"]["invocations"] == 2


def test_the_key_never_reaches_state_ledger_usage_or_errors(server, tmp_path, capsys):
    server.batch_fail_when(once_for({"item 0"}), "errored", "overloaded_error")
    client = ApiClient(make_cfg(server, batch=True), tmp_path)
    client.run_requests(reqs(3))
    server.fail_next(529, n=10)
    batchless = ApiClient(make_cfg(server, max_retries=1, concurrency=1), tmp_path)
    failed = batchless.run_requests(reqs(1, prefix="down"))
    client.close()
    batchless.close()
    for name in ("api_batches.json", "api_usage_ledger.log", "api_usage.json"):
        assert (tmp_path / name).is_file(), name
    assert SECRET not in all_files_text(tmp_path)
    assert SECRET not in (failed[0].detail or "") and SECRET not in capsys.readouterr().err
