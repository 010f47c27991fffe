"""The `tripost` command: one subcommand per pipeline stage.

    tripost iterate --rounds 3                      # the built-in demo, CPU only, no API key
    tripost init-model --task multistep_arithmetic --out models/tiny
    tripost collect  --model DIR --out attempts.jsonl
    tripost edit     --attempts attempts.jsonl --out edit/
    tripost process  --trajectories edit/trajectories.jsonl --tokenizer DIR --out process/
    tripost train    --examples process/learner.jsonl --model DIR --out model/
    tripost evaluate --model DIR --out eval/
    tripost inspect  FILE.jsonl [--id ID] [--tokens]
    tripost report   runs/demo

Every subcommand takes `--config FILE.yaml` and trailing `key.sub=value` overrides (see
tripost/config.py); flags such as `--task` are shortcuts for config keys. Stage modules are
imported only when their command runs, so `--help` is instant.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from tripost.config import METHOD_NAMES
from tripost.errors import TripostError

EPILOG = "Overrides: trailing key.sub=value pairs, e.g. collect.batch_size=64 task.name=word_sorting."


def _common(p: argparse.ArgumentParser, task: bool = True) -> None:
    p.add_argument("--config", metavar="FILE", help="YAML config (sections: task, collect, edit, ...)")
    if task:
        p.add_argument("--task", metavar="NAME", help="task (config task.name): multistep_arithmetic, "
                       "word_sorting, date_understanding, logical_deduction, jsonl, or your task file my_task.py")
        p.add_argument("--data-dir", metavar="DIR", help="task data directory (config task.data_dir)")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides")
    p.epilog = EPILOG


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tripost",
        description="Teach a small language model to improve its own answers (TriPosT).",
        epilog="Run `tripost COMMAND --help` for a command's options.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def add(name, module, help_text, description=None):
        p = sub.add_parser(name, help=help_text, description=description or help_text,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        p.set_defaults(module=module)
        return p

    p = add("init-model", "model_init", "build a tiny Llama model and a tokenizer trained on a task's text",
            "Train a BPE tokenizer on the task's questions and gold rationales and write a small, randomly "
            "initialised LlamaConfig model: a normal Hugging Face directory (config init_model.*).")
    p.add_argument("--out", required=True, metavar="DIR", help="output model directory")
    _common(p)

    p = add("collect", "collect", "let the model answer a split (attempts JSONL, resumable)",
            "Batched generation over a task split. Once the model has been trained on TriPosT data it "
            "also critiques and updates its own answers (up to tripost.collect_max_calls calls). "
            "A rerun skips ids already in the output file.")
    p.add_argument("--model", metavar="DIR", help="Hugging Face model directory (config model)")
    p.add_argument("--split", default="train", choices=["train", "test"])
    p.add_argument("--out", required=True, metavar="FILE", help="attempts JSONL to write or resume")
    _common(p)

    p = add("evaluate", "evaluate", "test-time self-improvement: accuracy, SI frequency/contribution/harm",
            "The model answers, critiques its answer and updates it until it says the final response is "
            "correct, stops making progress, repeats itself, or uses tripost.evaluate_max_calls calls. "
            "Writes predictions.jsonl and metrics.json and prints a table.")
    p.add_argument("--model", metavar="DIR", help="Hugging Face model directory (config model)")
    p.add_argument("--split", default="test", choices=["train", "test"])
    p.add_argument("--out", required=True, metavar="DIR", help="output directory")
    _common(p)

    p = add("edit", "edit", "expert feedback + improvement: attempts -> trajectories",
            "Scripted (script:PATH.py) or LLM (llm) feedback and improvement turn the model's attempts "
            "into improvement trajectories. Writes trajectories.jsonl, dropped.jsonl (with drop "
            "reasons) and summary.json. Resumable; API responses are cached on disk.")
    p.add_argument("--attempts", required=True, metavar="FILE", help="attempts JSONL from `tripost collect`")
    p.add_argument("--out", required=True, metavar="DIR", help="output directory")
    _common(p)

    p = add("process", "process", "trajectories -> weighted training examples, one file per model",
            "The method turns trajectories into weighted examples (TriPosT: improvement and terminal "
            "examples plus gold rationales, rebalanced to a share tripost.p of improvement examples); "
            "then duplicates and examples over process.max_tokens are dropped. Writes <model>.jsonl "
            "and stats.json.")
    p.add_argument("--trajectories", nargs="*", default=[], metavar="FILE", help="trajectories JSONL file(s)")
    p.add_argument("--tokenizer", metavar="DIR", help="tokenizer for the length limit (config model)")
    p.add_argument("--rationales", action="store_true",
                   help="rationale SFT data instead: question -> gold rationale (the warm-up data)")
    p.add_argument("--out", required=True, metavar="DIR", help="output directory")
    _common(p)

    p = add("train", "train", "weighted SFT with DeepSpeed",
            "Weighted SFT: every token is trained with the weight of the segment it ends in, as the "
            "method set it (TriPosT: attempt 1, feedback and update tripost.w, question 0). Runs "
            "single-process on its own or under the `deepspeed` launcher. Checkpoints are resumable "
            "Hugging Face directories.")
    p.add_argument("--examples", required=True, metavar="FILE", help="examples JSONL from `tripost process`")
    p.add_argument("--model", metavar="DIR", help="model to start from (config model)")
    p.add_argument("--out", required=True, metavar="DIR", help="output directory")
    _common(p, task=False)

    p = add("iterate", "iterate", "the whole loop of a method, resumable (built-in demo with no config)",
            "Per round: collect -> edit -> process -> train -> evaluate, under runs/<name>/round_<k>/, "
            "and an equal-compute rationale-SFT baseline beside it. The config key `method` picks the "
            "self-improvement method: " + ", ".join(METHOD_NAMES) + ". Rerunning resumes at the first "
            "unfinished stage. With no --config: the built-in CPU demo (configs/demo.yaml): TriPosT on "
            "multistep_arithmetic with scripted feedback and a tiny local model.")
    p.set_defaults(default_config="configs/demo.yaml")
    p.add_argument("--rounds", type=int, help="number of rounds (config iterate.rounds)")
    p.add_argument("--name", help="run name (config name)")
    p.add_argument("--force-from", metavar="STAGE", help="redo this stage and everything after it, "
                   "e.g. round_2/edit or train (in every round)")
    p.add_argument("--base-cache", metavar="DIR", help="build the warmed-up base model once in DIR and reuse it in "
                   "every run that asks for the same one (config iterate.base_cache; the demo's is "
                   "~/.cache/tripost/bases)")
    _common(p)

    p = add("inspect", "tools.inspect", "view attempts, trajectories, dropped, predictions or training examples",
            "A terminal view of a JSONL file written by tripost (any stage, any method, older versions too), "
            "with filters and summary statistics. Conversations are shown round by round; training "
            "examples segment by segment with their weights.")
    p.add_argument("file", metavar="FILE.jsonl")
    p.add_argument("--id", help="only this id (prefix); training examples also match their source trajectory")
    p.add_argument("--status", help="trajectories: only this status (kept, dropped, pending)")
    p.add_argument("--correct", choices=["yes", "no"], help="trajectories: only right (yes) or wrong (no) final answers")
    p.add_argument("--drop-reason", help="trajectories: only this drop reason")
    p.add_argument("--stop", help="trajectories: only this stop reason")
    p.add_argument("--kind", help="training examples: only this kind (e.g. improvement, terminal, gold)")
    p.add_argument("--model", help="training examples: only those this model trains on")
    p.add_argument("--subtask", help="only this subtask")
    p.add_argument("--limit", type=int, default=5, help="records to show (default 5; 0 = all)")
    p.add_argument("--summary", action="store_true", help="only the summary statistics")
    p.add_argument("--tokens", action="store_true",
                   help="training examples: every token coloured by the weight training gives it")
    p.add_argument("--tokenizer", metavar="DIR", help="tokenizer for --tokens (default: the model of the file's run)")

    p = add("export", "tools.export", "training examples -> files for TRL, LLaMA-Factory, OpenAI or HF datasets",
            "Writes the training examples of a file, a stage directory or a run directory in the format another "
            "trainer reads (see docs/export.md): trl (prompt/completion), trl-messages, llamafactory (per-message "
            "loss_weight), openai (chat fine-tuning, weight 0/1) as JSONL, or hf: a datasets directory "
            "(save_to_disk) with token ids and the exact per-token weights. Message formats keep a mask or "
            "one weight per message, not tripost's per-token weights; a warning says how many examples "
            "that changed.")
    p.add_argument("source", metavar="RUN_DIR_OR_FILE", help="a <model>.jsonl file, a process stage directory "
                   "or a run directory")
    p.add_argument("--format", required=True, metavar="FORMAT", help="trl, trl-messages, llamafactory, openai or hf")
    p.add_argument("--out", required=True, metavar="PATH", help="JSONL file to write (hf: a directory)")
    p.add_argument("--stage", metavar="STAGE", help="in a run directory: 'latest' (default: the newest finished "
                   "round_<k>/process), 'all' (every finished process and warmup_process stage) or one stage, "
                   "e.g. round_2/process")
    p.add_argument("--tokenizer", metavar="DIR", help="hf: tokenizer for the token ids (default: the run's model)")
    p.add_argument("--max-length", type=int, metavar="N",
                   help="hf: cut token ids as training does (default: the run's train.max_length)")

    p = add("report", "tools.report", "one self-contained HTML page for a run directory")
    p.add_argument("run_dir", metavar="RUN_DIR")
    p.add_argument("--out", metavar="FILE.html", help="default: RUN_DIR/report.html")
    return parser


# Flags that are shortcuts for config keys.
FLAG_KEYS = {"task": "task.name", "data_dir": "task.data_dir", "model": "model", "rounds": "iterate.rounds",
             "name": "name", "base_cache": "iterate.base_cache"}


def config_from_args(args):
    """The config a command runs with: --config (or the command's built-in default), the flags
    that are shortcuts for config keys, then the trailing overrides."""
    from tripost.config import load_config, resolve_path

    flags = vars(args)
    overrides = [(key, flags[flag]) for flag, key in FLAG_KEYS.items() if flags.get(flag) is not None]
    path = flags.get("config") or flags.get("default_config")
    return load_config(resolve_path(path) if path else None, overrides + list(args.overrides))


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        module = importlib.import_module(f"tripost.{args.module}")
        cfg = config_from_args(args) if "overrides" in vars(args) else None
        return module.main(args, cfg) or 0
    except TripostError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; rerun the same command to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
