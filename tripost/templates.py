"""Jinja prompt templates for LLM feedback, improvement and rationales, rendered in a sandbox.

Each task has a directory of templates (default `prompts/<task>/`, or `edit.prompts_dir`):

    feedback.j2      judge an attempt: which step is the first wrong one, and why
    improvement.j2   rewrite an attempt from its first wrong step on
    rationale.j2     write a step-by-step solution (tasks with no scripted gold rationale)

A template has two blocks, so the long few-shot part can be cached by the API:

    {% block system %} instructions and worked examples: the same for every item {% endblock %}
    {% block user %}   the one item: {{ question }}, {{ attempt }}, ...               {% endblock %}

The `system` block is rendered with the task-level variables only (`task`), so it cannot
accidentally depend on the item; the `user` block gets the item's variables. Templates run in
jinja2's SandboxedEnvironment with StrictUndefined: a misspelt variable is an error naming the
template, not a silently empty string.

    templates = PromptTemplates(prompts_dir, task="date_understanding")
    system, user = templates.render("feedback", question=..., attempt=..., answer=...)
    templates.hashes   # {"feedback.j2": "sha256:...", ...} for provenance
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import jinja2
from jinja2.sandbox import SandboxedEnvironment

from tripost.config import EditConfig, resolve_path
from tripost.errors import TripostError, where

BLOCKS = ("system", "user")


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

    def __init__(self, directory: str | Path, task: str):
        self.directory = Path(directory)
        self.task = task
        self.env = SandboxedEnvironment(
            loader=jinja2.FileSystemLoader(str(self.directory)),
            undefined=jinja2.StrictUndefined,
            autoescape=False,
            keep_trailing_newline=False,
            trim_blocks=True,
            lstrip_blocks=True,
        )
        self.hashes: dict[str, str] = {}
        self._templates: dict[str, jinja2.Template] = {}

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
        try:
            context = template.new_context(variables)
            text = "".join(template.blocks[block](context))
        except jinja2.UndefinedError as e:
            raise TripostError(f"{self.path(name)}: block '{block}': {e.message} "
                               f"(available: {', '.join(sorted(variables))})") from None
        except jinja2.sandbox.SecurityError as e:
            raise TripostError(f"{self.path(name)}: block '{block}': unsafe template operation: {e}") from None
        return text.strip()

    def render(self, name: str, **item) -> tuple[str, str]:
        """(system, user) text of template `name` for one item."""
        system = self._render_block(name, "system", {"task": self.task})
        user = self._render_block(name, "user", {"task": self.task, **item})
        return system, user
