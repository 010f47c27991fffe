"""The record types and their JSONL files. Documented field by field, with the v1 mapping, in
docs/records.md.

    Example            one question of a task (id, question, gold answer, subtask, seen)
    Message            one thing said in an episode: whose voice, what kind, the text, who wrote it
    Trajectory         tripost.trajectory/2: one question's conversation, its status and result
    Segment            a piece of a training text with its loss weight and speaker
    TrainingExample    tripost.example/2: segments, and which model trains on them

Trajectories flow through the stages (attempts.jsonl from collect, trajectories.jsonl and
dropped.jsonl from edit, predictions.jsonl from evaluate); training examples go from process to
train. `id` is a content hash of (task, question, gold answer), so every stage can resume by id and
records of one question join across files.

Every field is always written, with one JSON type ("" for an absent string, never null except
`Message.correct` on messages that give no answer), so the JSONL files of all stages load together
with `datasets.load_dataset("json", data_files=[...])`.

Files written by tripost before the method seam (schema `/1`) still read: `read_trajectories` and
`read_examples` convert them (see `trajectory_from_v1`, `example_from_v1`).
"""

from __future__ import annotations

import dataclasses
import functools
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

from tripost import steps
from tripost.errors import TripostError, where
from tripost.io import content_id, jsonl_objects

TRAJECTORY_SCHEMA = "tripost.trajectory/2"
EXAMPLE_SCHEMA = "tripost.example/2"
TRAJECTORY_V1, EXAMPLE_V1 = "tripost.trajectory/1", "tripost.example/1"

STATUSES = ("kept", "dropped", "pending")


@dataclass(frozen=True)
class Example:
    """One question of a task. `meta` holds task-specific data (never written to records)."""

    id: str  # content_id(task, question, answer)
    task: str
    question: str
    answer: str  # the gold answer
    subtask: str = ""
    seen: bool = True
    meta: dict = field(default_factory=dict, compare=False, hash=False)


def make_example(task: str, question: str, answer: str, subtask: str = "", seen: bool = True,
                 **meta) -> Example:
    return Example(content_id(task, question, answer), task, question, answer, subtask, seen, meta)


@dataclass
class Message:
    """One thing said in an episode.

    speaker  whose voice it is: "learner", "partner", "gen0", "critic1", ... (a script's feedback
             that TriPosT trains the learner to write is the learner's voice)
    kind     "attempt" | "feedback" | "update" | "remark" | "answer"
    author   who wrote the text: "model:<name>", "gold", "script:<file>", "llm:<model>"
    round    the refinement step, discussion or debate round it belongs to
    answer   the answer it gives, extracted by the task ("" when it gives none)
    correct  the task's judgement of that answer (None on messages that give no answer)
    stance   SAIE remarks: "supportive" | "adversarial" ("" otherwise)
    truncated  the model ran out of max_new_tokens while writing it
    """

    speaker: str
    kind: str
    text: str
    author: str
    round: int = 0
    answer: str = ""
    correct: bool | None = None
    stance: str = ""
    truncated: bool = False


@dataclass
class Trajectory:
    """One question's episode: the conversation and what became of it.

    status   "kept" (finished; the next stage uses it), "dropped" (with drop_reason and detail) or
             "pending" (not finished: a transient failure; a rerun retries it)
    correct  the task's judgement of final_answer against the gold answer
    stop     why the episode ended (rollouts: the stop rule; TriPosT edit: where the walk of the
             model's turns stopped)
    calls    model calls (rollouts) or improvement calls (edit) it took
    """

    id: str
    method: str
    task: str
    question: str
    answer: str
    subtask: str = ""
    seen: bool = True
    messages: list[Message] = field(default_factory=list)
    status: str = "pending"
    correct: bool = False
    final_answer: str = ""
    drop_reason: str = ""
    detail: str = ""
    stop: str = ""
    calls: int = 0
    stage: str = ""
    round: int = 0
    schema: str = TRAJECTORY_SCHEMA

    @classmethod
    def of(cls, example: Example, method: str, **fields) -> "Trajectory":
        return cls(id=example.id, method=method, task=example.task, question=example.question,
                   answer=example.answer, subtask=example.subtask, seen=example.seen, **fields)

    def example(self) -> Example:
        return Example(self.id, self.task, self.question, self.answer, self.subtask, self.seen)

    def said_by(self, speaker: str) -> list[Message]:
        return [m for m in self.messages if m.speaker == speaker]


@dataclass
class Segment:
    text: str
    weight: float  # loss weight of the tokens that end in this text (0 = context only)
    speaker: str  # "user" for the question, else who speaks (see Message.speaker)


@dataclass
class TrainingExample:
    """One training text, cut into weighted segments. `model` is the model that trains on it
    ("learner", "gen0", "critic2", "base"). Plain text gets the tokenizer's BOS and an appended EOS
    (trained with the last segment's weight); `chat_template` text was rendered with the
    tokenizer's chat template and carries its own special tokens and end-of-turn text."""

    id: str  # content_id(model, text)
    method: str
    model: str
    kind: str  # tripost: improvement | terminal | gold; rationale SFT: rationale; ...
    segments: list[Segment]
    source_id: str  # the trajectory (or question) it came from
    task: str = ""
    subtask: str = ""
    chat_template: bool = False
    schema: str = EXAMPLE_SCHEMA

    @property
    def text(self) -> str:
        return "".join(s.text for s in self.segments)


def training_example(method: str, model: str, kind: str, segments: list[Segment], source: Example | Trajectory,
                     chat_template: bool = False) -> TrainingExample:
    text = "".join(s.text for s in segments)
    return TrainingExample(id=content_id(model, text), method=method, model=model, kind=kind, segments=segments,
                           source_id=source.id, task=source.task, subtask=source.subtask,
                           chat_template=chat_template)


# ----------------------------------------------------------------------------------------------
# Parsing, with type checks: a bad field is an error naming file:line and the field


_NESTED = {Trajectory: ("messages", Message), TrainingExample: ("segments", Segment)}


def _check(value, annotation, name: str, at: str):
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in typing.get_args(annotation):
            return value
        annotation = next(a for a in typing.get_args(annotation) if a is not type(None))
    if annotation is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    ok = {str: str, int: int, bool: bool, float: float}.get(annotation)
    if ok is not None and (not isinstance(value, ok) or (ok is int and isinstance(value, bool))):
        raise TripostError(f"{at}: field '{name}' must be {annotation.__name__}, got {value!r}"[:300])
    return value


@functools.cache
def _fields(cls) -> tuple[dict, list[str]]:
    """A record class's field types and required fields (resolving the type hints is slow enough
    to dominate reading a file of 100k short records, so once per class)."""
    required = [f.name for f in dataclasses.fields(cls)
                if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    return typing.get_type_hints(cls), required


def _build(cls, data: dict, at: str):
    if not isinstance(data, dict):
        raise TripostError(f"{at}: expected an object for {cls.__name__}, got {type(data).__name__}")
    hints, required = _fields(cls)
    unknown = set(data) - set(hints)
    if unknown:
        raise TripostError(f"{at}: unknown field(s) {sorted(unknown)} for {cls.__name__}")
    missing = [k for k in required if k not in data]
    if missing:
        raise TripostError(f"{at}: {cls.__name__} lacks field(s) {missing}")
    kwargs = {}
    for key, value in data.items():
        if cls in _NESTED and key == _NESTED[cls][0]:
            if not isinstance(value, list):
                raise TripostError(f"{at}: field '{key}' must be a list")
            kwargs[key] = [_build(_NESTED[cls][1], v, f"{at}: {key}[{i}]") for i, v in enumerate(value)]
        else:
            kwargs[key] = _check(value, hints[key], key, at)
    return cls(**kwargs)


def trajectory_from_v1(data: dict, at: str) -> Trajectory:
    """A tripost.trajectory/1 record as v2. Turn i becomes an attempt (i = 0) or update message
    plus a feedback message, all in the learner's voice; the three-way `outcome` becomes status +
    correct; provenance keeps only what v2 has fields for."""
    try:
        prov = data.get("provenance") or {}
        if not isinstance(prov, dict):
            raise TypeError("provenance is not an object")
        for key in ("id", "task", "question", "answer"):
            _check(data.get(key), str, key, at)
        messages = []
        for i, turn in enumerate(data.get("turns") or []):
            if not isinstance(turn, dict):
                raise TypeError(f"turns[{i}] is not an object")
            _check(turn.get("attempt"), str, f"turns[{i}].attempt", at)
            _check(turn.get("feedback"), str | None, f"turns[{i}].feedback", at)
            messages.append(Message("learner", "attempt" if i == 0 else "update", turn["attempt"],
                                    _author_v1(turn.get("attempt_by")), round=i))
            if turn.get("feedback") is not None:
                messages.append(Message("learner", "feedback", turn["feedback"],
                                        _author_v1(turn.get("feedback_by")), round=i))
        finals = [m for m in messages if m.kind in ("attempt", "update")]
        final_answer = steps.extract_final_answer(finals[-1].text) or "" if finals else ""
        outcome = data.get("outcome", "pending")
        status = {"dropped": "dropped", "pending": "pending"}.get(outcome, "kept")
        stage = str(prov.get("stage", ""))
        return Trajectory(
            id=str(data["id"]), method="tripost", task=str(data["task"]), question=str(data["question"]),
            answer=str(data["answer"]), subtask=str(data.get("subtask", "")), seen=bool(data.get("seen", True)),
            messages=messages, status=status, correct=outcome in ("correct", "improved"), final_answer=final_answer,
            drop_reason=str(data.get("drop_reason") or ""), detail=str(prov.get("drop_detail") or ""),
            stop=str(prov.get("edit_start") if stage == "edit" else prov.get("stop") or ""),
            calls=int(prov.get("improvements") if stage == "edit" else prov.get("generate_calls") or 0),
            stage=stage, round=int(prov.get("round") or 0))
    except (KeyError, TypeError, ValueError) as e:
        raise TripostError(f"{at}: not a valid tripost.trajectory/1 record ({e})") from None


def _author_v1(by) -> str:
    return "model:learner" if by in (None, "model") else str(by)


# v1 examples stored roles; their weights came from the train config (train.w, default 1.5).
V1_ROLE_WEIGHTS = {"prompt": 0.0, "attempt": 1.0, "feedback": 1.5, "improvement": 1.5}


def example_from_v1(data: dict, at: str, role_weights: dict | None = None) -> TrainingExample:
    """A tripost.example/1 record as v2: each span becomes a segment with the weight its role had
    (`role_weights`, default V1_ROLE_WEIGHTS), the prompt in the user's voice."""
    weights = role_weights or V1_ROLE_WEIGHTS
    try:
        text = data["text"]
        segments = [Segment(text[s["start"]:s["end"]], weights[s["role"]], "user" if s["role"] == "prompt" else "learner")
                    for s in data["spans"]]
        return TrainingExample(id=str(data["id"]), method="tripost", model="learner", kind=str(data["kind"]),
                               segments=segments, source_id=str(data["source_id"]), task=str(data.get("task", "")),
                               subtask=str(data.get("subtask", "")))
    except (KeyError, TypeError) as e:
        raise TripostError(f"{at}: not a valid tripost.example/1 record ({e})") from None


def parse_record(data: dict, path, line: int) -> Trajectory | TrainingExample:
    """A record of either type from its JSON object, by its schema field (v1 converted)."""
    at = where(path, line)
    schema = data.get("schema")
    if schema == TRAJECTORY_SCHEMA:
        traj = _build(Trajectory, data, at)
        if traj.status not in STATUSES:
            raise TripostError(f"{at}: field 'status' must be one of {', '.join(STATUSES)}, got {traj.status!r}")
        return traj
    if schema == EXAMPLE_SCHEMA:
        return _build(TrainingExample, data, at)
    if schema == TRAJECTORY_V1:
        return trajectory_from_v1(data, at)
    if schema == EXAMPLE_V1:
        return example_from_v1(data, at)
    raise TripostError(f"{at}: unknown record schema {schema!r} (expected {TRAJECTORY_SCHEMA} or {EXAMPLE_SCHEMA})")


def read_records(path, cls=None) -> list:
    """Every record of a tripost JSONL file (strict: a torn or bad line is an error), optionally
    requiring one type."""
    out = []
    for line, data in jsonl_objects(path):
        record = parse_record(data, path, line)
        if cls is not None and not isinstance(record, cls):
            raise TripostError(f"{where(path, line)}: expected a {cls.__name__} record, got {type(record).__name__}")
        out.append(record)
    return out


def read_trajectories(path) -> list[Trajectory]:
    return read_records(path, Trajectory)


def read_examples(path) -> list[TrainingExample]:
    return read_records(path, TrainingExample)


def examples_file(directory: Path, model: str) -> Path:
    """Where process writes (and train reads) the examples a model trains on."""
    return Path(directory) / f"{model}.jsonl"
