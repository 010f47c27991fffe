"""The lock-step driver (tripost/engine.py drive): grouping by answerer, batches, episodes that ask
several answerers at once, episodes that finish before asking, and clear errors."""

from __future__ import annotations

import pytest

from tripost.engine import ExpertAnswerer, Request, drive
from tripost.errors import TripostError
from tripost.experts import Expert, Reply


class Echo:
    """An answerer that answers with the prompt upper-cased, in batches of `size`, and records them."""

    def __init__(self, size: int):
        self.size, self.calls = size, []

    def batches(self, requests):
        order = sorted(range(len(requests)), key=lambda i: len(requests[i].prompt))
        return [order[b:b + self.size] for b in range(0, len(order), self.size)]

    def answer(self, requests):
        self.calls.append([r.prompt for r in requests])
        return [Reply(text=r.prompt.upper(), author="model:echo") for r in requests]


def talk(name: str, turns: int, to=("a",)):
    """An episode: `turns` levels, each asking every answerer in `to`; returns what it heard."""
    heard = []
    for t in range(turns):
        replies = yield [Request(who, "generate", prompt=f"{name}-{t}-{who}") for who in to]
        heard.append([r.text for r in replies])
    return (name, heard)


def test_lock_step_levels_batches_and_yield_order():
    a = Echo(size=2)
    episodes = [talk("x", 2), talk("yy", 1), talk("zzz", 2)]
    out = [r for batch in drive(episodes, {"a": a}, window=10) for r in batch]
    assert sorted(out) == [("x", [["X-0-A"], ["X-1-A"]]), ("yy", [["YY-0-A"]]), ("zzz", [["ZZZ-0-A"], ["ZZZ-1-A"]])]
    # Level 1: three prompts in length-sorted batches of 2; level 2: the two that go on.
    assert a.calls == [["x-0-a", "yy-0-a"], ["zzz-0-a"], ["x-1-a", "zzz-1-a"]]


def test_an_episode_asking_two_answerers_advances_when_both_answered():
    a, b = Echo(size=8), Echo(size=8)
    (result,) = [r for batch in drive([talk("q", 2, to=("a", "b"))], {"a": a, "b": b}, window=4) for r in batch]
    assert result == ("q", [["Q-0-A", "Q-0-B"], ["Q-1-A", "Q-1-B"]])
    assert len(a.calls) == len(b.calls) == 2


def test_episodes_finishing_without_a_request_are_yielded():
    def done_at_once(name):
        return name
        yield  # a generator that never asks

    out = [r for batch in drive([done_at_once("early"), talk("late", 1)], {"a": Echo(4)}, window=4) for r in batch]
    assert sorted(map(str, out)) == sorted(["early", str(("late", [["LATE-0-A"]]))])


def test_windows_run_one_after_another():
    a = Echo(size=100)
    list(drive([talk(str(i), 1) for i in range(5)], {"a": a}, window=2))
    assert [len(c) for c in a.calls] == [2, 2, 1]


def test_a_request_to_nobody_is_a_clear_error():
    with pytest.raises(TripostError, match="no one answers requests to 'nobody'"):
        list(drive([talk("q", 1, to=("nobody",))], {"a": Echo(1)}, window=1))


def test_expert_answerer_groups_by_kind_and_names_the_author():
    class Counting(Expert):
        name = "script:counting.py"

        def __init__(self):
            self.seen = []

        def feedback_many(self, requests):
            self.seen.append(("feedback", len(requests)))
            return [Reply(text=f"fb {a}") for _, a in requests]

        def improve_many(self, requests):
            self.seen.append(("improve", len(requests)))
            return [Reply(text=f"new {a}") for _, a, _ in requests]

    expert = Counting()
    replies = ExpertAnswerer(expert).answer([Request("feedback", "feedback", args=(None, "1")),
                                             Request("improvement", "improve", args=(None, "2", "f")),
                                             Request("feedback", "feedback", args=(None, "3"))])
    assert [r.text for r in replies] == ["fb 1", "new 2", "fb 3"]
    assert all(r.author == "script:counting.py" for r in replies)
    assert expert.seen == [("feedback", 2), ("improve", 1)]
    with pytest.raises(TripostError, match="cannot answer a 'generate' request"):  # a model's kind
        ExpertAnswerer(expert).answer([Request("partner", "generate", prompt="Q: 1 =\nA: ")])
