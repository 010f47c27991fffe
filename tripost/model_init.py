"""Build a tiny, randomly initialised Llama model and a tokenizer trained on a task's own text.

There is no model hub in the demo setting, so `init-model` makes everything locally:

    tripost init-model --task multistep_arithmetic --out models/tiny init_model.hidden_size=128
    tripost init-model ... init_model.tokenizer=digits       # numbers spelled one digit per token

1. Tokenizer: a byte-level BPE (the `tokenizers` library) trained on the task's training-split
   questions, its gold rationales (when the task has them), sample sentences of the feedback grammar
   and the transcript prefixes ("Q: ", "\\nA: ", "\\nFeedback: ", "\\nUpdated Answer: "). How it
   cuts text, by `init_model.tokenizer`:
   * "numbers" (default): every integer from -max_number to max_number ("-7", "12", "-488") is ONE
     token, so the model reads and writes a number in one step; a larger number is spelled one
     character per token ("-", "1", "0", "0", "0"). The text between two numbers is one BPE piece
     (cut after each ":"), so BPE learns the task's phrases as tokens: ") Let's calculate A = (",
     " + ", ") = (", ".\\n(". A space before a number belongs to the token before it, so a number
     is the same token wherever it stands. A gold rationale is about half as many tokens as with
     "digits" (docs/warmup.md), so the same training time sees twice the questions. The BPE part
     needs room for the phrases: about 550 tokens for multistep_arithmetic (init_model.vocab_size
     640); the number tokens come on top of vocab_size.
   * "numbers_words": the same number tokens, the text split into words as GPT-2 splits it.
   * "digits": digits are split one per token (a leading space may stay with a digit: " 9") and
     text into words, so numbers are spelled digit by digit.
   Every variant keeps these properties, which training and generation rely on (tests in
   tests/test_model_init.py and tests/test_number_tokenizer.py): lossless, decode(encode(text)) ==
   text for any text, whitespace included; `return_offsets_mapping=True` gives character offsets
   (training assigns weights through them); a prompt with its last space cut ("...\\nA:", as
   generation does) encodes to a prefix of the training text's tokens. The tokenizer prepends <s>
   (BOS) to every encoded text and does not append </s> (EOS); training appends EOS itself where a
   sequence ends. Padding is on the left (for batched generation).
2. Model: a LlamaConfig/LlamaForCausalLM with the sizes in `init_model.*`, seeded.

The output is an ordinary Hugging Face directory (AutoTokenizer / AutoModelForCausalLM load it) with
the resolved config beside it (tripost_config.yaml).
"""

from __future__ import annotations

import json
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


# How the numbers tokenizers cut text into pieces before BPE (Oniguruma regexes, as `tokenizers`
# uses). A number is "-?[0-9]+"; a "-" right before a digit belongs to the number, any other "-"
# is text. A space before a number always stays with the text before it (" + ", " = ").
_NOT_NUMBER = r"(?:[^0-9:\-]|-(?![0-9]))"
TEXT_PIECES = {
    # "numbers": the text between two numbers is one piece, cut after each ":" so that a prompt
    # ending in "A:" or "Feedback:" (generation trims the prompt's last space) ends on a token
    # boundary of the training text. BPE then learns whole phrases (") Let's calculate A = (").
    "numbers": _NOT_NUMBER + r"+:?|:",
    # "numbers_words": text split as GPT-2 splits it: contractions, words, other numerals, runs
    # of punctuation, whitespace; the space before a number joins the word or punctuation before.
    "numbers_words": (r"'(?:s|t|re|ve|m|ll|d)| ?\p{L}+(?: (?=-?[0-9]))?| ?\p{N}+"
                      r"| ?(?:[^\s\p{L}\p{N}\-]|-(?![0-9]))+(?: (?=-?[0-9]))?|\s+(?!\S)|\s+"),
}
# Encoding: a whole number ("-488") is one piece: one token if it is in the vocabulary, else (no
# merge involves a digit) one token per character. BPE training: every digit, and a "-" before a
# digit, is a piece of its own, so BPE learns no merges with digits: its merges are all text.
_ENCODE_NUMBER, _TRAIN_NUMBER = r"-?[0-9]+|", r"-(?=[0-9])|[0-9]|"
TOKENIZERS = ("numbers", "numbers_words", "digits")


def _bpe_trainer(vocab_size: int, specials: list[str]):
    from tokenizers import pre_tokenizers, trainers

    if vocab_size < 256 + len(specials) + 1:
        raise TripostError(f"config: 'init_model.vocab_size' must be > {256 + len(specials)} "
                           f"(the 256 byte tokens and {len(specials)} special tokens), got {vocab_size}")
    return trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials,
                               initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)


def _wrap(tok):
    """BOS prepended, no EOS, left padding, no space clean-up: the PreTrainedTokenizerFast tripost uses."""
    from tokenizers import processors
    from transformers import PreTrainedTokenizerFast

    bos_id = tok.token_to_id(BOS)
    # Prepend BOS to every encoded text (as Llama tokenizers do); offsets stay character offsets.
    tok.post_processor = processors.TemplateProcessing(single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B",
                                                       special_tokens=[(BOS, bos_id)])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=BOS, eos_token=EOS, pad_token=PAD, padding_side="left",
        # Never "clean up" spaces on decode: the text must round-trip exactly.
        clean_up_tokenization_spaces=False, model_max_length=1 << 20,
    )


def train_tokenizer(texts: list[str], vocab_size: int, kind: str = "digits", max_number: int = 999):
    """The tokenizer `init_model.tokenizer` names (one of TOKENIZERS), trained on `texts`."""
    if kind not in TOKENIZERS:
        raise TripostError(f"config: 'init_model.tokenizer' must be one of {', '.join(TOKENIZERS)}, got {kind!r}")
    if kind != "digits":
        return train_number_tokenizer(texts, vocab_size, max_number, TEXT_PIECES[kind])
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        # One digit per piece (a leading space may stay with it: " 9" can become one token), so
        # numbers are spelled digit by digit and BPE never merges digits into opaque chunks.
        pre_tokenizers.Split(Regex(r" ?\d"), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
    ])
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(texts, trainer=_bpe_trainer(vocab_size, [BOS, EOS, PAD]))
    return _wrap(tok)


def train_number_tokenizer(texts: list[str], vocab_size: int, max_number: int, text_pieces: str):
    """Byte-level BPE of `vocab_size` tokens for the text (cut into pieces by the regex
    `text_pieces`), plus one token per integer in [-max_number, max_number]."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers

    if max_number < 0:
        raise TripostError(f"config: 'init_model.max_number' must be >= 0, got {max_number}")

    def pieces(pattern):
        # Split into pieces by the pattern, then map bytes to BPE symbols (no further splitting).
        return pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(pattern), behavior="isolated"),
                                        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pieces(_TRAIN_NUMBER + text_pieces)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(texts, trainer=_bpe_trainer(vocab_size, [BOS, EOS, PAD]))
    # The trained text vocabulary and merges, plus the number tokens. ignore_merges: a piece that
    # is a whole vocabulary entry ("-488") becomes that token; merges only build text tokens.
    # (Digits and "-" are printable ASCII, which byte-level BPE keeps as they are.)
    model = json.loads(tok.to_str())["model"]
    vocab = model["vocab"]
    for n in range(-max_number, max_number + 1):
        vocab.setdefault(str(n), len(vocab))
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model["merges"]]
    out = Tokenizer(models.BPE(vocab=vocab, merges=merges, ignore_merges=True))
    out.add_special_tokens([BOS, EOS, PAD])  # already in the vocabulary: same ids
    out.pre_tokenizer = pieces(_ENCODE_NUMBER + text_pieces)
    out.decoder = decoders.ByteLevel()
    return _wrap(out)


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
        pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=m.tie_word_embeddings,
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
    tokenizer = train_tokenizer(tokenizer_corpus(task, rationales), m.vocab_size, m.tokenizer, m.max_number)
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
