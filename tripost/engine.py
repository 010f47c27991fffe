"""Who answers, and the one driver that runs many episodes at once.

An *episode* is a plain generator for one question. It yields a list of `Request`s (who should
answer, what kind of answer, the prompt or the expert's arguments), is sent back one `Reply` per
request, and finally returns its record (a Trajectory):

    def episode(example):
        (reply,) = yield [Request("learner", "generate", prompt=steps.prompt(example.question))]
        return Trajectory.of(example, ...)

`drive` advances many episodes in lock-step. At each level it groups the open requests by who
answers them and hands each answerer its requests in batches: a local model (`ModelAnswerer`:
prompts sorted by token length and cut into `batch_size` rows, so a batch pads little) or an
expert (`ExpertAnswerer`: all of them in one many-at-once call, which the expert runs in parallel
worker processes or concurrent API requests). Episodes whose requests are all answered advance at
once; finished records are yielded as soon as each batch finishes, so a stage can append and flush
them (a kill loses at most the batch in flight). The same loop runs collect, evaluate and edit, for
every method (tripost/rollout.py is the resumable stage around it).

Models load with `load_model`; a small Llama model on the CPU is decoded by tripost/llama_cpu.py
(same greedy tokens as `model.generate`, faster), any other model by `model.generate`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Generator, Iterator

from tripost.config import GenerationConfig
from tripost.errors import TripostError
from tripost.experts import Expert, Reply


@dataclass
class Request:
    """One thing an episode needs answered.

    to      who answers: a model of the stage ("learner", "gen0") or an expert ("feedback",
            "improvement", "partner")
    kind    "generate" for a model; for an expert: "feedback" | "improve" | "remark" | "rationale"
    prompt  models: the text to continue
    args    experts: the arguments of the call, e.g. (example, attempt) for feedback
    seed    models, when sampling: the request's own random stream, so what it samples does not
            depend on the other requests of its batch (a resumed run samples what an uninterrupted
            one does); episodes derive it from the question and the call
    """

    to: str
    kind: str
    prompt: str = ""
    args: tuple = ()
    seed: int = 0  # sampling: this request's own random stream (with the generation seed)


Episode = Generator[list[Request], list[Reply], object]


# ----------------------------------------------------------------------------------------------
# Models


def check_model_dir(model_dir) -> Path:
    """The path of a Hugging Face model directory, or a TripostError naming it."""
    if model_dir is None:
        raise TripostError("no model given: pass --model DIR (config key 'model')")
    path = Path(model_dir).expanduser()
    if not path.is_dir():
        raise TripostError(f"{path}: model directory not found")
    if not (path / "config.json").is_file():
        raise TripostError(f"{path}: not a Hugging Face model directory (no config.json)")
    return path


def load_model(model_dir):
    """(model, tokenizer) from a Hugging Face directory, in eval mode, on the GPU if there is one.
    The tokenizer pads on the left, as batched generation needs."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    from tripost.llama_cpu import is_small_cpu_model

    path = check_model_dir(model_dir)
    hf_logging.disable_progress_bar()  # our own bar counts questions; keep stderr readable
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
        model = AutoModelForCausalLM.from_pretrained(path)
    except (OSError, ValueError) as e:
        raise TripostError(f"{path}: cannot load the model or tokenizer: {e}") from None
    tokenizer.padding_side = "left"
    if tokenizer.pad_token_id is None:  # e.g. a Llama tokenizer without a pad token
        tokenizer.pad_token = tokenizer.eos_token
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = model.to(device).eval()
    if is_small_cpu_model(model):
        # For one new token against a short cache, plain matmul attention beat the CPU SDPA kernel
        # (about 40% of a batch-32 decoding step) in our measurements. Same results.
        model.set_attn_implementation("eager")
    return model, tokenizer


def generate_batch(model, tokenizer, prompts: list[str], gen: GenerationConfig, static_cache: bool = True,
                   chat_template: bool = False, seeds: list[int] | None = None) -> list[tuple[str, bool]]:
    """Continue each prompt (one padded batch, KV cache, stops at EOS). Returns, per prompt, the new
    text and whether it was cut off at max_new_tokens (no EOS). `static_cache`: let `generate` use a
    preallocated KV cache (faster on CPU; not every architecture has one). `chat_template`: the
    prompts were rendered with it and carry their own special tokens (no BOS is added). `seeds`: one
    per prompt when sampling (our decode loop samples each row from its own stream; `generate`
    cannot, so it is seeded once per batch from the first)."""
    import torch

    from tripost.llama_cpu import LlamaDecoder

    # Prompts end in a space ("A: ", "Feedback: "), but in training text that space is the start of
    # the next token (" (", " Step"): a prompt ending in a lone space token is something the model
    # never saw. Cut it off and let the model write it; it is removed from the output again below.
    trimmed = [p.rstrip(" ") for p in prompts]
    enc = tokenizer(trimmed, return_tensors="pt", padding=True, add_special_tokens=not chat_template).to(model.device)
    with torch.inference_mode():
        decoder = LlamaDecoder.for_model(model)
        if decoder is not None:
            new = decoder.generate(enc["input_ids"], enc["attention_mask"], gen, tokenizer.eos_token_id,
                                   tokenizer.pad_token_id, seeds)
        else:
            if gen.do_sample and seeds:
                torch.manual_seed(seeds[0])
            new = _hf_generate(model, tokenizer, enc, gen, static_cache)
    texts = tokenizer.batch_decode(new, skip_special_tokens=True)
    texts = [_drop_prefix(t, p[len(tp):]) for t, p, tp in zip(texts, prompts, trimmed)]
    cut = [new.shape[1] >= gen.max_new_tokens and tokenizer.eos_token_id not in row.tolist() for row in new]
    return list(zip(texts, cut))


def _hf_generate(model, tokenizer, enc, gen: GenerationConfig, static_cache: bool):
    """The new tokens of `model.generate` on the padded batch `enc`."""
    kwargs = dict(max_new_tokens=gen.max_new_tokens, use_cache=True, pad_token_id=tokenizer.pad_token_id,
                  eos_token_id=tokenizer.eos_token_id, do_sample=gen.do_sample)
    if gen.do_sample:
        kwargs.update(temperature=gen.temperature, top_p=gen.top_p)
    else:  # greedy: unset sampling knobs a saved generation_config may carry, to avoid warnings
        kwargs.update(temperature=None, top_p=None, top_k=None)
    if static_cache and enc["input_ids"].shape[0] > 1:
        # A preallocated KV cache: the default cache grows by concatenation at every step, which
        # cost half the time of a batch-32 generation on CPU in our measurements. Same tokens.
        kwargs["cache_implementation"] = "static"
    out = model.generate(**enc, **kwargs)
    return out[:, enc["input_ids"].shape[1]:]


def _drop_prefix(text: str, prefix: str) -> str:
    return text[len(prefix):] if text.startswith(prefix) else text.lstrip(" ")


class ModelAnswerer:
    """A local model answering "generate" requests, in length-sorted batches of gen.batch_size."""

    def __init__(self, name: str, model_dir, gen: GenerationConfig, chat_template: bool = False):
        import torch

        from tripost.formats import prompt_format

        self.name, self.gen, self.chat_template = name, gen, chat_template
        self.model, self.tokenizer = load_model(model_dir)
        self.format = prompt_format(chat_template, self.tokenizer)  # how questions are put to it
        self.static_cache = True
        torch.manual_seed(gen.seed)

    def batches(self, requests: list[Request]) -> list[list[int]]:
        prompts = [r.prompt for r in requests]
        lengths = [len(ids) for ids in self.tokenizer(prompts, add_special_tokens=not self.chat_template)["input_ids"]]
        order = sorted(range(len(requests)), key=lambda i: lengths[i])
        size = self.gen.batch_size
        return [order[b:b + size] for b in range(0, len(order), size)]

    def answer(self, requests: list[Request]) -> list[Reply]:
        import torch

        from tripost.llama_cpu import is_small_cpu_model

        prompts = [r.prompt for r in requests]
        seeds = [self.gen.seed * 1_000_003 + r.seed for r in requests]
        threads = torch.get_num_threads()
        if is_small_cpu_model(self.model):
            # A small model's matrices are too small to split across threads; extra threads only
            # spin and, on a busy machine, made generation 10-20x slower in our measurements.
            torch.set_num_threads(1)
        try:
            try:
                out = generate_batch(self.model, self.tokenizer, prompts, self.gen, self.static_cache,
                                     self.chat_template, seeds)
            except (ValueError, NotImplementedError, TypeError):
                if not self.static_cache:
                    raise
                self.static_cache = False  # this architecture has no static cache
                out = generate_batch(self.model, self.tokenizer, prompts, self.gen, False, self.chat_template, seeds)
        finally:
            torch.set_num_threads(threads)
        return [Reply(text=text, truncated=cut, author=f"model:{self.name}") for text, cut in out]


# ----------------------------------------------------------------------------------------------
# Experts


class ExpertAnswerer:
    """An expert answering its kinds of requests, all of one kind in one many-at-once call."""

    def __init__(self, expert: Expert):
        self.expert = expert
        self.name = expert.name

    def batches(self, requests: list[Request]) -> list[list[int]]:
        return [list(range(len(requests)))]

    def answer(self, requests: list[Request]) -> list[Reply]:
        calls = {"feedback": self.expert.feedback_many, "improve": self.expert.improve_many,
                 "remark": self.expert.remark_many}
        replies: list[Reply | None] = [None] * len(requests)
        for kind in dict.fromkeys(r.kind for r in requests):
            if kind not in calls:
                raise TripostError(f"expert {self.name} cannot answer a {kind!r} request")
            idx = [i for i, r in enumerate(requests) if r.kind == kind]
            out = calls[kind]([requests[i].args for i in idx])
            if len(out) != len(idx):
                raise RuntimeError(f"{self.name}: {kind} returned {len(out)} replies for {len(idx)} requests")
            for i, reply in zip(idx, out):
                reply.author = self.name
                replies[i] = reply
        return replies


# ----------------------------------------------------------------------------------------------
# The driver


def drive(episodes: list[Episode], answerers: dict, window: int) -> Iterator[list]:
    """Run `episodes` in lock-step, `window` at a time; yield lists of finished records as soon as
    the batch that finished them is done."""
    for w in range(0, len(episodes), window):
        chunk = episodes[w:w + window]
        waiting: dict[int, tuple[list[Request], list]] = {}  # episode -> (its requests, their replies)
        asked: list[int] = []  # episodes with open requests, in the order they asked
        results: dict[int, object] = {}

        def advance(i: int, replies) -> bool:
            """Send the replies; True when the episode finished."""
            try:
                requests = chunk[i].send(replies)
            except StopIteration as stop:
                results[i] = stop.value
                return True
            if not requests:
                raise RuntimeError("an episode yielded no requests")
            waiting[i] = (requests, [None] * len(requests))
            asked.append(i)
            return False

        for i in range(len(chunk)):
            advance(i, None)
        while waiting:
            level, asked = asked, []
            groups: dict[str, list[tuple[int, int]]] = {}
            for i in level:
                for s, req in enumerate(waiting[i][0]):
                    groups.setdefault(req.to, []).append((i, s))
            for name, slots in groups.items():
                if name not in answerers:
                    raise TripostError(f"no one answers requests to {name!r} here (have: {', '.join(answerers)})")
                answerer = answerers[name]
                requests = [waiting[i][0][s] for i, s in slots]
                for batch in answerer.batches(requests):
                    replies = answerer.answer([requests[b] for b in batch])
                    for b, reply in zip(batch, replies):
                        i, s = slots[b]
                        waiting[i][1][s] = reply
                    finished = []
                    for b in batch:
                        i = slots[b][0]
                        if i in waiting and all(r is not None for r in waiting[i][1]):
                            if advance(i, waiting.pop(i)[1]):
                                finished.append(results[i])
                    if finished:
                        yield finished
