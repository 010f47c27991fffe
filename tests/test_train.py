"""Weighted SFT: token weights, loss normalisers, packing, DeepSpeed on 2 CPU ranks, kill + resume.

Training runs go through subprocesses (as the iterate loop runs them), so this pytest process never
initialises torch.distributed.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tripost import steps, train
from tripost.config import load_config
from tripost.errors import TripostError
from tripost.formats import prompt_format
from tripost.methods.tripost import segments
from tripost.records import make_example, training_example

ROOT = Path(__file__).resolve().parents[1]
PLAIN = prompt_format(False)


def _ex(question, attempt, feedback=None, update=None, kind="improvement", w=1.5, fmt=PLAIN):
    """A TriPosT training example as process builds it: question 0, attempt 1, feedback and update w."""
    return training_example("tripost", "learner", kind, segments(fmt, question, attempt, feedback, update, w),
                            make_example("t", question, ""), chat_template=fmt.chat_template)


def examples(w=1.5, fmt=PLAIN):
    """An improvement, a terminal and a question -> attempt example."""
    return (_ex("((1 + 2) * 3) =", "(1) Let's calculate (1 + 2) = 4.\n(Final response) So the answer is 12.",
                steps.feedback_wrong(0, "1", "(1 + 2) = 4", "(1 + 2) is not equal to 4"),
                "(1) Let's calculate (1 + 2) = 3.\n(Final response) So the answer is 9.", w=w, fmt=fmt),
            _ex("(4 - 6) =", "(1) Let's calculate (4 - 6) = -2.\n(Final response) So the answer is -2.",
                steps.feedback_correct(1), kind="terminal", w=w, fmt=fmt),
            _ex("(7 * 8) =", "(1) Let's calculate (7 * 8) = 56.\n(Final response) So the answer is 56.",
                kind="gold", w=w, fmt=fmt))


EX_A, EX_B, EX_C = examples()


@pytest.fixture(scope="module")
def tok(tiny_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(tiny_model_dir))


def _model(tiny_model_dir, attn="eager"):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    m = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir), dtype=torch.float32, attn_implementation=attn)
    return m.eval()


def _tc(**kw):
    return load_config(None, [(f"train.{k}", v) for k, v in kw.items()]).train


def _bounds(example):
    """(start, end, weight) of each segment in the example's text."""
    out, at = [], 0
    for seg in example.segments:
        out.append((at, at + len(seg.text), seg.weight))
        at += len(seg.text)
    return out


def test_token_weights_follow_segments_and_eos_is_trained(tok):
    assert [s.weight for s in EX_A.segments] == [0.0, 1.0, 1.5, 1.5]  # question, attempt, feedback, update
    ids, w = train.encode_example(EX_A, tok)
    enc = tok(EX_A.text, return_offsets_mapping=True)
    bounds = _bounds(EX_A)
    for t, (a, b) in enumerate(enc["offset_mapping"]):
        if a == b:
            assert w[t] == 0.0  # BOS
            continue
        weight = next(wt for start, end, wt in bounds if start <= b - 1 < end)  # the token's last char
        assert w[t] == weight
    assert ids[-1] == tok.eos_token_id and w[-1] == 1.5  # EOS: weight of the update segment
    assert {0.0, 1.0, 1.5} == set(w)
    # The first answer token (often the prompt's trailing space merged with "(") is trained.
    first_answer = next(t for t, (a, b) in enumerate(enc["offset_mapping"]) if b > bounds[0][1])
    assert w[first_answer] == 1.0
    # The question is never trained: train.mask_question is gone, and saying so is an error.
    with pytest.raises(TripostError, match="train.mask_question"):
        _tc(mask_question=False)


def test_chat_template_mode_maps_segments(tiny_model_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    tok.chat_template = ("{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}</s>\n{% endfor %}"
                         "{% if add_generation_prompt %}<|assistant|>\n{% endif %}")
    fmt = prompt_format(True, tok)
    chat_a = examples(fmt=fmt)[0]
    assert chat_a.chat_template
    text = chat_a.text
    assert text.startswith("<|user|>\n((1 + 2) * 3) =</s>\n<|assistant|>\n(1) Let's")
    # Every segment after the question holds exactly the text of the plain one; the chat model
    # also learns its end-of-turn text, with the weight of the update before it.
    assert [s.text for s in chat_a.segments[1:4]] == [s.text for s in EX_A.segments[1:]]
    assert chat_a.segments[-1].text == "</s>\n" and chat_a.segments[-1].weight == 1.5
    ids, w = train.encode_example(chat_a, tok)
    enc = tok(text, return_offsets_mapping=True, add_special_tokens=False)
    assert ids == enc["input_ids"]  # the template's own special tokens: no BOS added, no EOS appended
    bounds = _bounds(chat_a)
    for t, (a, b) in enumerate(enc["offset_mapping"]):
        if a == b:
            continue
        weight = next(wt for start, end, wt in bounds if start <= b - 1 < end)
        assert w[t] == weight
    assert w[-1] == 1.5 and 0.0 in w  # end-of-turn trained like the update; the question is not


def test_weights_survive_truncation_and_packing(tok):
    ex_a, ex_b, ex_c = examples(w=2.0)
    full_a = train.encode_example(ex_a, tok)
    cut = train.encode_example(ex_a, tok, max_length=20)
    assert cut == (full_a[0][:20], full_a[1][:20])
    full_b, full_c = train.encode_example(ex_b, tok), train.encode_example(ex_c, tok)
    rows = train.pack_rows([full_a, full_b, full_c], capacity=1000)
    assert len(rows) == 1
    batch = train.collate(rows, pad_id=tok.pad_token_id)
    expect = []
    for ids, w in rows[0].segments:
        expect += w[1:] + [0.0]  # a segment's last token has no target inside the segment
    n = len(expect)
    assert batch["weights"][0, :n].tolist() == expect
    assert batch["weights"][0, n:].sum() == 0  # padding
    assert batch["position_ids"][0, : len(rows[0].segments[0][0])].tolist() == list(range(len(rows[0].segments[0][0])))


def test_eos_trained_padding_not(tok):
    a, b = train.encode_example(EX_A, tok), train.encode_example(EX_C, tok)
    batch = train.collate([train.Row([a]), train.Row([b])], pad_id=tok.pad_token_id)
    nb = len(b[0])
    assert batch["targets"][1, nb - 2] == tok.eos_token_id and batch["weights"][1, nb - 2] == 1.0
    assert (batch["input_ids"][1, nb:] == tok.pad_token_id).all()
    assert (batch["weights"][1, nb - 1:] == 0).all() and (batch["targets"][1, nb - 1:] == -100).all()
    assert (batch["weights"][batch["targets"] == tok.pad_token_id] == 0).all()


@pytest.mark.parametrize("normalizer", ["mask", "weight"])
def test_weighted_loss_equals_hand_computation(tiny_model_dir, tok, normalizer):
    model = _model(tiny_model_dir)
    enc = [train.encode_example(e, tok) for e in (EX_A, EX_B)]
    rows = [train.Row([x]) for x in enc]
    batch = train.collate(rows, pad_id=tok.pad_token_id)
    with torch.no_grad():
        got = train.weighted_loss_sum(model, batch) / sum(train.row_norm(r, normalizer) for r in rows)
        num = den = 0.0
        for ids, w in enc:  # one example at a time, no padding, by hand
            logp = torch.log_softmax(model(torch.tensor([ids])).logits[0].double(), -1)
            for t in range(1, len(ids)):
                num += w[t] * -logp[t - 1, ids[t]].item()
                den += (w[t] > 0) if normalizer == "mask" else w[t]
    assert got.item() == pytest.approx(num / den, rel=1e-5)


@pytest.mark.parametrize("chunk", [7, 100000])
def test_target_only_logits_give_the_full_loss_and_gradient(tiny_model_dir, tok, chunk):
    """The trainer's loss (logits only at trained positions, `chunk` at a time: several chunks
    checkpointed, or one) has the loss and the gradient of the model's own full-logits forward."""
    model = _model(tiny_model_dir)
    batch = train.collate([train.Row([train.encode_example(e, tok)]) for e in (EX_A, EX_B, EX_C)],
                          pad_id=tok.pad_token_id)
    assert (batch["weights"] == 0).any() and (batch["weights"] > 1).any()  # context, padding, w > 1

    def loss_and_grad(c):
        model.zero_grad()
        loss = train.weighted_loss_sum(model, batch, c)
        loss.backward()
        return loss.item(), torch.cat([p.grad.flatten() for p in model.parameters()]).clone()

    (full, g_full), (part, g_part) = loss_and_grad(None), loss_and_grad(chunk)
    assert int((batch["weights"] != 0).sum()) > 7  # chunk=7 really splits
    assert part == pytest.approx(full, rel=1e-5)
    torch.testing.assert_close(g_part, g_full, rtol=1e-4, atol=1e-5)


def test_doubling_w_doubles_feedback_gradient_only(tiny_model_dir, tok):
    model = _model(tiny_model_dir)

    def grad(w, drop_feedback=False):
        model.zero_grad()
        enc = [train.encode_example(e, tok) for e in examples(w=w)[:2]]
        batch = train.collate([train.Row([x]) for x in enc], pad_id=tok.pad_token_id)
        if drop_feedback:  # only the first-attempt tokens (weight 1)
            batch["weights"] = torch.where(batch["weights"] == w, 0.0, batch["weights"])
        train.weighted_loss_sum(model, batch).backward()
        return torch.cat([p.grad.flatten() for p in model.parameters()]).clone()

    g_attempt = grad(1.5, drop_feedback=True)
    g_w, g_2w = grad(1.5), grad(3.0)
    feedback_w, feedback_2w = g_w - g_attempt, g_2w - g_attempt
    assert feedback_w.abs().max() > 1e-3
    torch.testing.assert_close(feedback_2w, 2 * feedback_w, rtol=1e-3, atol=1e-5)
    # the attempt tokens' part is the same in both (it is what is left after the feedback part)
    torch.testing.assert_close(g_2w - feedback_2w, g_w - feedback_w, rtol=1e-3, atol=1e-5)


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_packed_equals_unpacked(tiny_model_dir, tok, attn):
    model = _model(tiny_model_dir, attn)
    enc = [train.encode_example(e, tok) for e in (EX_A, EX_B, EX_C)]

    def per_example(batch, row_of_segment):
        ce = train.forward_losses(model, batch) * batch["weights"]
        return [ce[r][batch["segments"][r] == s].sum().item() for r, s in row_of_segment]

    with torch.no_grad():
        unpacked = per_example(train.collate([train.Row([x]) for x in enc], tok.pad_token_id),
                               [(0, 0), (1, 0), (2, 0)])
        packed_row = train.Row(list(enc))
        packed = per_example(train.collate([packed_row], tok.pad_token_id), [(0, 0), (0, 1), (0, 2)])
    for u, p in zip(unpacked, packed):
        assert p == pytest.approx(u, abs=1e-5, rel=1e-5)


def test_checkpoint_without_marker_is_ignored(tmp_path):
    root = tmp_path / "checkpoints"
    for name, complete in (("step_00000002", True), ("step_00000004", True), ("step_00000009", False)):
        (root / name).mkdir(parents=True)
        if complete:
            (root / name / train.MARKER).write_text("ok\n")
    (root / ".tmp_step_00000010").mkdir()
    assert train.latest_checkpoint(tmp_path) == root / "step_00000004"
    assert train.latest_checkpoint(tmp_path / "nothing") is None


# ---------------------------------------------------------------------------------------------
# Real training runs (subprocesses)


@pytest.fixture(scope="module")
def examples_file(tmp_path_factory, tiny_cfg, tiny_model_dir):
    from tripost.process import rationale_sft
    from tripost.tasks import get_task

    out = tmp_path_factory.mktemp("proc")
    rationale_sft(get_task(tiny_cfg.task), tiny_cfg.process, False, tiny_model_dir, out, "base")
    return out / "base.jsonl"


def _env():
    env = {k: v for k, v in os.environ.items() if k not in train.DIST_ENV}
    env["OMP_NUM_THREADS"] = "1"
    return env


def _cli(examples, model, out, *overrides):
    return [sys.executable, "-m", "tripost", "train", "--examples", str(examples), "--model", str(model),
            "--out", str(out), *overrides]


def _weights(model_dir):
    from safetensors.torch import load_file

    return load_file(str(Path(model_dir) / "model.safetensors"))


def test_zero2_two_ranks_over_gloo_loss_falls(tmp_path, examples_file, tiny_model_dir):
    out = tmp_path / "z2"
    cmd = _cli(examples_file, tiny_model_dir, out, "train.deepspeed_config=configs/deepspeed/zero2.json",
               "train.packing=false", "train.micro_batch_size=4", "train.max_steps=12", "train.learning_rate=0.003",
               "train.warmup_ratio=0", "train.lr_schedule=constant", "train.log_every_steps=1")
    port = str(train._free_port())
    procs = [subprocess.Popen(cmd, cwd=ROOT, env=dict(_env(), RANK=str(r), LOCAL_RANK=str(r), WORLD_SIZE="2",
                                                      MASTER_ADDR="127.0.0.1", MASTER_PORT=port),
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for r in range(2)]
    outs = [p.communicate(timeout=240)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), outs[0][-3000:] + outs[1][-3000:]
    log = [json.loads(x) for x in (out / "train_log.jsonl").read_text().splitlines()]
    stats = json.loads((out / "train_stats.json").read_text())
    assert stats["world_size"] == 2 and len(log) == 12
    assert sum(r["loss"] for r in log[-3:]) < sum(r["loss"] for r in log[:3])
    from transformers import AutoModelForCausalLM

    AutoModelForCausalLM.from_pretrained(str(out / "model"))
    # The normaliser spans the whole optimizer step: 2 ranks x 1 micro-batch must equal
    # 1 rank x 2 accumulated micro-batches (the same micro-batches, by the data order).
    one = tmp_path / "gas2"
    cmd1 = [c for c in cmd if c != "train.micro_batch_size=4"]
    cmd1[cmd1.index(str(out))] = str(one)
    cmd1 += ["train.micro_batch_size=4", "train.gradient_accumulation_steps=2"]
    p = subprocess.run(cmd1, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=240)
    assert p.returncode == 0, p.stderr[-3000:]
    a, b = _weights(out / "model"), _weights(one / "model")
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5)
    assert json.loads((one / "train_stats.json").read_text())["tokens_seen"] == stats["tokens_seen"]


def test_kill_resume_matches_uninterrupted(tmp_path, examples_file, tiny_model_dir, tiny_cfg):
    overrides = ["train.packing=false", "train.micro_batch_size=2", "train.max_steps=20",
                 "train.save_every_steps=4", "train.keep_checkpoints=2", "train.learning_rate=0.001"]
    # Uninterrupted, through the Python API the iterate loop uses (a child process).
    cfg = load_config(None, overrides + [f"task.name={tiny_cfg.task.name}"])
    ref = train.train(cfg.train, examples_file, tiny_model_dir, tmp_path / "ref")
    assert ref["steps"] == 20 and train.is_complete(tmp_path / "ref" / "model")

    out = tmp_path / "killed"
    proc = subprocess.Popen(_cli(examples_file, tiny_model_dir, out, *overrides), cwd=ROOT, env=_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 180
    while train.latest_checkpoint(out) is None and time.time() < deadline and proc.poll() is None:
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert train.latest_checkpoint(out) is not None
    assert not train.is_complete(out / "model"), "the run finished before the kill; make it longer"
    # A torn newer checkpoint (no marker) must be ignored on resume.
    (out / "checkpoints" / "step_00000019").mkdir()
    resumed = train.train(cfg.train, examples_file, tiny_model_dir, out)
    assert resumed["resumed_from_step"] > 0
    a, b = _weights(tmp_path / "ref" / "model"), _weights(out / "model")
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6)


def test_full_logits_loss_trains_like_the_chunked_one(tmp_path, examples_file, tiny_model_dir, tiny_cfg):
    """train.loss_chunk=null (the full vocabulary logits at once) is the same loss as the chunked
    default: the same weights after a few steps."""
    base = ["train.packing=false", "train.micro_batch_size=2", "train.max_steps=4", "train.learning_rate=0.003",
            f"task.name={tiny_cfg.task.name}", "train.launcher=subprocess"]
    full = train.train(load_config(None, base + ["train.loss_chunk=null"]).train, examples_file, tiny_model_dir,
                       tmp_path / "full")
    chunked = train.train(load_config(None, base + ["train.loss_chunk=16"]).train, examples_file, tiny_model_dir,
                          tmp_path / "chunked")
    assert full["steps"] == chunked["steps"] == 4
    a, b = _weights(tmp_path / "full/model"), _weights(tmp_path / "chunked/model")
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5)


def test_a_child_of_an_in_process_training_makes_its_own_world(tmp_path, examples_file, tiny_model_dir, tiny_cfg):
    """A process that trained in process keeps its world of one (its store holds MASTER_PORT); a
    `tripost train` it starts inherits those variables and must not take them for a launcher's."""
    overrides = ["train.packing=false", "train.micro_batch_size=2", "train.max_steps=1", f"task.name={tiny_cfg.task.name}"]
    train.train(load_config(None, overrides).train, examples_file, tiny_model_dir, tmp_path / "parent")
    assert os.environ[train.WORLD_OF_ONE].startswith(f"{os.getpid()}:")
    proc = subprocess.run(_cli(examples_file, tiny_model_dir, tmp_path / "child", *overrides), cwd=ROOT,
                          env=dict(os.environ, OMP_NUM_THREADS="1"), capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert train.is_complete(tmp_path / "child" / "model")
