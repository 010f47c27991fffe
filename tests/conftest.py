"""Shared test fixtures.

`tiny_model_dir`: a tiny Llama model + tokenizer for multistep_arithmetic, built once per test
session with `tripost.model_init.init_model` (hidden 64, 2 layers, untrained). Load it with
AutoTokenizer / AutoModelForCausalLM.from_pretrained(tiny_model_dir). `tiny_cfg` is the Config it was
built with (task multistep_arithmetic, small splits).

`toy_task` / `toy_examples`: a small hand-made arithmetic Task in the shared step format (gold
rationales included), for tests that need a task without depending on a real task module.
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from tripost import steps
from tripost.config import load_config
from tripost.tasks.base import Task, make_example

# The BIG-bench task files, for tests that need real data (the package never reads this path).
BIGBENCH_DIR = Path(__file__).resolve().parents[2] / "shared/data/bigbench"


class ToyArithmetic(Task):
    """'(a op b) op2 c =' questions with scripted rationales. Subtask "2" is seen, "3" unseen."""

    name = "toy_arithmetic"
    has_gold_rationale = True

    def _load_all(self):
        rng = random.Random(0)
        out = []
        for i in range(60):
            a, b, c = rng.randint(-9, 9), rng.randint(-9, 9), rng.randint(-9, 9)
            op, op2 = rng.choice("+-*"), rng.choice("+-*")
            inner = a + b if op == "+" else a - b if op == "-" else a * b
            value = inner + c if op2 == "+" else inner - c if op2 == "-" else inner * c
            q = f"(({a} {op} {b}) {op2} {c}) ="
            seen = i % 6 != 0
            out.append(make_example(self.name, q, str(value), subtask="2" if seen else "3", seen=seen,
                                    a=a, b=b, c=c, op=op, op2=op2, inner=inner))
        return out

    def gold_rationale(self, ex):
        m = ex.meta
        return "\n".join([
            f'(1) This equation can be written as "A {m["op2"]} {m["c"]}", where A = ({m["a"]} {m["op"]} {m["b"]}).',
            f"(2) Let's calculate A = ({m['a']} {m['op']} {m['b']}) = {m['inner']}.",
            f"(3) Then, the final equation is A {m['op2']} {m['c']} = {m['inner']} {m['op2']} {m['c']} = {ex.answer}.",
            steps.final_line(ex.answer),
        ])


@pytest.fixture(scope="session")
def toy_task():
    return ToyArithmetic(load_config().task)


@pytest.fixture(scope="session")
def toy_examples(toy_task):
    return toy_task.load("test")

@pytest.fixture
def llm_setup(monkeypatch, tmp_path, toy_examples, toy_task):
    """An LLM expert on the toy task, talking to a local fake Messages-API server that answers with
    the gold rationales: (expert, server, examples, {question: gold rationale})."""
    from fake_messages_server import FakeMessagesServer, gold_rule
    from tripost.config import PROJECT_ROOT
    from tripost.experts.llm import LlmExpert

    monkeypatch.setenv("TRIPOST_TEST_API_KEY", "sk-test")
    golds = {ex.question: toy_task.gold_rationale(ex) for ex in toy_examples}
    with FakeMessagesServer(rule=gold_rule(golds)) as server:
        cfg = load_config(None, [("edit.api.base_url", server.url), ("edit.api.api_key_env", "TRIPOST_TEST_API_KEY"),
                                 ("edit.api.model", "claude-test"), ("edit.api.retry_base_s", 0.01),
                                 ("edit.api.max_retries", 1),
                                 # the toy task borrows the arithmetic prompts
                                 ("edit.prompts_dir", str(PROJECT_ROOT / "prompts" / "multistep_arithmetic"))])
        expert = LlmExpert(cfg.edit, toy_task, tmp_path)
        yield expert, server, toy_examples, golds
        expert.close()



TINY_OVERRIDES = [
    ("task.max_train", 200), ("task.max_test", 20),
    ("init_model.vocab_size", 320), ("init_model.hidden_size", 64), ("init_model.intermediate_size", 128),
    ("init_model.num_hidden_layers", 2), ("init_model.num_attention_heads", 2),
    ("init_model.num_key_value_heads", 2), ("init_model.max_position_embeddings", 512),
    ("collect.max_new_tokens", 24), ("evaluate.max_new_tokens", 24),
    ("collect.batch_size", 8), ("evaluate.batch_size", 8),
]


@pytest.fixture(scope="session")
def tiny_cfg():
    return load_config(None, [("task.name", "multistep_arithmetic")] + TINY_OVERRIDES)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, tiny_cfg):
    """A tiny untrained Llama + tokenizer for multistep_arithmetic (built with init_model)."""
    from tripost.model_init import init_model
    from tripost.tasks import get_task

    return init_model(tiny_cfg.init_model, get_task(tiny_cfg.task), tmp_path_factory.mktemp("tiny_model"))


# The demo config (configs/demo.yaml) shrunk for tests: a 1-layer model, a dozen questions, one
# epoch, short generations. Used by the iterate and inspect/report tests, which run it through
# `scripted_iterate` (below).
TINY_RUN_OVERRIDES = [
    "task.max_train=10", "task.max_test=6",
    "init_model.vocab_size=320", "init_model.hidden_size=32", "init_model.intermediate_size=64",
    "init_model.num_hidden_layers=1", "init_model.num_attention_heads=2", "init_model.num_key_value_heads=2",
    "collect.max_new_tokens=24", "evaluate.max_new_tokens=24", "collect.batch_size=16", "evaluate.batch_size=16",
    "train.epochs=1", "iterate.warmup_epochs=1", "train.micro_batch_size=4", "iterate.rounds=1",
    # A low learning rate keeps the model near random: it writes (wrong) text the experts can edit.
    "train.learning_rate=0.0001",
    # Each test builds its own base: nothing is read from or left in the user's base cache; the
    # warm-up trains on the run's own few questions with the settings above, on one thread.
    "iterate.base_cache=null", "iterate.warmup_questions=null", "iterate.warmup_train={}", "train.threads=1",
]


# `tripost iterate` with a scripted learner. The edit stage drops attempts that were cut off at
# max_new_tokens or have no numbered step (nothing to edit), and that is all a tiny untrained model
# writes; so in the iterate and inspect/report tests the learner's generation is replaced by well-
# formed, wrong answers (the gold rationale with the last result off by one, or an earlier step's),
# which the experts edit. Everything else (model loading, training, the stages, resuming) is real.
SCRIPTED_LEARNER = """
import hashlib
import sys

from tripost import engine, steps
from tripost.cli import main
from tripost.tasks.multistep_arithmetic import rationale


def wrong_answer(question):
    gold = rationale(question)
    answer = steps.extract_final_answer(gold)
    wrong = str(int(answer) + 1)
    lines = gold.splitlines()
    if int(hashlib.sha256(question.encode()).hexdigest(), 16) % 2 and len(lines) > 3:
        k = 1  # step (2): its result off by one
        head, _, value = lines[k].rstrip(".").rpartition(" ")
        lines[k] = f"{head} {int(value) + 1}."
    elif lines[-2].endswith(f" {answer}."):
        lines[-2] = lines[-2][: -len(answer) - 1] + wrong + "."
    lines[-1] = steps.final_line(wrong)
    return "\\n".join(lines)


def generate_batch(model, tokenizer, prompts, gen, *args, **kwargs):
    out = []
    for p in prompts:
        if p.startswith(steps.QUESTION_PREFIX) and p.endswith(steps.ANSWER_PREFIX):
            out.append((wrong_answer(p[len(steps.QUESTION_PREFIX):-len(steps.ANSWER_PREFIX)]), False))
        else:  # asked to critique its answer: it never learned to
            out.append(("", False))
    return out


engine.generate_batch = generate_batch
sys.exit(main(sys.argv[1:]))
"""


def scripted_iterate(*args: str) -> list[str]:
    """The command line of `tripost iterate ARGS` with the scripted learner."""
    import sys

    return [sys.executable, "-c", SCRIPTED_LEARNER, "iterate", *args]
