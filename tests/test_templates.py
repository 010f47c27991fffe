"""Prompt templates cannot crash or hang the run: every problem is one TripostError naming the
template file (and line), rendering has a time and an output limit, and operations that would
build a huge value in one step are refused before they run."""

from __future__ import annotations

import re
import sys

import pytest

from tripost.errors import TripostError
from tripost.experts.templates import PromptTemplates


def write(tmp_path, name: str, user: str, system: str = "instructions") -> None:
    """A template whose user block starts on line 3 of the file."""
    (tmp_path / f"{name}.j2").write_text(
        "{% block system %}" + system + "{% endblock %}\n{% block user %}\n" + user + "\n{% endblock %}\n")


def error_of(templates: PromptTemplates, name: str = "feedback", **item) -> str:
    with pytest.raises(TripostError) as err:
        templates.render(name, **item)
    return str(err.value)


@pytest.mark.parametrize("user,line,words", [
    ("{{ 1 / 0 }}", 3, "ZeroDivisionError: division by zero"),
    ("ok\n{{ 'a' + 1 }}", 4, "TypeError"),
    ("{{ [1, 2][7] }}", 3, "list object has no element 7"),  # undefined, which is strict
    ("{{ 10 ** 5000 }}", 3, "10 ** 5000 would have about 5e+03 digits"),
    ("{{ 9 ** (9 ** 9) }}", 3, "would have about 3.7e+08 digits"),
    ("one\ntwo\n{% include 'missing.j2' %}", 5, "included template 'missing.j2' not found"),
    ("{% include 'feedback.j2' %}", 3, "recursion too deep"),
    ("{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(1) }}", 3, "recursion too deep"),
])
def test_runtime_errors_are_one_error_naming_file_and_line(tmp_path, user, line, words):
    write(tmp_path, "feedback", user)
    message = error_of(PromptTemplates(tmp_path, "toy"))
    assert message.startswith(f"{tmp_path / 'feedback.j2'}:{line}: block 'user': "), message
    assert words in message, message
    assert "Traceback" not in message and "\n" not in message


def test_an_included_template_is_named_in_its_own_errors(tmp_path):
    write(tmp_path, "feedback", "{% include 'part.j2' %}")
    (tmp_path / "part.j2").write_text("fine\n{{ 1 // 0 }}\n")
    assert error_of(PromptTemplates(tmp_path, "toy")).startswith(f"{tmp_path / 'part.j2'}:2: block 'user': ")
    (tmp_path / "part.j2").write_text("fine\n{{ oops\n")
    message = error_of(PromptTemplates(tmp_path, "toy"))
    assert re.match(rf"{re.escape(str(tmp_path / 'part.j2'))}:\d: template syntax error", message), message


def test_an_endless_loop_hits_the_time_limit(tmp_path):
    write(tmp_path, "feedback", "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}")
    message = error_of(PromptTemplates(tmp_path, "toy", timeout_s=0.2))
    assert message.startswith(f"{tmp_path / 'feedback.j2'}:3: block 'user': rendering took more than 0.2 s")


def test_output_is_capped(tmp_path):
    write(tmp_path, "feedback", "{% for i in range(1000) %}{{ question }}{% endfor %}")
    message = error_of(PromptTemplates(tmp_path, "toy", max_chars=5000), question="x" * 10)
    assert "renders more than 5,000 characters" in message and str(tmp_path / "feedback.j2") in message


@pytest.mark.parametrize("user", [
    "{{ 'x' * 100000000000 }}", "{{ [0] * 100000000000 }}", "{{ question * 2 }}",
    "{{ 12345678901234567890 ** 300 }}", "{{ (10 ** 3000) * (10 ** 3000) }}",
    "{{ '%99999999999d' % 1 }}", "{{ '{:>99999999999}'.format(1) }}", "{{ '%99999999999d'|format(1) }}",
    "{{ 'x'.center(99999999999) }}", "{{ 'x'.zfill(99999999999) }}", "{{ 'x'|center(99999999999) }}",
    "{{ 'a\\nb'|indent(99999999999) }}",
])
def test_huge_results_are_refused_before_they_are_built(tmp_path, user):
    write(tmp_path, "feedback", user)
    message = error_of(PromptTemplates(tmp_path, "toy", max_chars=1000), question="q" * 600)
    assert message.startswith(f"{tmp_path / 'feedback.j2'}:3: block 'user': result too big: "), message


def test_ordinary_templates_render_as_before(tmp_path):
    write(tmp_path, "feedback", "{{ '%5d'|format(3) }}|{{ '{:,}'.format(1500000) }}|{{ 2 ** 10 }}|"
                                "{{ 'ab' * 3 }}|{{ question ~ '!' }}|{{ 'x'|center(5) }}|{{ [1] + [2] }}|"
                                "{% for i in range(3) %}{{ i }}{% endfor %}", system="for {{ task }}")
    system, user = PromptTemplates(tmp_path, "toy").render("feedback", question="Q")
    assert system == "for toy"
    assert user == "3|1,500,000|1024|ababab|Q!|  x  |[1, 2]|012"


def test_unsafe_access_is_still_refused(tmp_path):
    write(tmp_path, "feedback", "{{ question.__class__.__mro__[1].__subclasses__() }}")
    message = error_of(PromptTemplates(tmp_path, "toy"), question="q")
    assert message.startswith(f"{tmp_path / 'feedback.j2'}:3: block 'user': ")


def test_the_previous_trace_function_is_restored(tmp_path):
    write(tmp_path, "feedback", "{{ question }}")
    write(tmp_path, "improvement", "{{ 1 / 0 }}")
    templates = PromptTemplates(tmp_path, "toy")
    before = sys.gettrace()  # a debugger or coverage, if one is running

    def tracer(frame, event, arg):
        return None

    sys.settrace(tracer)
    try:
        templates.render("feedback", question="q")
        with pytest.raises(TripostError):
            templates.render("improvement")
        assert sys.gettrace() is tracer
    finally:
        sys.settrace(before)
