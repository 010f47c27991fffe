"""init-model: the tokenizer round-trips text exactly and the model round-trips through from_pretrained."""

from __future__ import annotations

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from tripost import steps
from tripost.config import load_config
from tripost.formats import prompt_format
from tripost.methods.tripost import segments
from tripost.model_init import init_model
from tripost.tasks import get_task


def test_model_roundtrips_through_from_pretrained(tiny_model_dir, tiny_cfg):
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    assert model.config.hidden_size == 64 and model.config.num_hidden_layers == 2
    assert tok.padding_side == "left"
    assert tok.pad_token_id is not None and tok.eos_token_id is not None and tok.bos_token_id is not None
    assert len({tok.pad_token_id, tok.eos_token_id, tok.bos_token_id}) == 3
    batch = tok(["Q: (1 + 2) =\nA: ", "Q: ((-4 - 5) * (7 + 8)) =\nA: (1) This equation"], return_tensors="pt", padding=True)
    assert (batch["input_ids"][0, 0] == tok.pad_token_id)  # shorter prompt padded on the left
    # Same weights and config from a second build with the same seed -> same logits.
    again = init_model(tiny_cfg.init_model, get_task(tiny_cfg.task), tiny_model_dir.parent / "again")
    model2 = AutoModelForCausalLM.from_pretrained(again).eval()
    with torch.no_grad():
        a = model(**batch).logits
        b = model2(**batch).logits
    assert torch.allclose(a, b)
    assert (tiny_model_dir / "tripost_config.yaml").is_file()
    assert load_config(tiny_model_dir / "tripost_config.yaml").init_model.hidden_size == 64


def test_tokenizer_roundtrips_rationales_and_feedback(tiny_model_dir, tiny_cfg):
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    task = get_task(tiny_cfg.task)
    # Test questions include unseen (deeper, longer) subtasks the tokenizer was not trained on.
    plain = prompt_format(False)
    texts = ["".join(s.text for s in segments(plain, ex.question, task.gold_rationale(ex), None, None, 1.0))
             for ex in task.load("test")]
    texts += [
        steps.feedback_correct(4),
        steps.feedback_wrong(2, "3", "(-7 + -189) = -186", "(-7 + -189) is not equal to -186"),
        "  leading spaces,\n\n\ttabs and -12 - -3 = -9 \n",
        "Q: x\nA: (1) a\nFeedback: Step (1) is correct. The final response is also correct.\nUpdated Answer: ",
        "ünïcödé ✓ and 12345678901234567890",
    ]
    for text in texts:
        ids = tok(text)["input_ids"]
        assert ids[0] == tok.bos_token_id
        assert tok.decode(ids, skip_special_tokens=True) == text


def test_digits_are_single_tokens_and_offsets_work(tiny_model_dir):
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    text = "Q: (-123 + 45) =\nA: "
    enc = tok(text, return_offsets_mapping=True)
    pieces = [text[s:e] for s, e in enc["offset_mapping"]]
    assert pieces[0] == ""  # BOS covers no characters
    for digit in "12345":
        assert digit in pieces
    # Offsets tile the text (no gaps, no overlaps), so char spans map onto tokens exactly.
    assert "".join(pieces) == text
    assert all(enc["offset_mapping"][i][1] == enc["offset_mapping"][i + 1][0]
               for i in range(1, len(pieces) - 1))
