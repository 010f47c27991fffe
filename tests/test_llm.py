"""LlmExpert and the prompt templates: structured feedback parsed strictly and rendered in the
project's grammar, improvements re-attached to the verified prefix, rationales checked, templates
sandboxed; and the worked examples in every built-in template agree with the parser."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from fake_messages_server import tool_name, user_text
from tripost import steps
from tripost.config import PROJECT_ROOT
from tripost.errors import TripostError
from tripost.experts import Expert, Reply
from tripost.experts.llm import LlmExpert, feedback_from_tool, improvement_from_tool, normalize_label
from tripost.experts.templates import PromptTemplates



def corrupt(gold: str, label: str = "2") -> str:
    """Gold with a wrong number in step `label` (and everything after it left as it was)."""
    out = []
    for s in steps.parse_steps(gold):
        out.append(steps.Step(s.label, s.text[:-1] + "7." if s.label == label else s.text))
    return steps.render_steps(out)


def test_feedback_is_rendered_in_the_shared_grammar(llm_setup):
    expert, server, examples, golds = llm_setup
    assert isinstance(expert, Expert) and expert.name == "llm:claude-test"
    ex1, ex2 = examples[:2]
    wrong = corrupt(golds[ex1.question], "2")
    replies = expert.feedback_many([(ex1, wrong), (ex2, golds[ex2.question])])
    assert all(isinstance(r, Reply) for r in replies)
    fb = steps.parse_feedback(replies[0].text)
    assert replies[0].error is None and fb.wrong_step == "2" and not fb.correct
    assert replies[0].text.startswith("Step (1) is correct. In step (2) the part ")
    assert replies[1].text == steps.feedback_correct(3)
    body = server.message_requests[0].body
    assert tool_name(body) == "report_feedback" and body["tools"][0]["input_schema"]["required"]
    assert [m["role"] for m in body["messages"]] == ["user"]
    assert body["system"][0]["cache_control"] == {"type": "ephemeral"}
    assert ex1.question in user_text(body) or ex2.question in user_text(body)
    # the shared prefix is identical for every item (so the API can cache it)
    assert len({json.dumps(r.body["system"]) for r in server.message_requests}) == 1
    prov = expert.provenance
    assert set(prov["templates"]) == {"feedback.j2", "improvement.j2"}
    assert all(h.startswith("sha256:") for h in prov["templates"].values())


def test_malformed_tool_output_is_counted_not_raised(llm_setup):
    expert, server, examples, golds = llm_setup
    server.malformed_next(1)
    ex = examples[0]
    [reply] = expert.feedback_many([(ex, golds[ex.question])])
    assert reply.text is None and reply.error == "llm_unparsable_feedback" and "tool input" in reply.detail
    assert reply.transient is False  # a verdict on what the model wrote: final (and cached)


def test_api_failures_become_reply_errors(llm_setup):
    expert, server, examples, golds = llm_setup
    server.fail_when(lambda body: True, 529)
    replies = expert.feedback_many([(ex, golds[ex.question]) for ex in examples[:2]])
    assert [r.error for r in replies] == ["llm_api_error_529"] * 2
    assert [r.transient for r in replies] == [True, True]  # the item is not done: a rerun asks again


def test_a_body_cut_short_becomes_a_transient_reply_then_succeeds_on_rerun(llm_setup):
    expert, server, examples, golds = llm_setup  # edit.api.max_retries=1: two tries
    ex = examples[0]
    server.bad_body_next(2, "garbage")
    [reply] = expert.feedback_many([(ex, golds[ex.question])])
    assert reply.error == "llm_api_bad_response" and reply.transient is True
    [again] = expert.feedback_many([(ex, golds[ex.question])])
    assert again.error is None and again.transient is False and steps.says_correct(again.text)


def test_improvement_keeps_the_verified_prefix(llm_setup):
    expert, server, examples, golds = llm_setup
    ex = examples[0]
    gold = golds[ex.question]
    wrong = corrupt(gold, "3")
    [fb] = expert.feedback_many([(ex, wrong)])
    [imp] = expert.improve_many([(ex, wrong, fb.text)])
    assert imp.error is None and imp.text == gold
    body = server.message_requests[-1].body
    assert tool_name(body) == "write_continuation"
    assert "<first_wrong_step>3</first_wrong_step>" in user_text(body)
    # feedback that says "correct" gives nothing to improve
    [bad] = expert.improve_many([(ex, gold, steps.feedback_correct(3))])
    assert bad.error == "llm_unparsable_improvement"


def test_rationales_must_be_well_formed_and_right(llm_setup, tmp_path):
    expert, server, examples, golds = llm_setup
    prompts = tmp_path / "prompts"
    prompts.mkdir()
    (prompts / "rationale.j2").write_text("{% block system %}Solve.{% endblock %}"
                                          "{% block user %}<question>{{ question }}</question>{% endblock %}")
    expert.templates = PromptTemplates(prompts, "toy")
    replies = expert.rationale_many(examples[:2])
    assert [r.text for r in replies] == [golds[ex.question] for ex in examples[:2]]
    wrong_answer = examples[0].__class__(**{**examples[0].__dict__, "answer": "12345"})
    [r] = expert.rationale_many([wrong_answer])
    assert r.error == "llm_wrong_rationale"


# ----------------------------------------------------------------------------------------------
# The pure checks


ATTEMPT = "(1) a = 1.\n(2) b = 2.\n(3) c = 4.\n(Final response) So the answer is 4."


def test_feedback_from_tool_is_strict():
    ok = {"all_correct": False, "first_wrong_step": "(3)", "wrong_part": 'c = "4"', "reason": "1 + 2 is 3."}
    assert feedback_from_tool(ok, ATTEMPT) == \
        "Step (1) to (2) are correct. In step (3) the part \"c = '4'\" is incorrect. This is because 1 + 2 is 3."
    assert feedback_from_tool({**ok, "first_wrong_step": "final response"}, ATTEMPT).startswith(
        "Step (1) to (3) are correct. In step (Final response)")
    assert feedback_from_tool({"all_correct": True}, ATTEMPT) == steps.feedback_correct(3)
    for bad in [None, {}, {"all_correct": "no"}, {**ok, "first_wrong_step": "7"},
                {**ok, "reason": ""}, {**ok, "wrong_part": None}, {**ok, "first_wrong_step": "step two"}]:
        assert feedback_from_tool(bad, ATTEMPT) is None, bad
    assert normalize_label("Step 3") == "3" and normalize_label("(Final Response)") == "Final response"


def test_improvement_from_tool_reattaches_the_prefix():
    cont = {"continuation": "(3) c = 3.\n(Final response) So the answer is 3."}
    want = "(1) a = 1.\n(2) b = 2.\n(3) c = 3.\n(Final response) So the answer is 3."
    assert improvement_from_tool(cont, ATTEMPT, "3") == want
    # the model repeats the verified steps verbatim: accepted, not duplicated
    assert improvement_from_tool({"continuation": want}, ATTEMPT, "3") == want
    # wrong final response: a bare final line, or one more step then the final line
    assert improvement_from_tool({"continuation": "(Final response) So the answer is 3."}, ATTEMPT,
                                 "Final response").endswith("(3) c = 4.\n(Final response) So the answer is 3.")
    for bad in [{"continuation": "(4) c = 3.\n(Final response) So the answer is 3."},  # skips step 3
                {"continuation": "(3) c = 3."},  # no final line
                {"continuation": "Sure! (3) c = 3.\n(Final response) 3"},  # preamble
                {"continuation": 3}, None]:
        assert improvement_from_tool(bad, ATTEMPT, "3") is None, bad


# ----------------------------------------------------------------------------------------------
# Templates


def test_template_errors_name_the_path(tmp_path):
    t = PromptTemplates(tmp_path, "toy")
    with pytest.raises(TripostError, match=re.escape(str(tmp_path / "feedback.j2"))):
        t.render("feedback", question="q")
    (tmp_path / "feedback.j2").write_text("{% block system %}x{% endblock %}{% block user %}{{ questoin }}{% endblock %}")
    with pytest.raises(TripostError, match="questoin"):
        t.render("feedback", question="q")
    (tmp_path / "improvement.j2").write_text("{% block system %}x{% endblock %}\n{% block user %}{{ q.__class__ }}"
                                             "{{ q.__class__.__mro__[1].__subclasses__() }}{% endblock %}")
    with pytest.raises(TripostError, match="improvement.j2"):
        t.render("improvement", q="text")
    (tmp_path / "rationale.j2").write_text("{% block system %}x{% endblock %}\n{% block user %}{{ oops {% endblock %}")
    with pytest.raises(TripostError, match=r"rationale\.j2:2"):
        t.render("rationale", question="q")


def test_system_block_cannot_use_item_variables(tmp_path):
    (tmp_path / "feedback.j2").write_text("{% block system %}{{ question }}{% endblock %}{% block user %}u{% endblock %}")
    with pytest.raises(TripostError, match="block 'system'"):
        PromptTemplates(tmp_path, "toy").render("feedback", question="q")


TASKS = ["multistep_arithmetic", "word_sorting", "date_understanding", "logical_deduction", "jsonl"]


def _example_calls(system: str, tool: str) -> list[tuple[str, dict]]:
    """(text before the call, tool input) for each worked example in a system block."""
    out, start = [], 0
    for m in re.finditer(rf"^{tool}: (\{{.*\}})$", system, re.MULTILINE):
        out.append((system[start:m.start()], json.loads(m.group(1))))
        start = m.end()
    return out


def _tag(text: str, name: str) -> str:
    return re.findall(rf"<{name}>\n?(.*?)\n?</{name}>", text, re.DOTALL)[-1].strip()


@pytest.mark.parametrize("task", TASKS)
def test_builtin_templates_worked_examples_agree_with_the_parser(task):
    templates = PromptTemplates(PROJECT_ROOT / "prompts" / task, task)
    item = {"question": "Q", "answer": "A", "attempt": ATTEMPT, "feedback": "F", "first_wrong_step": "3",
            "prefix": "(1) a = 1.\n(2) b = 2."}
    fb_system, fb_user = templates.render("feedback", **item)
    assert "<attempt>\n" + ATTEMPT + "\n</attempt>" in fb_user
    calls = _example_calls(fb_system, "report_feedback")
    assert len(calls) >= 2 and any(c["all_correct"] for _, c in calls) and not all(c["all_correct"] for _, c in calls)
    for before, call in calls:
        assert feedback_from_tool(call, _tag(before, "attempt")) is not None, call
    imp_system, imp_user = templates.render("improvement", **item)
    assert "<first_wrong_step>3</first_wrong_step>" in imp_user
    for before, call in _example_calls(imp_system, "write_continuation"):
        attempt, feedback = _tag(before, "attempt"), _tag(before, "feedback")
        label = steps.parse_feedback(feedback).wrong_step
        assert label == _tag(before, "first_wrong_step")
        # the feedback shown is exactly what the report_feedback path would render
        assert feedback.startswith(steps.feedback_wrong(
            sum(s.label.isdigit() for s in steps.parse_steps(attempt)[:[s.label for s in steps.parse_steps(attempt)].index(label)]),
            label, "", "")[:10])
        improved = improvement_from_tool(call, attempt, label)
        assert improved is not None, call
        assert steps.extract_final_answer(improved) == _tag(before, "correct_answer")
    if templates.path("rationale").is_file():
        r_system, _ = templates.render("rationale", **item)
        for before, call in _example_calls(r_system, "write_rationale"):
            assert steps.extract_final_answer(call["rationale"]) == _tag(before, "correct_answer")
