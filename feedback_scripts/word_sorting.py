"""Scripted feedback and improvement for word sorting (TriPosT's "expert" for this task), and the
remarks of SAIE's scripted partner.

    edit.feedback: script:feedback_scripts/word_sorting.py
    edit.improvement: script:feedback_scripts/word_sorting.py
    saie.partner: script:feedback_scripts/word_sorting.py

`feedback(example, attempt)` walks the numbered steps of an attempt (format: see the docstring of
tripost/tasks/word_sorting.py) against the scripted solution and names the FIRST wrong step:

    Step (1) is correct. In step (2) the part "(7) 'gelatine' > (19) 'stick'" is incorrect. This is because 7 is less than 19.
    Step (1) to (3) are correct. The final response is also correct.

What it checks, as in the paper: the letters read off each word, the letter-to-number mapping
(a=1 ... z=26), which words tie and in what order the groups come, that the next subpart is the
right one on the right letter, the "Hence" orderings of subparts and of the whole list, and the
final list (a missing or extra word, a wrong order). Within a tie `[... ? ...]` and in the letter
lists any word order is accepted. An attempt that jumps to a correct final answer is accepted.

`improve(example, attempt, feedback)` keeps the steps before the first wrong one (the earlier of
the step the feedback names and the one this script finds) and continues with the scripted
solution from there, so the result is always judged correct.

`remark(example, attempt, stance)` (SAIE's partner, in the feedback grammar): "supportive" is the
feedback above (the first wrong step and why); "adversarial" disputes a correct letter number of a
verified letters step (picked by a hash of question and attempt) with a plausible wrong one, e.g.
'... the part "'oven'='o' (15)" is incorrect. This is because "o" is letter number 16 of the
alphabet, not 15.'; with no letters step verified it says two neighbours of the sorted list come
the other way round. Wrong on purpose: feedback() rejects the claimed number (tests check it).

`example` is a dict with id, task, question, answer, subtask, seen. Both functions are pure,
never raise on model garbage (feedback returns None when it cannot judge at all) and run in
milliseconds. A question the rationale format cannot hold (a word with a quote, a comma, a
bracket, a control character or an uppercase letter; a list whose rationale would be longer than
MAX_RATIONALE_CHARS: see tripost/tasks/word_sorting.py, which refuses such data when it loads)
gets no judgement from feedback (None) and an error from improve, never a wrong verdict.
Try it:  python feedback_scripts/word_sorting.py
"""

from __future__ import annotations

import hashlib
import re
from collections import Counter

from tripost import steps
from tripost.tasks.word_sorting import (ORDINALS, Final, Hence, Letters, NowHave, bracket, letter_at,
                                        letter_value, ordinal, question_words, quote, render_step,
                                        solve, sort_key, sort_words, unsupported_word, word_key)

_ENTRY_RE = re.compile(r'"([^"]*)"\s*=\s*"([^"]*)"\s*\(\s*(-?\d+)\s*\)')
_SUBPART_RE = re.compile(r"^Now let's sort this subpart\s*\[(.*?)\]\s*by looking at their\s+(\S+)\s+letters?\s*:(.*)$",
                         re.IGNORECASE)
_TOKEN_RE = re.compile(r'\(\s*(-?\d+)\s*\)\s*(\[[^\]]*\]|"[^"]*")')
_WORD_RE = re.compile(r'"([^"]*)"')
_ANSWER_RE = re.compile(r"the answer is\s*:?\s*(.*?)\s*$", re.IGNORECASE | re.DOTALL)


class Wrong(Exception):
    """The step under check is wrong: `part` (a piece of it) and `reason`."""

    def __init__(self, part: str, reason: str):
        super().__init__(reason)
        self.part, self.reason = part, reason


# ----------------------------------------------------------------------------------------------
# Small helpers


def _clip(text: str, n: int = 120) -> str:
    text = " ".join(text.split())
    return text if len(text) <= n else text[: n - 3] + "..."


def _ordinal_index(word: str) -> int | None:
    word = word.lower()
    if word in ORDINALS:
        return ORDINALS.index(word)
    m = re.fullmatch(r"(\d+)(?:st|nd|rd|th)", word)
    return int(m.group(1)) - 1 if m else None


def _first_difference(a: str, b: str) -> int:
    k = 0
    while k < min(len(a), len(b)) and a[k] == b[k]:
        k += 1
    return k


def _letter_text(word: str, k: int) -> str:
    c = letter_at(word, k)
    return f'"{c}" ({letter_value(c)})'


def _why_before(first: str, second: str) -> str:
    """Why `first` sorts before `second`."""
    k = _first_difference(first, second)
    return (f'"{first}" comes before "{second}": their {ordinal(k)} letters are '
            f"{_letter_text(first, k)} and {_letter_text(second, k)}")


def _names(words) -> str:
    words = [quote(w) for w in words]
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " and " + words[-1]


def _check_members(listed: list[tuple[str, str]], scope: list[str], where: str, whole: str) -> None:
    """`listed` = [(word, raw text)]: every word of `scope` as often as there, nothing else."""
    left = Counter(scope)
    for w, raw in listed:
        if w not in left:
            raise Wrong(raw, f'"{w}" is not in {where}')
        if left[w] == 0:
            raise Wrong(raw, f'"{w}" appears twice')
        left[w] -= 1
    missing = [w for w in dict.fromkeys(scope) if left[w] > 0]
    if missing:
        verb = "is" if len(missing) == 1 else "are"
        raise Wrong(whole, f"{_names(missing)} {verb} missing")


def _check_order(items: list[tuple[str, str, str]]) -> None:
    """items = [(word, separator before it, raw)]: increasing by word_key, joined by "<"."""
    for (a, _, raw_a), (b, sep, raw_b) in zip(items, items[1:]):
        part = f"{raw_a} {sep} {raw_b}"
        if sep == "<" and word_key(a) > word_key(b):
            raise Wrong(part, _why_before(b, a))
        if sep == ">" and word_key(a) < word_key(b):
            raise Wrong(part, _why_before(a, b))
        if sep != "<":
            raise Wrong(part, 'the words should be listed in increasing order, joined by "<"')


def _quoted_sequence(body: str) -> list[tuple[str, str, str]]:
    """[(word, separator before it, raw)] for `"a" < ["b" < "c"] > "d"` (brackets ignored)."""
    flat = body.replace("[", " ").replace("]", " ")
    out, last_end = [], 0
    for m in _WORD_RE.finditer(flat):
        sep = flat[last_end:m.start()].strip()
        out.append((m.group(1).strip().lower(), sep if out else "", m.group(0)))
        last_end = m.end()
    return out


# ----------------------------------------------------------------------------------------------
# One checker per step kind. Each raises Wrong or returns None.


def _check_letters(text: str, gold: Letters, words: list[str]) -> None:
    scope = list(gold.group) if gold.group else words
    if gold.group is None:
        if not text.lower().startswith("the first letter"):
            raise Wrong(_clip(text), 'the first step should give the first letter of every word and its '
                                     'number (a=1 ... z=26): "The first letter: ..."')
        body = text.split(":", 1)[1] if ":" in text else ""
        where = "the list"
    else:
        m = _SUBPART_RE.match(text)
        if not m:
            raise Wrong(_clip(text), f"the next step should sort the subpart {bracket(gold.group, '?')} by "
                                     f"looking at their {ordinal(gold.k)} letters")
        group = [w.strip().lower() for w in _WORD_RE.findall(m.group(1))]
        if sorted(group) != sorted(gold.group):
            raise Wrong(f"[{_clip(m.group(1))}]", f"the next subpart to sort is {bracket(gold.group, '?')}")
        k = _ordinal_index(m.group(2))
        if k != gold.k:
            shared = "letter" if gold.k == 1 else f"{gold.k} letters"
            raise Wrong(f"{m.group(2)} letters", f"the words of this subpart share their first {shared}, "
                                                f"so we look at their {ordinal(gold.k)} letters")
        body, where = m.group(3), "this subpart"
    entries = [(w.strip().lower(), c.lower(), int(n), raw.group(0))
               for raw in _ENTRY_RE.finditer(body) for w, c, n in [raw.groups()]]
    if not entries:
        raise Wrong(_clip(text), 'each word should be written as "word"="letter" (number)')
    for w, c, n, raw in entries:
        if w in scope:
            true = letter_at(w, gold.k)
            if c != true:
                if true == "":
                    raise Wrong(raw, f'"{w}" has no {ordinal(gold.k)} letter, so it is "" (0)')
                raise Wrong(raw, f'the {ordinal(gold.k)} letter of "{w}" is "{true}"')
            if n != letter_value(c):
                what = (f'"{c}" is letter number {letter_value(c)} of the alphabet' if letter_value(c)
                        else f'"{c}" is not a letter from a to z, so it counts 0')
                raise Wrong(raw, what)
    _check_members([(w, raw) for w, _, _, raw in entries], scope, where, _clip(body.strip().rstrip(".")))


def _check_now_have(text: str, gold: NowHave, scope: list[str], k: int) -> None:
    if not text.lower().startswith("we now have"):
        raise Wrong(_clip(text), f'the next step should order these words by their {ordinal(k)} letters: '
                                 f'"We now have: ..."')
    body = text.split(":", 1)[1] if ":" in text else ""
    tokens, last_end = [], 0
    for m in _TOKEN_RE.finditer(body):
        sep = body[last_end:m.start()].strip()
        words = [w.strip().lower() for w in _WORD_RE.findall(m.group(2))]
        tokens.append((int(m.group(1)), words, m.group(0), sep))
        last_end = m.end()
    if not tokens:
        raise Wrong(_clip(text), 'the words should be written as (number) "word" or (number) ["a" ? "b"], '
                                 'joined by "<"')
    _check_members([(w, raw) for _, ws, raw, _ in tokens for w in ws], scope,
                   "the list" if k == 0 else "this subpart", _clip(body.strip().rstrip(".")))
    letter_of = {}
    for n, ws, raw, _ in tokens:
        for w in ws:
            c = letter_at(w, k)
            if n != letter_value(c):
                raise Wrong(raw, f'the {ordinal(k)} letter of "{w}" is "{c}" ({letter_value(c)})')
        if len({letter_at(w, k) for w in ws}) > 1:
            a, b = next((a, b) for a in ws for b in ws if letter_at(a, k) != letter_at(b, k))
            raise Wrong(raw, f'"{a}" and "{b}" have different {ordinal(k)} letters, so they do not tie')
        c = letter_at(ws[0], k)
        if c in letter_of:
            raise Wrong(raw, f'"{letter_of[c]}" and "{ws[0]}" have the same {ordinal(k)} letter "{c}", '
                             f"so they belong in one subpart [... ? ...]")
        letter_of[c] = ws[0]
    for (n1, ws1, raw1, _), (n2, ws2, raw2, sep) in zip(tokens, tokens[1:]):
        k1, k2 = sort_key(letter_at(ws1[0], k)), sort_key(letter_at(ws2[0], k))
        part = f"{raw1} {sep} {raw2}"
        if sep == "<" and k1 > k2:
            raise Wrong(part, f"{n1} is greater than {n2}" if n1 != n2 else _why_before(ws2[0], ws1[0]))
        if sep == ">" and k1 < k2:
            raise Wrong(part, f"{n1} is less than {n2}" if n1 != n2 else _why_before(ws1[0], ws2[0]))
        if sep != "<":
            raise Wrong(part, 'the groups should be listed in increasing order, joined by "<"')


def _check_hence(text: str, gold: Hence) -> None:
    if not text.lower().startswith("hence, we have"):
        if gold.blocks is not None:
            raise Wrong(_clip(text), 'all subparts are sorted, so this step should combine them: '
                                     '"Hence, we have ..."')
        raise Wrong(_clip(text), f"the subpart {bracket(gold.words, '?')} is sorted now, so this step should "
                                 f'say "Hence, we have ..."')
    body = text[len("hence, we have"):].strip().rstrip(".")
    items = _quoted_sequence(body)
    where = "the list" if gold.blocks is not None else "this subpart"
    _check_members([(w, raw) for w, _, raw in items], list(gold.words), where, _clip(body))
    _check_order(items)


def _check_final(text: str, gold: Final) -> None:
    m = _ANSWER_RE.search(text)
    if not m:
        raise Wrong(_clip(text), 'the final response should say "So the answer is" and the sorted words')
    answer = m.group(1).rstrip(".").replace(",", " ")
    words = [w.lower() for w in answer.split()]
    _check_members([(w, w) for w in words], list(gold.words), "the list", _clip(answer))
    _check_order([(w, "<", w) for w in words])


# ----------------------------------------------------------------------------------------------
# Walking an attempt


def first_wrong(words: list[str], attempt: str) -> tuple[int, str | None, str | None, str | None]:
    """(index into the attempt's numbered steps, label, part, reason) of the first wrong step;
    label None when everything is correct (index = number of numbered steps checked)."""
    gold = solve(words)
    attempt_steps = [s for s in steps.parse_steps(attempt) if s.label != "0"]
    scope, k = words, 0  # the words (and letter) the last letters step looked at
    for i, g in enumerate(gold):
        if i >= len(attempt_steps):
            if not attempt_steps:
                text = _clip(attempt) or "(empty)"
                return 0, "1", text, "the first step should give the first letter of every word and its number"
            return i, steps.FINAL, "(missing)", "the attempt stops before the final response"
        s = attempt_steps[i]
        text = " ".join(s.text.split())
        try:
            if s.label == steps.FINAL:
                # A final response may come early; it is judged by the answer it gives.
                _check_final(text, gold[-1])
                return i, None, None, None
            if isinstance(g, Final):
                raise Wrong(_clip(text), "all words are sorted, so the next step should be the final response")
            if s.label != str(i + 1):
                raise Wrong(f"({s.label})", f"the steps should be numbered in order; this is step ({i + 1})")
            if isinstance(g, Letters):
                _check_letters(text, g, words)
                scope, k = (list(g.group) if g.group else words), g.k
            elif isinstance(g, NowHave):
                _check_now_have(text, g, scope, k)
            elif isinstance(g, Hence):
                _check_hence(text, g)
        except Wrong as w:
            return i, s.label, w.part, w.reason
    return len(gold), None, None, None  # not reached: the gold solution ends with Final


def _example_words(example: dict) -> list[str]:
    question = example.get("question")
    if not isinstance(question, str):
        raise ValueError("the example has no question text")
    words = question_words(question)
    if not words:
        raise ValueError("no words in the question")
    for w in words:
        problem = unsupported_word(w)
        if problem is not None:
            raise ValueError(f"the word {w!r} {problem}")
    return [w.lower() for w in words]


def feedback(example: dict, attempt: str) -> str | None:
    try:
        words = _example_words(example)
        i, label, part, reason = first_wrong(words, str(attempt or ""))
    except Exception:  # noqa: BLE001 - never crash the worker on odd input; None = no judgement
        return None
    if label is None:
        return steps.feedback_correct(i)
    return steps.feedback_wrong(i, label, part, reason)


def improve(example: dict, attempt: str, feedback: str) -> str:
    """Steps before the first wrong one, verbatim, then the scripted solution from there on."""
    words = _example_words(example)
    gold = solve(words)
    attempt = str(attempt or "")
    i, label, _, _ = first_wrong(words, attempt)
    numbered = [s for s in steps.parse_steps(attempt) if s.label != "0"]
    if label is None:
        return attempt.strip()
    parsed = steps.parse_feedback(feedback)
    if parsed is not None and parsed.wrong_step is not None:
        # Respect a critic that points earlier than we do (e.g. an LLM that found a real slip we
        # accept, such as a skipped step); never keep a step we know is wrong.
        at = next((j for j, s in enumerate(numbered) if s.label == parsed.wrong_step), i)
        i = min(i, at)
    # Text before step (1) (e.g. "Let's think step by step.") is dropped: the update is clean steps.
    kept = numbered[:i]
    rest = [steps.Step(steps.FINAL if isinstance(g, Final) else str(j + 1), render_step(g))
            for j, g in enumerate(gold) if j >= i]
    return steps.render_steps(kept + rest)


# ----------------------------------------------------------------------------------------------
# SAIE's scripted partner


def _hash(*parts: str) -> int:
    """A number fixed by the texts (so a remark does not depend on the run, the worker or the order)."""
    return int(hashlib.sha256("\x00".join(parts).encode()).hexdigest()[:15], 16)


def _letter_entries(verified: list) -> list[tuple[int, str, str, str, int]]:
    """(index, label, entry text, letter, number) of every correct "word"="c" (n) entry with n > 0
    in the verified letters steps."""
    out = []
    for i, s in enumerate(verified):
        text = " ".join(s.text.split())
        if not (text.lower().startswith("the first letter") or _SUBPART_RE.match(text)):
            continue
        for m in _ENTRY_RE.finditer(text):
            c, n = m.group(2).lower(), int(m.group(3))
            if n > 0 and letter_value(c) == n:
                out.append((i, s.label, m.group(0), c, n))
    return out


def _adversarial(words: list[str], attempt: str) -> str:
    i, _, _, _ = first_wrong(words, attempt)
    numbered = [s for s in steps.parse_steps(attempt) if s.label != "0"]
    h = _hash(" ".join(words), attempt)
    entries = _letter_entries(numbered[:i])
    if entries:
        j, label, entry, c, n = entries[h % len(entries)]
        claims = [v for v in (n + 1, n - 1, n + 2, n - 2) if 1 <= v <= 26]
        claim = claims[(h // len(entries)) % len(claims)]
        return steps.feedback_wrong(j, label, entry, f'"{c}" is letter number {claim} of the alphabet, not {n}')
    # No letters step verified: say two neighbours of the sorted list come the other way round.
    ordered = sort_words(words)
    pairs = [(a, b) for a, b in zip(ordered, ordered[1:]) if a != b]
    final = [s for s in numbered if s.label == steps.FINAL]
    part = _clip(final[0].text) if final else "(missing)"
    if not pairs:
        return steps.feedback_wrong(0, steps.FINAL, part, "a word of the list is missing")
    a, b = pairs[h % len(pairs)]
    return steps.feedback_wrong(0, steps.FINAL, part, f'"{b}" comes before "{a}"')


def remark(example: dict, attempt: str, stance: str) -> str:
    """SAIE's partner: supportive = the feedback (the first wrong step and why); adversarial = a
    correct letter number disputed with a plausible wrong one (see the module docstring)."""
    words = _example_words(example)
    attempt = str(attempt or "")
    if stance == "supportive":
        i, label, part, reason = first_wrong(words, attempt)
        return steps.feedback_correct(i) if label is None else steps.feedback_wrong(i, label, part, reason)
    if stance == "adversarial":
        return _adversarial(words, attempt)
    raise ValueError(f"unknown stance {stance!r} (supportive or adversarial)")


if __name__ == "__main__":
    from tripost.tasks.word_sorting import render

    ex = {"question": "Sort the following words alphabetically:\nList: oven costume counterpart"}
    good = render(solve(["oven", "costume", "counterpart"]))
    bad = good.replace('(19) "costume" < (21) "counterpart"', '(21) "counterpart" < (19) "costume"')
    for text in (good, bad):
        print(text, "\nFeedback:", feedback(ex, text), "\n")
    print("Improved:\n" + improve(ex, bad, feedback(ex, bad)))
    print("Adversarial remark on the right one:", remark(ex, good, "adversarial"))
