"""BIG-bench word sorting, with TriPosT-style scripted rationales.

    task.name: word_sorting
    task.data_dir: DIR        # holds BIG-bench's word_sorting.json (1900 lists of 2..20 words)

Question: the file's task_prefix + input prefix + the words, i.e.
"Sort the following words alphabetically:\\nList: stick gelatine". Answer: the sorted words separated
by single spaces. Lists of <= 7 words are "seen" (train and test), lists of >= 8 words are "unseen"
(test only); the subtask is "words_<n>".

The rationale format (gold rationales, the feedback script feedback_scripts/word_sorting.py and
the LLM prompts all rely on it). It follows TriPosT's word sorting rationale, except that TriPosT
numbers sub-steps "(3.1)", "(3.2)"; here every line is a top-level numbered step, so the feedback
grammar of tripost/steps.py can point at any of them:

    (1) The first letter: "oven"="o" (15), "costume"="c" (3), "counterpart"="c" (3).
    (2) We now have: (3) ["costume" ? "counterpart"] < (15) "oven".
    (3) Now let's sort this subpart ["costume" ? "counterpart"] by looking at their second letters: "costume"="o" (15), "counterpart"="o" (15).
    (4) We now have: (15) ["costume" ? "counterpart"].
    (5) Now let's sort this subpart ["costume" ? "counterpart"] by looking at their third letters: "costume"="s" (19), "counterpart"="u" (21).
    (6) We now have: (19) "costume" < (21) "counterpart".
    (7) Hence, we have "costume" < "counterpart".
    (8) Hence, we have ["costume" < "counterpart"] < "oven".
    (Final response) So the answer is costume counterpart oven.

Step kinds, in the order the script writes them:
  * letters   `The first letter: "w"="c" (n), ...` (step 1, every word in question order), or
              `Now let's sort this subpart ["a" ? "b"] by looking at their <ordinal> letters: ...`
              (a group of words that tie on all earlier letters).
  * now-have  `We now have: (n) "w" < (m) ["a" ? "b"] < ...`: the words (of the whole list or of
              the subpart) grouped by that letter, in increasing order; `[... ? ...]` is a tie.
  * hence     `Hence, we have "a" < "b".` closes a subpart once all of its ties are resolved
              (a subpart whose words still all tie is re-sorted on the next letter without a
              second "Hence"). The last numbered step combines everything:
              `Hence, we have ["a" < "b"] < "c".`, brackets marking the groups that shared a
              first letter.
  * final     `(Final response) So the answer is a b c.`
Ties are resolved depth-first, smallest letter first. Letter numbers: a=1 ... z=26. A word that
has run out of letters shows `""` (0) and comes first (so "g" < "governor"); any other character
(an apostrophe, a dot, &) also counts 0 and, against another 0, goes by its character code, as in
BIG-bench's plain string sort. `solve(words)` builds these steps; `render` writes them.

Data the format cannot hold is refused, never guessed at (`unsupported_word`, `solve`):
  * when the task file is loaded, a list with no words, or a word with a double quote, a comma or
    a square bracket (they delimit words and groups in the steps), a control character, an
    uppercase letter (letters are numbered a=1 ... z=26 and the checker compares lowercased
    words, so a case-sensitive order cannot be written), a trailing "." or a leading ":" (the
    final response would lose it), or a target that is not the words in that order (e.g. a plain
    string sort of words with characters after "z", such as "{" or "é") is one TripostError
    naming the file and examples[i];
  * a list whose rationale would be longer than MAX_RATIONALE_CHARS (long shared prefixes, a
    chain a, aa, aaa, ..., many words) is one TripostError naming the file and the example when
    its gold rationale is built. `solve` is iterative and stops as soon as the budget is spent
    (RationaleTooLong), so a hostile list costs no more than that; the feedback script then
    returns no judgement.
"""

from __future__ import annotations

import json
import unicodedata
from dataclasses import dataclass

from tripost import steps
from tripost.errors import TripostError
from tripost.tasks.base import Example, Task, make_example

MAX_SEEN_WORDS = 7
# The longest gold rationale built: the most characters tripost's step parser reads of an attempt,
# so the feedback script can check every step of it (BIG-bench's longest is about 4,300).
MAX_RATIONALE_CHARS = steps.MAX_CHARS

ORDINALS = ("first second third fourth fifth sixth seventh eighth ninth tenth eleventh twelfth "
            "thirteenth fourteenth fifteenth sixteenth seventeenth eighteenth nineteenth twentieth").split()


def ordinal(k: int) -> str:
    """0 -> "first", 1 -> "second", ...; past the table, "21st"-style (never needed by BIG-bench)."""
    if k < len(ORDINALS):
        return ORDINALS[k]
    n = k + 1
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


def letter_at(word: str, k: int) -> str:
    """The k-th (0-based) character of `word`, or "" once the word has ended."""
    return word[k] if k < len(word) else ""


def letter_value(char: str) -> int:
    """a=1 ... z=26; the end of a word and any other character count 0."""
    char = char.lower()
    return ord(char) - ord("a") + 1 if len(char) == 1 and "a" <= char <= "z" else 0


def sort_key(char: str) -> tuple[int, str]:
    """How one letter position orders words: by its number, then (among 0s) by character code,
    the end of a word ("") first. Comparing words position by position with this key gives the
    same order as Python's (and BIG-bench's) string sort for lowercase words."""
    return letter_value(char), char


def word_key(word: str) -> list[tuple[int, str]]:
    return [sort_key(c) for c in word] + [sort_key("")]


def sort_words(words: list[str]) -> list[str]:
    return sorted(words, key=word_key)


def group_by_letter(words: list[str], k: int) -> list[tuple[int, str, list[str]]]:
    """Split `words` by their k-th letter: [(number, letter, words in input order)], increasing."""
    groups: dict[str, list[str]] = {}
    for w in words:
        groups.setdefault(letter_at(w, k), []).append(w)
    return [(letter_value(c), c, groups[c]) for c in sorted(groups, key=sort_key)]


# ----------------------------------------------------------------------------------------------
# Structured steps (the feedback script compares an attempt against these)


@dataclass(frozen=True)
class Letters:
    """`The first letter: ...` (group is None) or `Now let's sort this subpart [...] by looking at
    their <ordinal> letters: ...`."""

    k: int
    entries: tuple[tuple[str, str, int], ...]  # (word, letter, number)
    group: tuple[str, ...] | None = None


@dataclass(frozen=True)
class NowHave:
    groups: tuple[tuple[int, tuple[str, ...]], ...]  # (number, words); several words = a tie


@dataclass(frozen=True)
class Hence:
    words: tuple[str, ...]  # in sorted order
    blocks: tuple[tuple[str, ...], ...] | None = None  # final combine: the first-letter groups


@dataclass(frozen=True)
class Final:
    words: tuple[str, ...]


def quote(w: str) -> str:
    return f'"{w}"'


def bracket(words, sep: str) -> str:
    return "[" + f" {sep} ".join(quote(w) for w in words) + "]"


def render_step(step) -> str:
    """The text of one step, without its "(n) " label."""
    if isinstance(step, Letters):
        listed = ", ".join(f'{quote(w)}="{c}" ({n})' for w, c, n in step.entries)
        if step.group is None:
            return f"The first letter: {listed}."
        return (f"Now let's sort this subpart {bracket(step.group, '?')} by looking at their "
                f"{ordinal(step.k)} letters: {listed}.")
    if isinstance(step, NowHave):
        parts = [f"({n}) " + (quote(ws[0]) if len(ws) == 1 else bracket(ws, "?")) for n, ws in step.groups]
        return "We now have: " + " < ".join(parts) + "."
    if isinstance(step, Hence):
        if step.blocks is None:
            return "Hence, we have " + " < ".join(quote(w) for w in step.words) + "."
        parts = [quote(b[0]) if len(b) == 1 else bracket(b, "<") for b in step.blocks]
        return "Hence, we have " + " < ".join(parts) + "."
    if isinstance(step, Final):
        return steps.final_line(" ".join(step.words))[len(f"({steps.FINAL}) "):]
    raise TypeError(step)


def _letters(words, k, group=None) -> Letters:
    entries = tuple((w, letter_at(w, k), letter_value(letter_at(w, k))) for w in words)
    return Letters(k, entries, None if group is None else tuple(group))


def _now_have(words, k) -> NowHave:
    return NowHave(tuple((n, tuple(ws)) for n, _, ws in group_by_letter(words, k)))


class RationaleTooLong(ValueError):
    """The rationale of a list would be longer than the budget `solve` was given."""


class _Steps(list):
    """The steps built so far; appending one past `max_chars` rendered characters raises
    RationaleTooLong, so building stops as soon as the budget is spent."""

    def __init__(self, max_chars: int):
        super().__init__()
        self.max_chars, self.chars = max_chars, 0

    def append(self, step) -> None:
        self.chars += len(render_step(step)) + 8  # the "(n) " label and the newline
        if self.chars > self.max_chars:
            raise RationaleTooLong(f"the rationale would be longer than {self.max_chars:,} characters")
        super().append(step)


def _tied_groups(words: list[str], k: int) -> list[list[str]]:
    """The groups of `words` that tie on their k-th letter and still need sorting (a repeated
    word ties with itself for ever, so a group of one distinct word is done)."""
    return [tied for _, _, tied in group_by_letter(words, k) if len(set(tied)) > 1]


def _solve_subpart(words: list[str], k: int, out: list, close: bool = True) -> None:
    """Sort a tied group on its k-th letter, then its own ties on the next letter, depth-first,
    smallest letter first. A group that still ties as a whole is just re-sorted on the next letter;
    it gets one "Hence" at the end, not one per letter (as in TriPosT).

    Iterative (an explicit stack of open subparts): a long shared prefix is as many nested
    subparts as it has letters, more than Python's recursion limit allows."""

    def open_subpart(words: list[str], k: int, close: bool) -> tuple:
        out.append(_letters(words, k, group=words))
        out.append(_now_have(words, k))
        children = iter([(tied, k + 1, len(tied) < len(words)) for tied in _tied_groups(words, k)])
        return words, close, children

    stack = [open_subpart(words, k, close)]
    while stack:
        group, closes, children = stack[-1]
        child = next(children, None)
        if child is not None:
            stack.append(open_subpart(*child))
            continue
        stack.pop()
        if closes:
            out.append(Hence(tuple(sort_words(group))))


def solve(words: list[str], max_chars: int = MAX_RATIONALE_CHARS) -> list:
    """The structured gold rationale for sorting `words` (in question order). Raises
    RationaleTooLong when its text would be longer than `max_chars`."""
    out = _Steps(max_chars)
    out.append(_letters(words, 0))
    out.append(_now_have(words, 0))
    blocks = []
    for _, _, tied in group_by_letter(words, 0):
        if len(set(tied)) > 1:
            _solve_subpart(tied, 1, out)
        blocks.append(tuple(sort_words(tied)))
    ordered = tuple(w for b in blocks for w in b)
    out.append(Hence(ordered, blocks=tuple(blocks)))
    out.append(Final(ordered))
    return list(out)


def render(solution: list) -> str:
    lines = []
    for i, step in enumerate(solution, start=1):
        label = steps.FINAL if isinstance(step, Final) else str(i)
        lines.append(steps.Step(label, render_step(step)).render())
    return "\n".join(lines)


def question_words(question: str) -> list[str]:
    """The words of a word sorting question (everything after the last "List:")."""
    _, sep, rest = question.rpartition("List:")
    return (rest if sep else question).split()


def unsupported_word(word: str) -> str | None:
    """Why the rationale format cannot hold `word` (see the module docstring), or None."""
    for char, what in (('"', "a double quote"), (",", "a comma"), ("[", "a square bracket"),
                       ("]", "a square bracket")):
        if char in word:
            return f"holds {what} ({char!r}), which delimits words in the rationale"
    control = next((c for c in word if unicodedata.category(c) in ("Cc", "Cf", "Cs", "Co", "Cn")), None)
    if control is not None:
        return f"holds a control or invisible character ({control!r})"
    upper = next((c for c in word if c.lower() != c), None)
    if upper is not None:
        return (f"holds an uppercase letter ({upper!r}): letters are numbered a=1 ... z=26 and words are "
                "compared lowercased, so a case-sensitive order cannot be written; lowercase the data")
    if word.endswith("."):
        return "ends with '.', which the final response would lose"
    if word.startswith(":"):
        return "starts with ':', which the final response would lose"
    return None


# ----------------------------------------------------------------------------------------------
# The task


class WordSorting(Task):
    name = "word_sorting"
    has_gold_rationale = True
    filename = "word_sorting.json"

    def _load_all(self) -> list[Example]:
        path = self.data_file(self.filename)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            prefix = data.get("task_prefix", "Sort the following words alphabetically:")
            list_prefix = data.get("example_input_prefix", "\nList: ")
            raw = data["examples"]
        except (json.JSONDecodeError, AttributeError, KeyError) as e:
            raise TripostError(f"{path}: not a BIG-bench task file ({e})") from None
        out = []
        for i, item in enumerate(raw):
            if not isinstance(item, dict) or not isinstance(item.get("input"), str) \
                    or not isinstance(item.get("target"), str):
                raise TripostError(f"{path}: examples[{i}] needs string 'input' and 'target'")
            words = item["input"].split()
            if not words:
                raise TripostError(f"{path}: examples[{i}]: no words to sort in 'input'")
            for w in words:
                problem = unsupported_word(w)
                if problem is not None:
                    raise TripostError(f"{path}: examples[{i}]: the word {w!r} {problem}. The word sorting "
                                       "rationale format cannot hold it: remove or replace such words")
            target = " ".join(item["target"].split())
            ordered = " ".join(sort_words(words))
            if self.normalize(target) != self.normalize(ordered):
                raise TripostError(f"{path}: examples[{i}]: the target {target!r} is not the words in the order the "
                                   f"rationale sorts them ({ordered!r}: letters a=1 ... z=26, any other character "
                                   "0 and then by its character code), so its gold rationale would be judged wrong")
            n = len(words)
            out.append(make_example(self.name, f"{prefix}{list_prefix}{' '.join(words)}",
                                    target, subtask=f"words_{n}",
                                    seen=n <= MAX_SEEN_WORDS, source=f"{path}: examples[{i}]"))
        return out

    def normalize(self, answer: str) -> str:
        # Models sometimes separate with commas (words never contain one) or write TriPosT's
        # "So the answer is: ...".
        return " ".join(answer.strip().lstrip(":").rstrip(".").replace(",", " ").split()).lower()

    def gold_rationale(self, example: Example) -> str:
        try:
            return render(solve(question_words(example.question)))
        except RationaleTooLong as e:
            where = example.meta.get("source") or f"{self.data_file(self.filename)}: {example.question[:80]!r}"
            raise TripostError(f"{where}: {e} (MAX_RATIONALE_CHARS, the most tripost's step parser reads): "
                               "its words share long prefixes or there are too many of them; shorten the list "
                               "or leave it out") from None

