"""Build a tiny, randomly initialised Llama model and a tokenizer trained on a task's own text.

There is no model hub in the demo setting, so `init-model` makes everything locally:

    tripost init-model --task multistep_arithmetic --out models/tiny init_model.hidden_size=128

1. Tokenizer: a byte-level BPE (the `tokenizers` library) trained on the task's training-split
   questions, its gold rationales (when the task has them), sample sentences of the feedback grammar
   and the transcript prefixes ("Q: ", "\\nA: ", "\\nFeedback: ", "\\nUpdated Answer: "). Digits are
   split one per token, so numbers are spelled digit by digit and arithmetic stays learnable.
   Byte-level BPE is lossless: decode(encode(text)) == text for any text, whitespace included, and
   `return_offsets_mapping=True` gives character offsets (training assigns weights through them).
   The tokenizer prepends <s> (BOS) to every encoded text and does not append </s> (EOS); training
   appends EOS itself where a sequence ends. Padding is on the left (for batched generation).
2. Model: a LlamaConfig/LlamaForCausalLM with the sizes in `init_model.*`, seeded.

The output is an ordinary Hugging Face directory (AutoTokenizer / AutoModelForCausalLM load it) with
the resolved config beside it (tripost_config.yaml).
"""

from __future__ import annotations

from pathlib import Path

from tripost import steps
from tripost.config import Config, InitModelConfig
from tripost.errors import TripostError
from tripost.methods.tripost import FEEDBACK_PREFIX, UPDATE_PREFIX, segments
from tripost.formats import prompt_format

BOS, EOS, PAD = "<s>", "</s>", "<pad>"


def tokenizer_corpus(task, rationales: dict[str, str] | None = None) -> list[str]:
    """The texts the tokenizer is trained on: what the model will read and write for this task.
    `rationales` (id -> text) are gold rationales from elsewhere than the task (a script, an LLM)."""
    examples = task.load("train")
    plain = prompt_format(False)
    texts = [steps.QUESTION_PREFIX, steps.ANSWER_PREFIX, FEEDBACK_PREFIX, UPDATE_PREFIX]
    for i, ex in enumerate(examples):
        rationale = (rationales or {}).get(ex.id) or (task.gold_rationale(ex) if task.has_gold_rationale else None)
        if rationale is None:
            # No scripted rationale: at least the step and final-answer format.
            rationale = f"(1) {ex.question.splitlines()[0][:80]}\n{steps.final_line(ex.answer)}"
        texts.append("".join(seg.text for seg in segments(plain, ex.question, rationale, None, None, 1.0)))
        # A few feedback sentences in the shared grammar, built from this rationale's own steps,
        # so the tokenizer learns the phrases the model will write as feedback.
        if i < 300:
            parsed = steps.parse_steps(rationale)
            n = sum(1 for s in parsed if s.label.isdigit())
            texts.append(FEEDBACK_PREFIX + steps.feedback_correct(n))
            for k, step in enumerate(parsed[:3]):
                part = step.text[:60]
                wrong = steps.feedback_wrong(k, step.label, part, f"{part} is not equal to {ex.answer}")
                texts.append(FEEDBACK_PREFIX + wrong + UPDATE_PREFIX)
    return texts


def train_tokenizer(texts: list[str], vocab_size: int):
    """Byte-level BPE with single-digit pre-tokenization, wrapped as a PreTrainedTokenizerFast."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    specials = [BOS, EOS, PAD]
    if vocab_size < 256 + len(specials) + 1:
        raise TripostError(f"config: 'init_model.vocab_size' must be > {256 + len(specials)} "
                           f"(the 256 byte tokens and {len(specials)} special tokens), got {vocab_size}")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        # One digit per piece (a leading space may stay with it: " 9" can become one token), so
        # numbers are spelled digit by digit and BPE never merges digits into opaque chunks.
        pre_tokenizers.Split(Regex(r" ?\d"), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer=trainer)
    bos_id = tok.token_to_id(BOS)
    # Prepend BOS to every encoded text (as Llama tokenizers do); offsets stay character offsets.
    tok.post_processor = processors.TemplateProcessing(single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B",
                                                       special_tokens=[(BOS, bos_id)])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=BOS, eos_token=EOS, pad_token=PAD, padding_side="left",
        # Never "clean up" spaces on decode: the text must round-trip exactly.
        clean_up_tokenization_spaces=False, model_max_length=1 << 20,
    )


def build_model(m: InitModelConfig, tokenizer):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    if m.hidden_size % m.num_attention_heads or m.num_attention_heads % m.num_key_value_heads:
        raise TripostError("config: 'init_model.hidden_size' must be divisible by num_attention_heads, "
                           "and num_attention_heads by num_key_value_heads")
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=m.hidden_size, intermediate_size=m.intermediate_size,
        num_hidden_layers=m.num_hidden_layers, num_attention_heads=m.num_attention_heads,
        num_key_value_heads=m.num_key_value_heads, max_position_embeddings=m.max_position_embeddings,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=True,
    )
    torch.manual_seed(m.seed)
    model = LlamaForCausalLM(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.bos_token_id = tokenizer.bos_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    return model


def init_model(m: InitModelConfig, task, out_dir, rationales: dict[str, str] | None = None) -> Path:
    """Write a tokenizer trained on `task`'s text (and `rationales`, see tokenizer_corpus) and a
    tiny Llama model of the `init_model` settings `m` to `out_dir`; return the directory."""
    import yaml

    from tripost import io
    from tripost.config import to_dict

    out = Path(out_dir)
    tokenizer = train_tokenizer(tokenizer_corpus(task, rationales), m.vocab_size)
    model = build_model(m, tokenizer)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(out)
    model.save_pretrained(out)
    io.write_text(out / "tripost_config.yaml",
                  yaml.safe_dump({"task": to_dict(task.cfg), "init_model": to_dict(m)}, sort_keys=False))
    return out


def main(args, cfg: Config) -> int:
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    from tripost.tasks import get_task

    out = init_model(cfg.init_model, get_task(cfg.task), args.out)
    model = AutoModelForCausalLM.from_pretrained(out)
    m = cfg.init_model
    n_params = sum(p.numel() for p in model.parameters())
    print(f"wrote {out}: Llama, {m.num_hidden_layers} layers x {m.hidden_size} hidden, "
          f"vocab {model.config.vocab_size}, {n_params / 1e6:.2f}M parameters (task {cfg.task.name})")
    return 0
