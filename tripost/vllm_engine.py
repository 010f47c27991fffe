"""Generation with vLLM (offline `LLM.generate`), as a drop-in for `engine.generate_batch`.

vLLM is not a tripost dependency: it pins its own transformers and torch, so it lives in a
separate virtual environment (docs/vllm_notes.md has the install commands and caveats). This
module imports vllm only when an engine is built, so importing it costs nothing elsewhere.

    # inside the vllm venv, from the repository root
    PYTHONPATH=. VLLM_CPU_KVCACHE_SPACE=1 python my_script.py

    from tripost.vllm_engine import VllmEngine

    if __name__ == "__main__":        # vLLM starts its engine in a spawned process: guard is required
        engine = VllmEngine("models/tiny", seed=0, max_model_len=1024)
        for text, truncated in engine.generate(["Q: (1 + 2) =\\nA: "], max_new_tokens=64):
            print(text, truncated)

`generate` returns what `engine.generate_batch` returns, per prompt: the new text and whether it
stopped at max_new_tokens (vLLM's finish_reason "length") rather than at EOS. Prompts are prepared
the same way too: a trailing space is cut off the prompt (the model writes it as part of its next
token) and removed from the output again, and the prompt is tokenized by the model's own Hugging
Face tokenizer and handed to vLLM as token ids (`TokensPrompt`), so vLLM adds no second BOS and
sees exactly the ids `generate_batch` would. The new ids are decoded by the same tokenizer
(skip_special_tokens), not by vLLM's detokenizer.

Every request gets its own `SamplingParams`: greedy is temperature 0; sampling uses temperature and
top_p, and `seeds[i]` as request i's own seed, so a request samples the same text whatever else is
in the batch. With `lora_dirs`, request i uses the PEFT adapter in `lora_dirs[i]` (None = the base
model); the engine must be built with `enable_lora=True` and a `max_lora_rank` at least the
adapters' rank.

Weights are loaded as `dtype` (float32 by default: vLLM otherwise downcasts float32 checkpoints to
bfloat16 on CPU, and greedy would no longer match Hugging Face's). The KV cache is
`kv_cache_gb` GiB (on CPU it is allocated up front; the default fits a small model's batches). The
environment variable VLLM_CPU_KVCACHE_SPACE (whole GiB), where set, overrides it.
"""

from __future__ import annotations

from pathlib import Path

from tripost.errors import TripostError
from tripost.engine import drop_prefix


class VllmEngine:
    """A vLLM `LLM` for one model directory, generating for lists of prompts."""

    def __init__(self, model_dir, *, seed: int = 0, max_model_len: int = 2048, enable_lora: bool = False,
                 max_lora_rank: int = 16, max_loras: int = 4, kv_cache_gb: float = 1.0, dtype: str = "float32",
                 enforce_eager: bool = True, max_num_seqs: int = 256):
        """`enforce_eager`: skip torch.compile (on CPU vLLM otherwise compiles the model with
        inductor at start-up: minutes for a large model on 2 cores). `max_num_seqs`: requests
        decoded together in one step."""
        try:
            from vllm import LLM
        except ImportError as e:
            raise TripostError(f"vllm is not importable ({e}); it lives in its own venv, see docs/vllm_notes.md") from None
        from transformers import AutoTokenizer

        path = Path(model_dir).expanduser()
        if not (path / "config.json").is_file():
            raise TripostError(f"{path}: not a Hugging Face model directory (no config.json)")
        self.model_dir = str(path)
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.enable_lora = enable_lora
        self._lora_ids: dict[str, int] = {}
        kwargs = dict(enable_lora=True, max_lora_rank=max_lora_rank, max_loras=max_loras) if enable_lora else {}
        self.llm = LLM(model=self.model_dir, tokenizer=self.model_dir, seed=seed, max_model_len=max_model_len,
                       dtype=dtype, enforce_eager=enforce_eager, max_num_seqs=max_num_seqs,
                       kv_cache_memory_bytes=int(kv_cache_gb * 2**30), **kwargs)

    def generate(self, prompts: list[str], max_new_tokens: int, do_sample: bool = False, temperature: float = 1.0,
                 top_p: float = 1.0, seeds: list[int] | None = None,
                 lora_dirs: list[str | None] | None = None, add_special_tokens: bool = True) -> list[tuple[str, bool]]:
        """Continue each prompt; per prompt (new text, truncated), in the order given.
        `add_special_tokens`: False for prompts rendered with the chat template (they carry their own)."""
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        if seeds is not None and len(seeds) != len(prompts):
            raise TripostError(f"{len(seeds)} seeds for {len(prompts)} prompts")
        if lora_dirs is not None and len(lora_dirs) != len(prompts):
            raise TripostError(f"{len(lora_dirs)} lora_dirs for {len(prompts)} prompts")
        trimmed = [p.rstrip(" ") for p in prompts]  # as engine.generate_batch does, see there
        ids = self.tokenizer(trimmed, add_special_tokens=add_special_tokens)["input_ids"]
        requests = [TokensPrompt(prompt_token_ids=row) for row in ids]
        params = []
        for i in range(len(prompts)):
            sampling = dict(temperature=temperature, top_p=top_p) if do_sample else dict(temperature=0.0)
            seed = seeds[i] if seeds is not None and do_sample else None
            params.append(SamplingParams(max_tokens=max_new_tokens, seed=seed, detokenize=False, **sampling))
        loras = [self._lora_request(d) for d in lora_dirs] if lora_dirs is not None else None
        outputs = self.llm.generate(requests, params, lora_request=loras, use_tqdm=False)
        results = []
        for prompt, trim, out in zip(prompts, trimmed, outputs):
            completion = out.outputs[0]
            text = self.tokenizer.decode(list(completion.token_ids), skip_special_tokens=True)
            results.append((drop_prefix(text, prompt[len(trim):]), completion.finish_reason == "length"))
        return results

    def new_token_ids(self, prompt_ids: list[list[int]], max_new_tokens: int,
                      lora_dirs: list[str | None] | None = None) -> list[list[int]]:
        """Greedy new token ids for prompts given as token ids (for parity checks); EOS included
        where a request stopped on it."""
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        params = SamplingParams(max_tokens=max_new_tokens, temperature=0.0, detokenize=False)
        loras = [self._lora_request(d) for d in lora_dirs] if lora_dirs is not None else None
        outputs = self.llm.generate([TokensPrompt(prompt_token_ids=list(p)) for p in prompt_ids], params,
                                    lora_request=loras, use_tqdm=False)
        return [list(o.outputs[0].token_ids) for o in outputs]

    def _lora_request(self, lora_dir: str | None):
        """A LoRARequest for a PEFT adapter directory (one integer id per distinct directory)."""
        from vllm.lora.request import LoRARequest

        if lora_dir is None:
            return None
        if not self.enable_lora:
            raise TripostError("lora_dirs given, but the engine was built without enable_lora=True")
        key = str(Path(lora_dir).expanduser().resolve())
        if not (Path(key) / "adapter_config.json").is_file():
            raise TripostError(f"{lora_dir}: not a PEFT adapter directory (no adapter_config.json)")
        lora_id = self._lora_ids.setdefault(key, len(self._lora_ids) + 1)
        return LoRARequest(lora_name=f"adapter_{lora_id}", lora_int_id=lora_id, lora_path=key)

