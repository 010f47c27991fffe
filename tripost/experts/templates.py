"""Jinja prompt templates for LLM feedback, improvement and rationales, rendered in a sandbox.

Each task has a directory of templates (default `prompts/<task>/`, or `edit.prompts_dir`):

    feedback.j2      judge an attempt: which step is the first wrong one, and why
    improvement.j2   rewrite an attempt from its first wrong step on
    rationale.j2     write a step-by-step solution (tasks with no scripted gold rationale)

A template has two blocks, so the long few-shot part can be cached by the API:

    {% block system %} instructions and worked examples: the same for every item {% endblock %}
    {% block user %}   the one item: {{ question }}, {{ attempt }}, ...               {% endblock %}

The `system` block is rendered with the task-level variables only (`task`), so it cannot
accidentally depend on the item (and is rendered once per template); the `user` block gets the
item's variables. Templates run in jinja2's SandboxedEnvironment with StrictUndefined: a misspelt
variable is an error naming the template, not a silently empty string.

Templates are user files, so nothing in one may hang or crash the run. Every problem, at load or
at render time (a syntax error, a runtime error such as 1 / 0, `{% include %}` of a missing file or
of itself, a result too big), is one TripostError naming the template file and, where known, the
line. The sandbox itself limits neither time nor size, so this module adds:

  * a time limit per block (`timeout_s`, default RENDER_TIMEOUT_S), checked on every line of
    template code that runs (a trace function active only in template frames);
  * an output limit per block (`max_chars`, default MAX_OUTPUT_CHARS), counted while rendering;
  * checks, before they run, of the operations that build a huge value in a single step (which a
    time limit cannot interrupt): `**` and `*` on integers (at most MAX_INT_DIGITS digits),
    repeating or adding strings and lists with `*` / `+`, and widths in `%` formatting,
    str.format, the `format` / `center` / `indent` filters and the str methods center, ljust,
    rjust, zfill and expandtabs (at most `max_chars`).
What is not covered: memory built up gradually within the time limit by operations other than
those (e.g. `~` doubling a string in a loop). Prompt directories are configuration, trusted like
the config file; these limits contain mistakes, they are not a sandbox against a hostile author.

    templates = PromptTemplates(prompts_dir, task="date_understanding")
    system, user = templates.render("feedback", question=..., attempt=..., answer=...)
    templates.hashes   # {"feedback.j2": "sha256:...", ...} for provenance
"""

from __future__ import annotations

import hashlib
import math
import re
import string
import sys
import time
import types
from pathlib import Path

import jinja2
from jinja2.sandbox import SandboxedEnvironment, SecurityError

from tripost.config import EditConfig, resolve_path
from tripost.errors import TripostError, where

BLOCKS = ("system", "user")
RENDER_TIMEOUT_S = 5.0
# A prompt this long is far beyond any model's context (about 250k tokens).
MAX_OUTPUT_CHARS = 1_000_000
# Python's own limit for turning an int into text (sys.get_int_max_str_digits()).
MAX_INT_DIGITS = 4300
# str methods whose integer argument is the size of the result.
_SIZED_STR_METHODS = ("center", "ljust", "rjust", "zfill", "expandtabs")
# A width or precision in %-formatting ("%10.3f") and in a str.format spec ("{:>10}").
_PERCENT_WIDTH = re.compile(r"%(?:\([^)]*\))?[-+ #0]*(\d*)(?:\.(\d*))?")
_SPEC_WIDTH = re.compile(r"\d+")


class _TooBig(SecurityError):
    """An operation refused before it runs because its result would be too big."""


class _TimedOut(Exception):
    """Raised into the template's own code when the time limit has passed."""


class _LimitedEnvironment(SandboxedEnvironment):
    """jinja2's sandbox, plus size checks on the operations that can build a huge value in one
    step (see the module docstring)."""

    intercepted_binops = frozenset({"**", "*", "+", "%"})

    def __init__(self, max_chars: int, **options):
        self.max_chars = max_chars
        super().__init__(**options)
        for name in ("format", "center", "indent"):
            self.filters[name] = self._checked_filter(self.filters[name])

    def _size(self, n, what: str) -> None:
        if isinstance(n, int) and n > self.max_chars:
            raise _TooBig(f"{what} of {n:,} is above the limit of {self.max_chars:,} characters")

    def _widths(self, fmt: str) -> None:
        """The widths and precisions in a %-format string and in str.format specs."""
        for m in _PERCENT_WIDTH.finditer(fmt):
            for group in m.groups():
                self._size(int(group) if group else 0, "a format width")
        for _, field, spec, _ in string.Formatter().parse(fmt):
            if field is not None and spec:
                for digits in _SPEC_WIDTH.findall(spec):
                    self._size(int(digits), "a format width")

    def call_binop(self, context, operator: str, left, right):
        ints = isinstance(left, int) and isinstance(right, int)
        if operator == "**" and ints and right > 0 and abs(left) > 1:
            digits = right * math.log10(abs(left))
            if digits > MAX_INT_DIGITS:
                raise _TooBig(f"{left} ** {right} would have about {digits:.3g} digits (at most {MAX_INT_DIGITS})")
        elif operator == "*" and ints:
            if (left.bit_length() + right.bit_length()) * math.log10(2) > MAX_INT_DIGITS:
                raise _TooBig(f"a product of more than {MAX_INT_DIGITS} digits")
        elif operator == "*":
            for seq, n in ((left, right), (right, left)):
                if isinstance(seq, (str, list, tuple)) and isinstance(n, int):
                    self._size(len(seq) * n, "a repeat")
        elif operator == "+" and isinstance(left, (str, list, tuple)) and isinstance(right, (str, list, tuple)):
            self._size(len(left) + len(right), "a concatenation")
        elif operator == "%" and isinstance(left, str):
            self._widths(left)
        return super().call_binop(context, operator, left, right)

    def call(__self, __context, __obj, *args, **kwargs):  # noqa: N805 - jinja2's signature
        if isinstance(__obj, types.BuiltinMethodType) and isinstance(__obj.__self__, str) \
                and __obj.__name__ in _SIZED_STR_METHODS:
            for n in (*args, *kwargs.values()):
                __self._size(n, f"str.{__obj.__name__}() width")
        return super().call(__context, __obj, *args, **kwargs)

    def wrap_str_format(self, value):
        wrapper = super().wrap_str_format(value)
        if wrapper is not None:
            self._widths(value.__self__)
        return wrapper

    def _checked_filter(self, fn):
        """`fn` with its arguments after the value checked: widths, or a format string's widths."""
        env = self

        def checked(*args, **kwargs):
            value, *rest = args
            if fn is jinja2.filters.FILTERS["format"] and isinstance(value, str):
                env._widths(value)
            for n in (*rest, *kwargs.values()):
                env._size(n, f"the {fn.__name__.removeprefix('do_')} filter's width")
            return fn(*args, **kwargs)

        return checked


class _Deadline:
    """While active, raise _TimedOut in template code once `seconds` have passed.

    A trace function sees every line that compiled template code runs (loops included, which the
    sandbox does not see); frames of ordinary Python code are not traced, so filters and the
    rest run at full speed. The previous trace function (a debugger, coverage) is restored."""

    def __init__(self, seconds: float):
        self.seconds = seconds

    def __enter__(self):
        self.end = time.monotonic() + self.seconds
        self.previous = sys.gettrace()
        sys.settrace(self._trace_call)
        return self

    def __exit__(self, *exc):
        sys.settrace(self.previous)

    def _trace_call(self, frame, event, arg):
        return self._trace_line if "__jinja_template__" in frame.f_globals else None

    def _trace_line(self, frame, event, arg):
        if event == "line" and time.monotonic() > self.end:
            raise _TimedOut
        return self._trace_line


def _template_line(tb) -> tuple[str, int] | None:
    """(file, line) of the innermost template frame of a traceback, if there is one."""
    found = None
    while tb is not None:
        template = tb.tb_frame.f_globals.get("__jinja_template__")
        if template is not None:
            found = (template.filename, template.get_corresponding_lineno(tb.tb_lineno))
        tb = tb.tb_next
    return found


def prompts_dir_for(edit_cfg: EditConfig, task_name: str) -> Path:
    """`edit.prompts_dir` if set, else the built-in `prompts/<task>/`."""
    if edit_cfg.prompts_dir:
        return Path(edit_cfg.prompts_dir).expanduser()
    return resolve_path("prompts") / task_name


def file_hash(path: Path) -> str:
    return "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()


class PromptTemplates:
    """The templates of one prompts directory. Templates load lazily: a task that never asks for
    a rationale does not need rationale.j2."""

    def __init__(self, directory: str | Path, task: str, timeout_s: float = RENDER_TIMEOUT_S,
                 max_chars: int = MAX_OUTPUT_CHARS):
        self.directory = Path(directory)
        self.task = task
        self.timeout_s = timeout_s
        self.max_chars = max_chars
        self.env = _LimitedEnvironment(
            max_chars,
            loader=jinja2.FileSystemLoader(str(self.directory)),
            undefined=jinja2.StrictUndefined,
            autoescape=False,
            keep_trailing_newline=False,
            trim_blocks=True,
            lstrip_blocks=True,
        )
        self.hashes: dict[str, str] = {}
        self._templates: dict[str, jinja2.Template] = {}
        self._systems: dict[str, str] = {}  # the system block depends on the task only

    def path(self, name: str) -> Path:
        return self.directory / f"{name}.j2"

    def load(self, name: str) -> jinja2.Template:
        if name in self._templates:
            return self._templates[name]
        path = self.path(name)
        if not path.is_file():
            raise TripostError(f"{path}: prompt template not found (set edit.prompts_dir to a directory "
                               f"holding {name}.j2, or add prompts/{self.task}/{name}.j2)")
        try:
            template = self.env.get_template(path.name)
        except jinja2.TemplateSyntaxError as e:
            raise TripostError(f"{where(path, e.lineno)}: template syntax error: {e.message}") from None
        missing = [b for b in BLOCKS if b not in template.blocks]
        if missing:
            raise TripostError(f"{path}: template needs {{% block {missing[0]} %}}...{{% endblock %}} "
                               "(system: shared instructions and examples; user: the one item)")
        self.hashes[path.name] = file_hash(path)
        self._templates[name] = template
        return template

    def _render_block(self, name: str, block: str, variables: dict) -> str:
        template = self.load(name)
        parts, size = [], 0
        try:
            with _Deadline(self.timeout_s):
                for part in template.blocks[block](template.new_context(variables)):
                    size += len(part)
                    if size > self.max_chars:
                        raise _TooBig(f"the block renders more than {self.max_chars:,} characters")
                    parts.append(part)
        except Exception as e:  # noqa: BLE001 - whatever a template does wrong is the user's to fix
            raise TripostError(self._describe(name, block, variables, e)) from None
        return "".join(parts).strip()

    def _describe(self, name: str, block: str, variables: dict, e: Exception) -> str:
        """One line: the template file (and line), the block, and what went wrong."""
        if isinstance(e, jinja2.TemplateSyntaxError):  # in a template it includes
            return f"{where(e.filename or self.path(name), e.lineno)}: template syntax error: {e.message}"
        file, line = _template_line(e.__traceback__) or (str(self.path(name)), None)
        head = f"{where(file, line)}: block '{block}'"
        if isinstance(e, jinja2.UndefinedError):
            return f"{head}: {e.message} (available: {', '.join(sorted(variables))})"
        if isinstance(e, jinja2.TemplateNotFound):
            return f"{head}: included template {e.name!r} not found in {self.directory}"
        if isinstance(e, RecursionError):
            return f"{head}: recursion too deep (does a template include itself, or a macro call itself without end?)"
        if isinstance(e, _TimedOut):
            return f"{head}: rendering took more than {self.timeout_s:g} s (an endless or very long loop?)"
        if isinstance(e, _TooBig):
            return f"{head}: result too big: {e}"
        if isinstance(e, SecurityError):
            return f"{head}: unsafe template operation: {e}"
        return f"{head}: {type(e).__name__}: {e}"

    def render(self, name: str, **item) -> tuple[str, str]:
        """(system, user) text of template `name` for one item."""
        if name not in self._systems:
            self._systems[name] = self._render_block(name, "system", {"task": self.task})
        user = self._render_block(name, "user", {"task": self.task, **item})
        return self._systems[name], user
