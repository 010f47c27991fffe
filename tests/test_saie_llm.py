"""SAIE with an LLM partner, against the local Messages-API server (tests/fake_messages_server.py):
LlmExpert.remark_many (tool write_remark, the stance templates, the test-time template that never
sees the gold answer, malformed replies counted), the worked examples of the built-in remark
templates, and a tiny run of configs/examples/saie_date_understanding_llm.yaml.

Run:  PYTHONPATH=$PWD python -m pytest -q tests/test_saie_llm.py
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import BIGBENCH_DIR
from fake_messages_server import FakeMessagesServer, gold_rule, tool_name, user_text
from tripost.config import PROJECT_ROOT, load_config
from tripost.experts import Reply
from tripost.experts.llm import LlmExpert, remark_from_tool
from tripost.experts.templates import PromptTemplates
from tripost.records import read_trajectories



def test_remarks_by_stance(llm_setup):
    expert, server, examples, golds = llm_setup
    ex1, ex2 = examples[:2]
    right, wrong = golds[ex1.question], golds[ex2.question].replace("So the answer is", "So the answer is 1")
    replies = expert.remark_many([(ex1, right, "adversarial"), (ex2, wrong, "supportive"),
                                  (ex1, right, "auto"), (ex2, wrong, "auto")])
    assert all(isinstance(r, Reply) and r.error is None for r in replies), replies
    assert [r.stance for r in replies] == ["", "", "adversarial", "supportive"]  # only "auto" says which
    assert replies[0].text == "Step (1) is incorrect: check it again."
    bodies = {(tool_name(r.body), "stance" in r.body["tools"][0]["input_schema"]["required"], user_text(r.body))
              for r in server.message_requests}
    assert {t for t, _, _ in bodies} == {"write_remark"}
    for _, auto, text in bodies:
        # the test-time template never sees the gold answer; the training ones do
        assert ("<correct_answer>" in text) is not auto
    assert set(expert.provenance["templates"]) >= {"remark_supportive.j2", "remark_adversarial.j2", "remark_auto.j2"}
    # cached: asking again costs nothing
    before = len(server.message_requests)
    assert [r.text for r in expert.remark_many([(ex1, right, "adversarial")])] == [replies[0].text]
    assert len(server.message_requests) == before


def test_malformed_remarks_are_counted(llm_setup):
    expert, server, examples, golds = llm_setup
    server.malformed_next(1)
    ex = examples[3]
    (reply,) = expert.remark_many([(ex, golds[ex.question], "auto")])
    assert reply.text is None and reply.error == "llm_unparsable_remark" and not reply.transient
    assert remark_from_tool({"stance": "friendly", "remark": "hi"}, auto=True) is None
    assert remark_from_tool({"remark": "  two\n lines "}, auto=False) == ("two lines", "")
    assert remark_from_tool({"remark": "x" * 5000}, auto=False) is None
    with pytest.raises(ValueError, match="unknown remark stance"):
        expert.remark_many([(ex, "a", "neutral")])


@pytest.mark.parametrize("task", ["multistep_arithmetic", "date_understanding"])
def test_builtin_remark_templates_worked_examples_parse(task):
    templates = PromptTemplates(PROJECT_ROOT / "prompts" / task, task)
    for stance in ("supportive", "adversarial", "auto"):
        item = {"question": "Q", "attempt": "(1) a.\n(Final response) So the answer is 1."}
        if stance != "auto":
            item["answer"] = "1"
        system, user = templates.render(f"remark_{stance}", **item)
        assert "<attempt>\n(1) a." in user
        calls = [json.loads(m.group(1)) for m in re.finditer(r"^write_remark: (\{.*\})$", system, re.MULTILINE)]
        assert calls, f"{task}/remark_{stance}.j2 has no worked example"
        for call in calls:
            parsed = remark_from_tool(call, auto=stance == "auto")
            assert parsed is not None, call
            if stance == "auto":
                assert parsed[1] in ("supportive", "adversarial")


@pytest.mark.skipif(not (BIGBENCH_DIR / "date_understanding.json").is_file(), reason="no BIG-bench data")
def test_tiny_run_of_the_llm_example_config(tmp_path):
    from conftest import TINY_RUN_OVERRIDES
    from tripost.tasks import get_task

    config = PROJECT_ROOT / "configs/examples/saie_date_understanding_llm.yaml"
    overrides = [o for o in TINY_RUN_OVERRIDES if not o.startswith("task.")] + [
        "model=null", f"task.data_dir={BIGBENCH_DIR}", "task.max_train=6", "task.max_test=4",
        "train.deepspeed_config=configs/deepspeed/zero0.json", "train.gradient_accumulation_steps=1",
        "train.max_length=512", "process.max_tokens=512", "train.save_every_steps=null",
        "iterate.arms={}", "saie.discussion_rounds=1", "edit.api.model=claude-test", "edit.api.max_retries=1",
        "edit.api.retry_base_s=0.01", "edit.api.concurrency=2"]
    task = get_task(load_config(config, overrides).task)
    golds = {ex.question: f"(1) The date is option {ex.answer}.\n(Final response) So the answer is {ex.answer}."
             for split in ("train", "test") for ex in task.load(split)}
    with FakeMessagesServer(rule=gold_rule(golds)) as server:
        env = dict(os.environ, ANTHROPIC_API_KEY="test-key", OMP_NUM_THREADS="1", NO_COLOR="1",
                   PYTHONPATH=os.pathsep.join([str(PROJECT_ROOT)] + [p for p in [os.environ.get("PYTHONPATH")] if p]))
        proc = subprocess.run([sys.executable, "-m", "tripost", "iterate", "--config", str(config), "--name", "t",
                               *overrides, f"edit.api.base_url={server.url}"], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
        remarks = [r for r in server.message_requests if tool_name(r.body) == "write_remark"]
    run = tmp_path / "runs" / "t"
    summary = json.loads((run / "summary.json").read_text())
    assert [(r["round"], r["arm"]) for r in summary["rows"]] == [(0, "warm-up"), (1, "saie"), (1, "baseline")]
    # test time: the LLM judged (no gold answer in its prompt) and said which stance it took
    preds = read_trajectories(run / "round_1/evaluate/predictions.jsonl")
    said = [m for t in preds for m in t.messages if m.kind == "remark"]
    assert said and all(m.author == "llm:claude-test" and m.stance in ("supportive", "adversarial") for m in said)
    metrics = json.loads((run / "round_1/evaluate/metrics.json").read_text())
    assert "partner_acc_r1" in metrics and "stance_accuracy" in metrics and "self_acc_r1" in metrics
    test_questions = {ex.question for ex in task.load("test")}
    for r in remarks:
        text = user_text(r.body)
        at_test = any(q in text for q in test_questions)
        assert ("<correct_answer>" in text) is not at_test
    # training discussions, with the remarks as weight-0 context
    examples = [json.loads(line) for line in (run / "round_1/process/learner.jsonl").read_text().splitlines()]
    assert any(s["speaker"] == "partner" for e in examples for s in e["segments"])
    assert all(s["weight"] == 0 for e in examples for s in e["segments"] if s["speaker"] in ("partner", "user"))
    assert "baseline" in proc.stdout and "stance acc" in proc.stdout
