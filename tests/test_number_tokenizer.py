"""init_model.tokenizer=numbers (and numbers_words): every integer in [-max_number, max_number] is
one token, the text round-trips exactly, offsets are character offsets, BOS is prepended and EOS
never appended, and a prompt trimmed for generation ends on a token boundary of the training text."""

from __future__ import annotations

import re

import pytest
from transformers import AutoTokenizer

from tripost import steps
from tripost.config import load_config
from tripost.errors import TripostError
from tripost.methods.tripost import FEEDBACK_PREFIX
from tripost.model_init import init_model, train_tokenizer
from tripost.tasks import get_task

OVERRIDES = [("task.name", "multistep_arithmetic"), ("task.max_train", 200), ("task.max_test", 40),
             ("init_model.vocab_size", 320), ("init_model.hidden_size", 64),
             ("init_model.intermediate_size", 128), ("init_model.num_hidden_layers", 1),
             ("init_model.num_attention_heads", 1), ("init_model.num_key_value_heads", 1),
             ("init_model.max_number", 999)]
NUMBER = re.compile(r"-?[0-9]+")


@pytest.fixture(scope="module", params=["numbers", "numbers_words"])
def cfg(request):
    return load_config(None, OVERRIDES + [("init_model.tokenizer", request.param)])


@pytest.fixture(scope="module")
def tok(cfg, tmp_path_factory):
    """Through init_model and AutoTokenizer, as every stage loads it."""
    return AutoTokenizer.from_pretrained(init_model(cfg.init_model, get_task(cfg.task), tmp_path_factory.mktemp("numbers_model")))


def pieces(tok, text: str) -> list[str]:
    """The text of each token (BOS: "")."""
    enc = tok(text, return_offsets_mapping=True)
    return [text[a:b] for a, b in enc["offset_mapping"]]


def digit_pieces(tok, text: str) -> list[str]:
    """The tokens that hold a digit, and lone "-" tokens."""
    return [p for p in pieces(tok, text) if p == "-" or re.search(r"[0-9]", p)]


def transcript(question: str, attempt: str, feedback: str, update: str | None = None) -> str:
    """The plain-text training transcript (as the trainer sees it) of one TriPosT turn."""
    from tripost.formats import prompt_format
    from tripost.methods.tripost import segments

    return "".join(seg.text for seg in segments(prompt_format(False), question, attempt, feedback, update, 1.0))


def test_texts_round_trip_exactly(tok, cfg):
    task = get_task(cfg.task)
    texts = []
    for ex in task.load("test"):  # seen and unseen (longer, deeper) questions
        gold = task.gold_rationale(ex)
        n = sum(1 for s in steps.parse_steps(gold) if s.label.isdigit())
        texts.append(transcript(ex.question, gold, steps.feedback_correct(n)))
        texts.append(transcript(
            ex.question, gold.replace(" = ", " = -1", 1),
            steps.feedback_wrong(1, "2", "(-7 + -189) = -186", "(-7 + -189) is not equal to -186"), gold))
    texts += [
        "(4) Then, the final equation is A * B = -505 * -17 = 8585.\n(Final response) So the answer is 8585.",
        "3 - -4 = 7, -999 - 999 = -1998, 1000 * -1000 = -1000000, 007 and -0 and --5 and x-3",
        "12345678901234567890 -12345678901234567890",
        "  leading spaces,\n\n\ttabs and -12 - -3 = -9 \n",
        "ünïcödé ✓ and 3−4 (a unicode minus), ١٢٣ (Arabic digits)",
        "",
    ]
    for text in texts:
        ids = tok(text)["input_ids"]
        assert ids[0] == tok.bos_token_id and tok.eos_token_id not in ids
        assert tok.decode(ids, skip_special_tokens=True) == text


def test_offsets_tile_the_text_and_bos_covers_nothing(tok):
    text = "Q: ((-7 + 6 * 2) * (3 - -5 - 1)) =\nA: (1) This equation can be written as \"A * B\"."
    enc = tok(text, return_offsets_mapping=True)
    offsets = enc["offset_mapping"]
    assert offsets[0] == (0, 0) and enc["input_ids"][0] == tok.bos_token_id
    assert offsets[1][0] == 0 and offsets[-1][1] == len(text)
    assert all(offsets[i][1] == offsets[i + 1][0] for i in range(1, len(offsets) - 1))


def test_numbers_in_range_are_single_tokens(tok):
    for n in (0, 7, -7, 12, -40, 100, 504, -505, 999, -999):
        for text in (f"= {n}.", f"({n} + 1)", f"3 - {n}", f"the answer is {n}.", f"A * B = {n} * 2"):
            assert str(n) in pieces(tok, text), (n, text)
    ids = {tok(text)["input_ids"][-2] for text in ("(-7 ", "= -7 ", "3 - -7 ", "is -7 ")}
    assert len(ids) == 1  # the same token wherever the number stands
    # A number token is the number alone; the space before it belongs to the token before it.
    text = "(2) Let's calculate A = (-7 + 6 * 2) = (-7 + 12) = 5."
    got = pieces(tok, text)
    assert digit_pieces(tok, text) == ["2", "-7", "6", "2", "-7", "12", "5"]
    assert all(got[i - 1].endswith((" ", "(")) for i, p in enumerate(got) if NUMBER.fullmatch(p) and i > 1)


def test_numbers_out_of_range_are_spelled_one_character_per_token(tok):
    assert digit_pieces(tok, "A = 8585.") == ["8", "5", "8", "5"]
    assert digit_pieces(tok, "A = -1000.") == ["-", "1", "0", "0", "0"]
    assert digit_pieces(tok, "007") == ["0", "0", "7"]  # not the number 7


@pytest.mark.parametrize("kind", ["numbers", "numbers_words", "digits"])
def test_a_trimmed_prompt_is_a_token_prefix_of_the_text(kind):
    """Generation cuts the prompt's trailing space (engine.generate_batch); the prompt's tokens
    must then be the first tokens of the training text, so the model continues as it was trained."""
    from tripost.model_init import tokenizer_corpus

    cfg = load_config(None, OVERRIDES)
    tok = train_tokenizer(tokenizer_corpus(get_task(cfg.task)), 640, kind, 999)
    task = get_task(cfg.task)
    for ex in task.load("test")[:10]:
        gold = task.gold_rationale(ex)
        wrong = gold.replace(" = ", " = 1", 1)
        feedback = steps.feedback_wrong(0, "1", "x", "y is not equal to -12")
        full = transcript(ex.question, wrong, feedback, gold)
        for prompt in (steps.prompt(ex.question), steps.prompt(ex.question) + wrong + FEEDBACK_PREFIX):
            trimmed = tok(prompt.rstrip(" "))["input_ids"]
            assert tok(full)["input_ids"][: len(trimmed)] == trimmed, (kind, prompt)


def test_vocabulary_size_and_padding(tok, cfg):
    numbers = 2 * cfg.init_model.max_number + 1
    assert len(tok) == cfg.init_model.vocab_size + numbers - 10  # the ten digits are byte tokens already
    assert tok.padding_side == "left"
    batch = tok(["(1 + 2) =", "((-4 - 5) * (7 + 8)) ="], padding=True)
    assert batch["input_ids"][0][0] == tok.pad_token_id
    assert len({tok.pad_token_id, tok.eos_token_id, tok.bos_token_id}) == 3


@pytest.mark.parametrize("kind", ["numbers", "numbers_words"])
def test_max_number_sets_the_range(kind):
    texts = ["(1) Let's calculate A = (-7 + 6 * 2) = (-7 + 12) = 5."] * 20
    tok = train_tokenizer(texts, 300, kind, max_number=9)
    assert digit_pieces(tok, "A = -9 + 12") == ["-9", "1", "2"]


def test_digits_tokenizer_is_still_there():
    texts = ["(1) Let's calculate A = (-7 + 6 * 2) = (-7 + 12) = 5."] * 20
    tok = train_tokenizer(texts, 300, "digits")
    assert digit_pieces(tok, "A = 12") == ["1", "2"] or digit_pieces(tok, "A = 12") == [" 1", "2"]
    with pytest.raises(TripostError, match="init_model.tokenizer"):
        train_tokenizer(texts, 300, "words")
