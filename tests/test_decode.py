"""llama_cpu.LlamaDecoder, the batched decode loop collect/evaluate use for a small Llama on the CPU:
its greedy output equals Hugging Face `model.generate` token for token (left padding, rows that stop
at EOS and leave the batch, a cut at max_new_tokens), and generate_batch gives the same texts either way."""

from __future__ import annotations

import pytest
import torch

from tripost import steps
from tripost.config import GenerationConfig
from tripost.engine import _hf_generate, generate_batch, load_model
from tripost.llama_cpu import LlamaDecoder
from tripost.methods.tripost import FEEDBACK_PREFIX

# Prompts of different lengths, so the batch is left-padded.
QUESTIONS = ["((1 + 2) * 3) =", "((-7 + -189) - (4 * 5)) =", "(9 - 8) =", "((3 * -4) + (12 - -6) * (2 + 7)) ="]


@pytest.fixture(scope="module")
def loaded(tiny_model_dir):
    torch.set_num_threads(1)
    model, tokenizer = load_model(tiny_model_dir)
    # The untrained model writes one token over and over, which would make "same output" a weak
    # check. Random weights at a larger scale give varied text (and near-ties in the logits).
    rng = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.copy_(torch.randn(p.shape, generator=rng) * p.shape[1] ** -0.5)
    assert LlamaDecoder.for_model(model) is not None  # the fast path is the one under test
    return model, tokenizer


def _encode(tokenizer, prompts):
    return tokenizer([p.rstrip(" ") for p in prompts], return_tensors="pt", padding=True)


def _reference(model, enc, max_new, eos, pad):
    """`model.generate`'s greedy new tokens, padded to max_new with `pad`."""
    with torch.inference_mode():
        out = model.generate(**enc, max_new_tokens=max_new, do_sample=False, temperature=None, top_p=None,
                             top_k=None, pad_token_id=pad, eos_token_id=eos)
    new = out[:, enc["input_ids"].shape[1]:]
    return torch.nn.functional.pad(new, (0, max_new - new.shape[1]), value=pad)


def test_greedy_equals_generate_with_left_padding(loaded):
    model, tokenizer = loaded
    enc = _encode(tokenizer, [steps.prompt(q) for q in QUESTIONS])
    assert (enc["attention_mask"] == 0).any()  # some rows really are padded
    gen = GenerationConfig(max_new_tokens=40)
    with torch.inference_mode():
        mine = LlamaDecoder.for_model(model).generate(enc["input_ids"], enc["attention_mask"], gen,
                                                      tokenizer.eos_token_id, tokenizer.pad_token_id)
    ref = _reference(model, enc, 40, tokenizer.eos_token_id, tokenizer.pad_token_id)
    assert torch.equal(mine, ref)


def test_rows_that_stop_early_leave_the_batch_with_the_same_output(loaded):
    model, tokenizer = loaded
    enc = _encode(tokenizer, [steps.prompt(q) for q in QUESTIONS])
    pad = tokenizer.pad_token_id
    # The untrained model rarely writes its EOS; use as "EOS" a token it does write, at different
    # steps in different rows, so rows finish at different times and the batch shrinks.
    free = _reference(model, enc, 30, tokenizer.eos_token_id, pad)
    firsts = {}  # token -> the steps at which rows first write it
    for row in free.tolist():
        for tok in set(row):
            firsts.setdefault(tok, set()).add(row.index(tok))
    stop = max(sorted(firsts), key=lambda tok: len(firsts[tok]))
    ref = _reference(model, enc, 30, stop, pad)
    stopped = [(row == stop).nonzero()[0, 0].item() for row in ref if (row == stop).any()]
    assert len(set(stopped)) >= 2  # at least two rows stop, at different steps
    with torch.inference_mode():
        mine = LlamaDecoder.for_model(model).generate(enc["input_ids"], enc["attention_mask"],
                                                      GenerationConfig(max_new_tokens=30), stop, pad)
    assert torch.equal(mine, ref)


def test_generate_batch_texts_and_cuts_match_generate(loaded):
    model, tokenizer = loaded
    prompts = [steps.prompt(q) for q in QUESTIONS] + [steps.prompt(QUESTIONS[0]) + "(1) Let's" + FEEDBACK_PREFIX]
    gen = GenerationConfig(max_new_tokens=24)
    fast = generate_batch(model, tokenizer, prompts, gen)
    with torch.inference_mode():
        new = _hf_generate(model, tokenizer, _encode(tokenizer, prompts), gen, static_cache=True)
    texts = tokenizer.batch_decode(new, skip_special_tokens=True)
    assert [t for t, _ in fast] == [t[1:] if t.startswith(" ") else t.lstrip(" ") for t in texts]
    assert len(set(texts)) == len(texts)
    assert [cut for _, cut in fast] == [tokenizer.eos_token_id not in row.tolist() for row in new]


def test_sampling_with_tiny_top_p_is_greedy_and_min_new_tokens_holds(loaded):
    model, tokenizer = loaded
    enc = _encode(tokenizer, [steps.prompt(q) for q in QUESTIONS])
    decoder = LlamaDecoder.for_model(model)
    greedy = GenerationConfig(max_new_tokens=16)
    # top_p this small keeps only the most likely token, so sampling must give the greedy tokens.
    sampled = GenerationConfig(max_new_tokens=16, do_sample=True, temperature=0.7, top_p=1e-6)
    with torch.inference_mode():
        g = decoder.generate(enc["input_ids"], enc["attention_mask"], greedy, tokenizer.eos_token_id,
                             tokenizer.pad_token_id)
        s = decoder.generate(enc["input_ids"], enc["attention_mask"], sampled, tokenizer.eos_token_id,
                             tokenizer.pad_token_id)
        torch.manual_seed(0)
        free = decoder.generate(enc["input_ids"], enc["attention_mask"],
                                GenerationConfig(max_new_tokens=16, do_sample=True, temperature=5.0),
                                tokenizer.eos_token_id, tokenizer.pad_token_id)
    assert torch.equal(g, s)
    assert not torch.equal(free, g)  # real sampling does wander off the greedy path
    assert ((free >= 0) & (free < model.config.vocab_size)).all()


def test_grouped_query_attention_and_padding_equal_generate():
    """A Llama with fewer key/value heads than query heads (what init_model.num_key_value_heads
    allows), on random token ids with left padding."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=97, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                         initializer_range=0.2, bos_token_id=0, eos_token_id=1, pad_token_id=2)
    model = LlamaForCausalLM(config).eval()
    assert LlamaDecoder.supports(model)
    ids = torch.randint(3, 97, (3, 9))
    mask = torch.ones_like(ids)
    mask[0, :4], mask[1, :1] = 0, 0  # left padding of different lengths
    ids[mask == 0] = 2
    with torch.inference_mode():
        mine = LlamaDecoder.for_model(model).generate(ids, mask, GenerationConfig(max_new_tokens=20), 1, 2)
    ref = _reference(model, {"input_ids": ids, "attention_mask": mask}, 20, 1, 2)
    assert len(set(map(tuple, ref.tolist()))) == 3  # varied output, not one repeated token
    assert torch.equal(mine, ref)
