"""How a question is put to a model: plain text, or the tokenizer's chat template.

    fmt = prompt_format(chat_template=False, tokenizer=tok)
    fmt.question("(1 + 2) =")   # plain: "Q: (1 + 2) =\\nA: "; chat: the template up to the assistant turn
    fmt.closing                 # text after the model's answer: "" (plain) or the end-of-turn text
    fmt.chat_template           # True: texts carry their own special tokens (no BOS added, no EOS appended)

One format serves rollouts (the prompt a model continues) and training examples (their first
segment, and the end-of-turn segment that a chat model must learn to write), so the two cannot
drift apart. A method's own continuation ("\\nFeedback: ...", a partner's remark) is plain text
inside the assistant turn in both formats.
"""

from __future__ import annotations

from dataclasses import dataclass

from tripost import steps
from tripost.errors import TripostError


@dataclass(frozen=True)
class PromptFormat:
    chat_template: bool
    _before: str = ""  # chat: the template text before the question ...
    _after: str = ""  # ... and between the question and the model's answer
    closing: str = ""

    def question(self, question: str) -> str:
        if not self.chat_template:
            return steps.prompt(question)
        return self._before + question + self._after


_PROBE_Q, _PROBE_A = "\x00question\x00", "\x00answer\x00"


def prompt_format(chat_template: bool, tokenizer=None) -> PromptFormat:
    """The plain format, or the chat format of `tokenizer` (its template rendered once around
    placeholder texts, so every question and answer sits exactly where the template puts it)."""
    if not chat_template:
        return PromptFormat(False)
    if tokenizer is None or not tokenizer.chat_template:
        raise TripostError("config: 'chat_template' is true but the tokenizer has no chat template")
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": _PROBE_Q}], tokenize=False,
                                           add_generation_prompt=True)
    full = tokenizer.apply_chat_template([{"role": "user", "content": _PROBE_Q},
                                          {"role": "assistant", "content": _PROBE_A}], tokenize=False)
    if prompt.count(_PROBE_Q) != 1 or not full.startswith(prompt) or full.count(_PROBE_A) != 1:
        raise TripostError("the tokenizer's chat template does not render a user turn followed by an "
                           "assistant turn as a prefix of each other; set chat_template: false")
    before, after = prompt.split(_PROBE_Q)
    closing = full[len(prompt):].split(_PROBE_A, 1)[1]
    if full[len(prompt):].split(_PROBE_A, 1)[0]:
        raise TripostError("the tokenizer's chat template adds text before the assistant's answer that "
                           "the generation prompt lacks; set chat_template: false")
    return PromptFormat(True, before, after, closing)
