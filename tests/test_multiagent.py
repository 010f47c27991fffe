"""Multi-agent finetuning (tripost/methods/multiagent.py) on hand-written agent replies: the
consensus (ties, unparseable answers, the task's own equivalence), the debate episode (who is asked
what, and that a critic never sees an answer of the round it is answering in), generator and
critic datasets (D+/D- sampling with a seed, fewer D+ than asked for), critic loss weights, the
metrics, the config checks, and inspect.

The end-to-end run (iterate, SIGKILL inside the debate and inside a per-agent train stage) is in
tests/test_multiagent_run.py.
"""

from __future__ import annotations

import dataclasses
from types import SimpleNamespace

import pytest

from tripost import steps
from tripost.config import MultiagentConfig, load_config, with_changes
from tripost.errors import TripostError
from tripost.experts import Reply
from tripost.formats import PromptFormat
from tripost.methods import get_method
from tripost.methods import multiagent as ma
from tripost.records import Message, Trajectory
from tripost.tasks import get_task

FMT = PromptFormat(False)


@pytest.fixture(scope="module")
def task():
    return get_task(load_config(None, ["task.max_train=12", "task.max_test=4"]).task)


@pytest.fixture(scope="module")
def questions(task):
    return task.load("train")


def answer(value, tag: str = "") -> str:
    """A hand-written agent reply: one step (tagged, so a test can find whose text it is) and the
    final line."""
    return f"(1) My work {tag}.\n{steps.final_line(str(value))}"


def drive(episode, rounds: list[list[str]]):
    """Send one list of reply texts per request batch; return (the requests of each batch, the
    Trajectory)."""
    asked = [episode.send(None)]
    for texts in rounds:
        assert len(texts) == len(asked[-1]), [r.to for r in asked[-1]]
        try:
            asked.append(episode.send([Reply(text=t, author=f"model:{r.to}") for t, r in zip(texts, asked[-1])]))
        except StopIteration as stop:
            return asked, stop.value
    raise AssertionError("the episode asked for more replies than given")


def debate(task, ex, mc, rounds, stage="collect"):
    return drive(ma.rollout(ex, task, mc, stage, FMT), rounds)


# ----------------------------------------------------------------------------------------------
# The consensus


def test_plurality_counts_votes_and_ignores_unparseable():
    assert ma.plurality(["3", "4", "3", None], str.__eq__) == ("3", "consensus")
    assert ma.plurality([None, "7", None], str.__eq__) == ("7", "consensus")  # one parseable answer
    assert ma.plurality([None, None, None], str.__eq__) == (None, "no_parseable_answer")
    assert ma.plurality([], str.__eq__) == (None, "no_parseable_answer")


def test_plurality_ties_no_label_or_largest_string():
    assert ma.plurality(["3", "12", None], str.__eq__) == (None, "tie")
    assert ma.plurality(["3", "12", "3", "12"], str.__eq__, "no_label") == (None, "tie")
    # The official code's rule: the lexicographically largest answer string ("3" > "12").
    assert ma.plurality(["3", "12", None], str.__eq__, "largest_string") == ("3", "tie_broken")
    # A clear winner is not a tie, whatever the rule.
    assert ma.plurality(["12", "3", "3"], str.__eq__, "largest_string") == ("3", "consensus")


def test_plurality_groups_by_the_tasks_equivalence(task, questions):
    same = ma.same_answer(task, questions[0])
    # multistep_arithmetic reads "-12", "- 12" and "-12.0"-free variants as one number.
    assert same("-12", "- 12") and not same("-12", "12")
    winner, why = ma.plurality(["- 12", "5", "-12"], same)
    assert (winner, why) == ("- 12", "consensus")  # the group is named by its first answer


def test_same_answer_never_evaluates_model_text(task, questions):
    same = ma.same_answer(task, questions[0])
    # An expression is not its value: "2 + 2" is not the answer "4" (no eval / sympify).
    assert not same("4", "2 + 2")
    assert not same("__import__('os')", "4")


# ----------------------------------------------------------------------------------------------
# The debate episode


def test_requests_go_to_each_agent_with_own_seeds(task, questions):
    mc = MultiagentConfig()
    asked, traj = debate(task, questions[0], mc, [[answer(1, "g0"), answer(1, "g1"), answer(2, "g2")],
                                                  [answer(1, "c0"), answer(1, "c1"), answer(1, "c2")]])
    assert [r.to for r in asked[0]] == ["gen0", "gen1", "gen2"]
    assert [r.to for r in asked[1]] == ["critic0", "critic1", "critic2"]
    seeds = [r.seed for batch in asked for r in batch]
    assert len(set(seeds)) == len(seeds)  # every request samples from its own stream
    assert all(r.prompt == FMT.question(questions[0].question) for r in asked[0])
    assert ma.models(mc) == ["gen0", "gen1", "gen2", "critic0", "critic1", "critic2"]
    # The same question asks the same (resumable) seeds again.
    again, _ = debate(task, questions[0], mc, [[answer(1)] * 3, [answer(1)] * 3])
    assert [r.seed for r in again[0]] == [r.seed for r in asked[0]]
    assert traj.calls == 6 and traj.stop == "consensus"


def test_critic_prompt_has_own_answer_and_only_previous_round_answers(task, questions):
    """Three debate rounds: at round r critic i sees its own earlier answers and the other agents'
    round r - 1 answers, never any answer of round r (all round-r requests are asked before any
    round-r reply exists, and the prompts hold none)."""
    mc = MultiagentConfig(debate_rounds=3)
    texts = [[answer(i, f"r{r}a{i}") for i in range(3)] for r in range(3)]
    asked, traj = debate(task, questions[0], mc, texts)
    assert [len(a) for a in asked] == [3, 3, 3]
    for r in (1, 2):
        for i, req in enumerate(asked[r]):
            assert req.to == f"critic{i}"
            for rr in range(3):
                for j in range(3):
                    tag = f"r{rr}a{j}"
                    if j == i:
                        assert (tag in req.prompt) == (rr < r), (r, i, tag)  # its own earlier answers
                    elif rr == r - 1:
                        assert tag in req.prompt, (r, i, tag)  # the others' previous-round answers
                    elif rr >= r:
                        assert tag not in req.prompt, (r, i, tag)  # never the current round's
            assert req.prompt.startswith(FMT.question(questions[0].question) + texts[0][i])
            assert req.prompt.endswith(ma.UPDATE_PREFIX)
            assert req.prompt.count(ma.UPDATE_PREFIX) == r
    assert [m.speaker for m in traj.messages if m.round == 2] == ["critic0", "critic1", "critic2"]


def test_at_most_max_others_shuffled_and_never_itself(task, questions):
    mc = MultiagentConfig(agents=7, max_others=5)
    texts = [[answer(i, f"a{i}") for i in range(7)], [answer(0)] * 7]
    asked, _ = debate(task, questions[0], mc, texts)
    orders = []
    for i, req in enumerate(asked[1]):
        others = req.prompt.split(ma.OTHERS_HEADER, 1)[1]
        shown = [j for j in range(7) if f"a{j}." in others]
        assert len(shown) == 5 and i not in shown
        assert others.count(ma.OTHER_PREFIX) == 5
        orders.append(ma.others_shown(questions[0].id, i, 1, 7, 5))
        positions = [others.index(f"a{j}.") for j in orders[-1]]
        assert positions == sorted(positions)  # shown in others_shown's order
    assert len({tuple(sorted(o)) for o in orders}) > 1 or len({tuple(o) for o in orders}) > 1
    assert any(o != sorted(o) for o in orders)  # shuffled, not in agent order


def test_tie_is_dropped_at_collect_and_wrong_at_test_time(task, questions):
    ex = questions[0]
    replies = [[answer(1), answer(2), "no idea"], [answer(1), answer(2), "still no idea"]]
    _, traj = debate(task, ex, MultiagentConfig(), replies)
    assert (traj.status, traj.drop_reason, traj.stop, traj.final_answer, traj.correct) == \
        ("dropped", "tie", "tie", "", False)
    _, traj = debate(task, ex, MultiagentConfig(), replies, stage="evaluate")
    assert (traj.status, traj.stop, traj.final_answer, traj.correct) == ("kept", "tie", "", False)
    # The reproduction rule breaks it: the largest string ("2") wins.
    _, traj = debate(task, ex, MultiagentConfig(tie_break="largest_string"), replies)
    assert (traj.status, traj.stop, traj.final_answer) == ("kept", "tie_broken", "2")


def test_no_parseable_answer_is_dropped_and_counted(task, questions):
    _, traj = debate(task, questions[0], MultiagentConfig(), [["blah"] * 3, ["(1) x"] * 3])
    assert (traj.status, traj.drop_reason) == ("dropped", "no_parseable_answer")
    assert all(m.answer == "" and m.correct is False for m in traj.messages)


def test_consensus_and_its_correctness(task, questions):
    ex = questions[0]
    gold, other = ex.answer, str(int(ex.answer) + 1)
    _, traj = debate(task, ex, MultiagentConfig(),
                     [[answer(other), answer(gold), answer(other)], [answer(gold), answer(gold), answer(other)]])
    assert (traj.status, traj.final_answer, traj.correct, traj.stop) == ("kept", gold, True, "consensus")
    r0 = [m for m in traj.messages if m.round == 0]
    assert [m.correct for m in r0] == [False, True, False] and [m.kind for m in r0] == ["answer"] * 3


def test_run_on_text_is_clipped(task, questions):
    ex = questions[0]
    run_on = answer(ex.answer) + "\nQ: (1 + 1) =\nA: (1) ... So the answer is 2."
    _, traj = debate(task, ex, MultiagentConfig(), [[run_on] * 3, [answer(ex.answer) + ma.OTHERS_HEADER + " x"] * 3])
    assert all("Q:" not in m.text and "Other agents" not in m.text for m in traj.messages)
    assert traj.final_answer == ex.answer


def test_summarize_asks_for_a_summary_first(task, questions):
    mc = MultiagentConfig(summarize=True)
    asked, traj = debate(task, questions[0], mc, [[answer(i, f"a{i}") for i in range(3)],
                                                  ["They say 0, 1 and 2."] * 3, [answer(1)] * 3])
    assert [r.to for r in asked[1]] == ["critic0", "critic1", "critic2"]
    assert asked[1][0].prompt.endswith(ma.SUMMARY_PROMPT) and "a1." in asked[1][0].prompt
    update = asked[2][0].prompt
    assert ma.SUMMARY_HEADER + "They say 0, 1 and 2." in update and ma.OTHERS_HEADER not in update
    assert "a1." not in update  # the summary stands in for the other answers
    assert [m.kind for m in traj.messages].count("summary") == 3


def test_single_agent_voting_variant(task, questions):
    ex = questions[0]
    mc = MultiagentConfig(agents=1, samples=5, debate_rounds=1)
    assert ma.models(mc) == ["gen0"]
    asked, traj = debate(task, ex, mc, [[answer(3), answer(ex.answer), answer(3), "x", answer(ex.answer)]])
    assert [r.to for r in asked[0]] == ["gen0"] * 5 and len({r.seed for r in asked[0]}) == 5
    assert traj.stop == "tie" and traj.status == "dropped"
    _, traj = debate(task, ex, mc, [[answer(3), answer(ex.answer), answer(3), "x", answer(1)]])
    assert traj.final_answer == "3" and traj.status == "kept"
    data = ma.examples([traj], [], mc, FMT)
    assert [e.kind for e in data] == ["generator", "generator"] and {e.model for e in data} == {"gen0"}


# ----------------------------------------------------------------------------------------------
# Training data


def _debate_traj(task, ex, r0, r1, mc=None, stage="collect"):
    mc = mc or MultiagentConfig()
    _, traj = debate(task, ex, mc, [[answer(v, f"g{i}") for i, v in enumerate(r0)],
                                    [answer(v, f"c{i}") for i, v in enumerate(r1)]], stage=stage)
    return traj


def test_generator_and_critic_examples(task, questions):
    ex = questions[0]
    # Round 0: 5, 9, 9 (agent 0 disagrees); round 1: everyone says 9, except critic 2 who moved off it.
    traj = _debate_traj(task, ex, ["5", "9", "9"], ["9", "9", "4"])
    assert traj.final_answer == "9"
    data = {(e.model, e.kind): e for e in ma.examples([traj], [], MultiagentConfig(), FMT)}
    assert set(data) == {("gen1", "generator"), ("gen2", "generator"), ("critic0", "dminus"), ("critic1", "dplus")}
    gen = data[("gen1", "generator")]
    assert [(s.speaker, s.weight) for s in gen.segments] == [("user", 0.0), ("gen1", 1.0)]
    assert gen.text == FMT.question(ex.question) + answer("9", "g1")
    assert ma.drop_reasons([traj], MultiagentConfig()) == {
        "gen0": {"not_matching_consensus": 1}, "gen1": {}, "gen2": {},
        "critic0": {}, "critic1": {}, "critic2": {"not_matching_consensus": 1}}


def test_critic_weights(task, questions):
    ex = questions[0]
    traj = _debate_traj(task, ex, ["5", "9", "9"], ["9", "9", "9"])
    data = {(e.model, e.kind): e for e in ma.examples([traj], [], MultiagentConfig(), FMT)}
    d_minus, d_plus = data[("critic0", "dminus")], data[("critic1", "dplus")]
    for e, own in ((d_minus, 0), (d_plus, 1)):
        by_speaker: dict = {}
        for s in e.segments:
            by_speaker.setdefault(s.speaker, set()).add(s.weight)
        others = {f"gen{j}" for j in range(3) if j != own}
        shown = {s.speaker for s in e.segments} & others
        assert shown and all(by_speaker[o] == {0.0} for o in shown)  # the other agents' text: 0
        assert by_speaker["user"] == {0.0} and by_speaker[f"critic{own}"] == {1.0}  # the revision: 1
    # The critic's own round-0 answer: 0 when wrong (it revised it), 1 when it already agreed.
    assert by_weight(d_minus, "gen0") == [0.0] and by_weight(d_plus, "gen1") == [1.0]
    # The text is the prompt the critic answered, then its answer: train and test see the same.
    critic0_prompt = "".join(s.text for s in ma.transcript(FMT, ex.question, ma.agent_answers(traj, 0)[:1],
                                                           ma.agent_seen(traj, 0, 5)))
    assert d_minus.text == critic0_prompt + answer("9", "c0")
    assert d_minus.segments[-1].text == answer("9", "c0")
    # Configurable weights.
    mc = MultiagentConfig(w_revised=2.0, w_wrong=0.5, w_others=0.25, w_first=0.75)
    data = {(e.model, e.kind): e for e in ma.examples([traj], [], mc, FMT)}
    assert by_weight(data[("critic0", "dminus")], "gen0") == [0.5]
    assert by_weight(data[("critic1", "dplus")], "gen1") == [0.75]
    assert by_weight(data[("critic0", "dminus")], "critic0") == [2.0]
    assert set(by_weight(data[("critic0", "dminus")], "gen1") + by_weight(data[("critic0", "dminus")], "gen2")) == {0.25}


def by_weight(example, speaker):
    return [s.weight for s in example.segments if s.speaker == speaker]


def test_intermediate_wrong_revision_gets_no_weight(task, questions):
    ex = questions[0]
    mc = MultiagentConfig(debate_rounds=3)
    _, traj = debate(task, ex, mc, [[answer(v) for v in ("5", "9", "9")], [answer(v, f"c{i}") for i, v in
                                                                           enumerate(("7", "9", "9"))],
                                    [answer(v, f"d{i}") for i, v in enumerate(("9", "9", "9"))]])
    e = next(e for e in ma.examples([traj], [], mc, FMT) if e.model == "critic0")
    assert e.kind == "dminus"
    assert [s.weight for s in e.segments if s.speaker == "critic0"] == [0.0, 1.0]  # "7" was wrong, "9" right


def test_gold_filter_keeps_gold_matching_answers_and_tie_questions(task, questions):
    ex = questions[0]
    gold, x, y = ex.answer, str(int(ex.answer) + 1), str(int(ex.answer) + 2)
    mc = MultiagentConfig(gold_filter=True)
    traj = _debate_traj(task, ex, [gold, x, y], [gold, x, y], mc=mc)
    assert traj.status == "kept" and traj.stop == "tie"  # no consensus, but the labels decide
    data = {(e.model, e.kind) for e in ma.examples([traj], [], mc, FMT)}
    assert data == {("gen0", "generator"), ("critic0", "dplus")}
    assert ma.drop_reasons([traj], mc)["gen1"] == {"not_matching_gold": 1}


def _critic_examples(task, questions, n_dminus, n_dplus):
    mc = MultiagentConfig()
    trajs = []
    for k in range(n_dminus + n_dplus):
        ex = questions[k]
        first = "5" if k < n_dminus else "9"
        trajs.append(_debate_traj(task, ex, [first, "9", "9"], ["9", "9", "9"]))
    return [e for e in ma.examples(trajs, [], mc, FMT) if e.model == "critic0"]


def test_dplus_sampled_with_seed(task, questions):
    pool = _critic_examples(task, questions, 4, 8)
    assert sorted(e.kind for e in pool) == ["dminus"] * 4 + ["dplus"] * 8
    kept, report = ma.select("critic0", pool, MultiagentConfig(dplus_ratio=0.5), seed=3)
    assert sorted(e.kind for e in kept) == ["dminus"] * 4 + ["dplus"] * 2
    assert report["dplus_target"] == 2 and report["dplus_kept"] == 2 and report["dplus_available"] == 8
    again, _ = ma.select("critic0", pool, MultiagentConfig(dplus_ratio=0.5), seed=3)
    assert [e.id for e in again] == [e.id for e in kept]  # seeded
    picks = {tuple(e.id for e in ma.select("critic0", pool, MultiagentConfig(), seed=s)[0]) for s in range(8)}
    assert len(picks) > 1  # and the seed matters
    # Kept in their original order.
    assert [e.id for e in kept] == [e.id for e in pool if e in kept]
    everything, _ = ma.select("critic0", pool, MultiagentConfig(dplus_ratio=None), seed=0)
    assert len(everything) == 12


def test_fewer_dplus_than_asked_for(task, questions):
    pool = _critic_examples(task, questions, 6, 1)
    kept, report = ma.select("critic0", pool, MultiagentConfig(dplus_ratio=0.5), seed=0)  # wants 3, has 1
    assert sorted(e.kind for e in kept) == ["dminus"] * 6 + ["dplus"]
    assert report["dplus_target"] == 3 and report["dplus_kept"] == 1 and "only 1 D+" in report["action"]
    kept, _ = ma.select("critic0", _critic_examples(task, questions, 0, 3), MultiagentConfig(), seed=0)
    assert kept == []  # no D-: no D+ either (0.5 x 0)


def test_generators_keep_everything(task, questions):
    traj = _debate_traj(task, questions[0], ["9", "9", "9"], ["9", "9", "9"])
    gens = [e for e in ma.examples([traj], [], MultiagentConfig(), FMT) if e.model == "gen0"]
    kept, report = ma.select("gen0", gens, MultiagentConfig(), seed=0)
    assert kept == gens and report["action"] == "kept all 1"


def test_chat_format_closes_each_example(task, questions):
    traj = _debate_traj(task, questions[0], ["5", "9", "9"], ["9", "9", "9"])
    fmt = PromptFormat(True, "<u>", "</u><a>", "</a>")
    for e in ma.examples([traj], [], MultiagentConfig(), fmt):
        assert e.chat_template and e.segments[-1].text == "</a>" and e.segments[-1].weight == e.segments[-2].weight
        assert e.text.startswith("<u>" + questions[0].question + "</u><a>")


# ----------------------------------------------------------------------------------------------
# Metrics


def _traj(correct_final, r0):
    """A test trajectory with round-0 answers r0 [(answer, correct)] and a final verdict."""
    msgs = [Message(f"gen{i}", "answer", "", f"model:gen{i}", 0, a, c) for i, (a, c) in enumerate(r0)]
    return Trajectory(id=str(len(r0)) + str(r0), method="multiagent", task="t", question="q", answer="1",
                      messages=msgs, status="kept", correct=correct_final, stop="consensus" if correct_final else "tie")


def test_group_metrics():
    trajs = [
        _traj(True, [("1", True), ("2", False), ("2", False)]),   # wrong majority fixed
        _traj(False, [("1", True), ("1", True), ("2", False)]),   # right majority broken
        _traj(True, [("1", True), ("1", True), ("1", True)]),     # unanimous, right
        _traj(False, [("", False), ("3", False), ("4", False)]),  # no majority (a tie), wrong
    ]
    m = ma.group_metrics(trajs)
    assert m["gen0_accuracy"] == 0.75 and m["gen1_accuracy"] == 0.5 and m["gen2_accuracy"] == 0.25
    assert m["generator_accuracy"] == pytest.approx(0.5)
    assert m["majority0_accuracy"] == 0.5 and m["fixed_wrong_majority"] == 0.25 and m["broke_right_majority"] == 0.25
    assert m["disagreement0"] == 0.75 and m["consensus"] == 0.5
    accuracy = sum(t.correct for t in trajs) / len(trajs)
    assert accuracy == m["majority0_accuracy"] + m["fixed_wrong_majority"] - m["broke_right_majority"]
    assert ma.group_metrics([]) == {"consensus": None, "generator_accuracy": None, "majority0_accuracy": None,
                                    "fixed_wrong_majority": None, "broke_right_majority": None,
                                    "disagreement0": None}
    assert set(m) <= set(ma.METRIC_LABELS)


# ----------------------------------------------------------------------------------------------
# Config


def test_config_section_and_checks():
    cfg = load_config(None, ["method=multiagent", "multiagent.agents=2"])
    assert get_method("multiagent") is ma
    from tripost.config import method_config

    assert method_config(cfg).agents == 2
    for override, key in (("multiagent.tie_break=coin", "multiagent.tie_break"),
                          ("multiagent.agents=0", "multiagent.agents"),
                          ("multiagent.dplus_ratio=-1", "multiagent.dplus_ratio"),
                          ("multiagent.w_revised=0", "multiagent.w_revised"),
                          ("multiagent.samples=3", "multiagent.samples")):
        with pytest.raises(TripostError, match=key.replace(".", r"\.")):
            load_config(None, ["method=multiagent", override])
    with pytest.raises(TripostError, match=r"iterate\.arms\.bad\.agents"):
        load_config(None, ["method=multiagent", "iterate.arms={bad: {agents: 1}}"])
    with pytest.raises(TripostError, match=r"iterate\.arms\.bad: .*agentz"):
        load_config(None, ["method=multiagent", "iterate.arms={bad: {agentz: 1}}"])
    ok = load_config(None, ["method=multiagent", "iterate.arms={single_agent: {agents: 1, samples: 5, debate_rounds: 1}}"])
    assert ma.models(with_changes(ok.multiagent, **ok.iterate.arms["single_agent"])) == ["gen0"]


def test_demo_config_loads():
    from tripost.config import PROJECT_ROOT

    cfg = load_config(PROJECT_ROOT / "configs/multiagent_demo.yaml")
    assert cfg.method == "multiagent" and cfg.collect.do_sample and cfg.iterate.base_cache
    assert "single_agent" in cfg.iterate.arms and cfg.iterate.rounds == 2


# ----------------------------------------------------------------------------------------------
# inspect


def test_inspect_shows_who_said_what_and_the_tally(task, questions):
    from tripost.tools.inspect import Style, show_trajectory

    traj = _debate_traj(task, questions[0], ["5", "9", "9"], ["9", "9", "4"])
    text = show_trajectory(traj, Style(False))
    assert "-- round 0" in text and "-- round 1" in text
    assert "gen1 answer by model:gen1" in text and "critic2 update by model:critic2" in text
    assert "answers this round: 9 x2 (gen1, gen2) | 5 x1 (gen0)" in text
    assert "answers this round: 9 x2 (critic0, critic1) | 4 x1 (critic2)" in text
    assert "final answer: 9" in text and "stop=consensus" in text


def small_tokenizer(texts):
    """A byte-level BPE tokenizer trained in milliseconds on `texts` (with BOS and EOS)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    tk.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=300, special_tokens=["<s>", "</s>"],
                                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tk.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 0)])
    return PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<s>", eos_token="</s>")


def test_inspect_tokens_by_speaker(task, questions):
    from tripost.tools.inspect import trained_by_speaker
    from tripost.train import encode_example

    tok = small_tokenizer([task.gold_rationale(ex) for ex in questions] + [ma.OTHERS_HEADER, ma.UPDATE_PREFIX])
    traj = _debate_traj(task, questions[0], ["5", "9", "9"], ["9", "9", "9"])
    e = next(e for e in ma.examples([traj], [], MultiagentConfig(), FMT) if e.kind == "dminus")
    counts = trained_by_speaker(e, tok)
    assert counts["gen0"][0] == 0 and counts["gen1"][0] == 0 and counts["gen2"][0] == 0 and counts["user"][0] == 0
    assert counts["critic0"][0] == counts["critic0"][1] > 0  # only the critic's own revision is trained
    ids, weights = encode_example(e, tok)
    bos = sum(1 for t in ids[:-1] if t in tok.all_special_ids)  # context, nobody's text; [-1] is EOS
    assert sum(total for _, total in counts.values()) == len(ids) - bos
    assert counts["critic0"][0] == sum(w > 0 for w in weights)


# ----------------------------------------------------------------------------------------------
# The plan


def test_plan_has_a_train_stage_per_agent_and_the_arm(tmp_path):
    from tripost.iterate import plan
    from tripost.results import format_table

    cfg = load_config(None, ["method=multiagent", "iterate.rounds=1",
                             "iterate.arms={single_agent: {agents: 1, samples: 5, debate_rounds: 1}}"])
    stages = {s.id: s for s in plan(cfg, tmp_path)}
    assert [s for s in stages if s.startswith("round_1/")] == \
        ["round_1/collect", "round_1/process"] + [f"round_1/train/{a}" for a in ma.models(cfg.multiagent)] + \
        ["round_1/evaluate"]
    assert "arms/single_agent/round_1/train/gen0" in stages and "arms/single_agent/round_1/train/critic0" not in stages
    assert "split" not in stages["round_1/collect"].config  # the train split
    # The arm: one pass over data matched to the agents' tokens (not train.epochs passes).
    assert stages["arms/single_agent/round_1/train/gen0"].config["train"].epochs == 1.0
    assert stages["round_1/train/gen0"].config["train"].epochs == cfg.train.epochs

    cfg = load_config(None, ["method=multiagent", "iterate.rounds=1", "iterate.train_on_test=true"])
    stages = {s.id: s for s in plan(cfg, tmp_path)}
    assert stages["round_1/collect"].config["split"] == "test"
    table = format_table({"rows": [], "stages_done": 0, "stages": 1, "train_on_test": True})
    assert "trained on the TEST questions" in table


def test_a_model_without_examples_continues_unchanged(tmp_path):
    from tripost.iterate import _train
    from tripost.train import is_complete

    start = tmp_path / "start"
    start.mkdir()
    (start / "config.json").write_text("{}")
    (start / "model.safetensors").write_bytes(b"weights")
    (tmp_path / "critic1.jsonl").write_text("")
    out = tmp_path / "train"
    stats = _train(out, load_config().train, tmp_path / "critic1.jsonl", start)
    assert stats["tokens_seen"] == 0 and stats["skipped"].startswith("no training examples")
    assert is_complete(out / "model") and (out / "model/model.safetensors").read_bytes() == b"weights"
    assert not (out / "model.partial").exists()
    assert _train(out, load_config().train, tmp_path / "critic1.jsonl", start) == stats  # a rerun: the same
