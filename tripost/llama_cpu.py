"""A lean batched decode loop for small Llama models on the CPU (what `tripost init-model` builds).

    decoder = LlamaDecoder.for_model(model)   # None where `model.generate` must run instead
    new_tokens = decoder.generate(input_ids, attention_mask, gen, eos_id, pad_id)

Why it exists: for a model this small a decoding step is mostly fixed cost (Python, small tensor
ops, logits processors, cache bookkeeping), so `generate` gains little from batching. This loop runs
the same arithmetic as the Hugging Face Llama code with less around it, and gives the same greedy
tokens as batched `model.generate` (tests/test_decode.py); bench/rollout.py measures the gain.
"""

from __future__ import annotations

from tripost.config import GenerationConfig

class LlamaDecoder:
    """Batched generation for a small Llama model on the CPU, without `model.generate`.

    Why: for a model this small, a decoding step is mostly fixed cost (Python, small tensor ops,
    logits processors, cache bookkeeping), so `generate` gains little from batching. This loop
    runs the same arithmetic as the Hugging Face Llama code with less around it:

      * q/k/v and gate/up projections fused into one matrix each (fewer, larger matrix products);
      * one KV cache allocated up front (prompt + max_new_tokens) and filled in place, instead of
        a cache that is copied to grow at every step; attention reads only the filled part. Keys
        are kept transposed (head_dim x positions), which made q @ k about 5% of a step faster;
      * rotary cos/sin computed once per call for all positions;
      * a row that wrote EOS leaves the batch (its cache rows are dropped), so later steps of a
        batch with short answers are cheaper;
      * greedy argmax, or sampling with temperature and top_p, and nothing else.

    Left padding works as in `generate`: padded positions are masked out, and positions count
    from each row's first real token. Greedy output equals `model.generate`'s token for token.
    Models this class does not cover (other architectures, biases, a rope type other than
    "default", logits processors in the saved generation config) go to `model.generate`.
    """

    def __init__(self, model):
        import torch

        inner, cfg = model.model, model.config
        self.heads, self.kv_heads = cfg.num_attention_heads, cfg.num_key_value_heads
        self.head_dim = cfg.head_dim
        self.scale = self.head_dim ** -0.5
        self.min_new_tokens = model.generation_config.min_new_tokens or 0
        self.embed, self.lm_head, self.rotary = inner.embed_tokens.weight, model.lm_head.weight, inner.rotary_emb
        self.norm = (inner.norm.weight, inner.norm.variance_epsilon)
        self.layers = []
        for layer in inner.layers:
            a, m = layer.self_attn, layer.mlp
            self.layers.append((
                layer.input_layernorm.weight, layer.input_layernorm.variance_epsilon,
                torch.cat([a.q_proj.weight, a.k_proj.weight, a.v_proj.weight]), a.o_proj.weight,
                layer.post_attention_layernorm.weight, layer.post_attention_layernorm.variance_epsilon,
                torch.cat([m.gate_proj.weight, m.up_proj.weight]), m.down_proj.weight))

    @classmethod
    def for_model(cls, model) -> "LlamaDecoder | None":
        """A decoder for `model`, or None where `generate` must run. Built anew for every batch
        (a fraction of a millisecond for a small model), so it never holds stale fused weights of
        a model trained in place since."""
        return cls(model) if cls.supports(model) else None

    @staticmethod
    def supports(model) -> bool:
        import torch

        cfg, gc = model.config, model.generation_config
        if type(model).__name__ != "LlamaForCausalLM" or not is_small_cpu_model(model):
            return False  # another architecture, on a GPU, or a big model: `generate` is the better engine
        if model.dtype != torch.float32:  # Hugging Face computes norms in float32; so do we, in float32 only
            return False
        plain_config = (cfg.hidden_act == "silu" and not cfg.attention_bias and not cfg.mlp_bias
                        and cfg.pretraining_tp == 1 and model.model.rotary_emb.rope_type == "default")
        # Logits processors `generate` would apply from the saved generation config.
        plain_generation = ((gc.repetition_penalty or 1.0) == 1.0 and not gc.no_repeat_ngram_size
                            and not gc.bad_words_ids and not gc.suppress_tokens and not gc.begin_suppress_tokens
                            and gc.forced_bos_token_id is None and gc.forced_eos_token_id is None)
        return plain_config and plain_generation

    def generate(self, input_ids, attention_mask, gen: GenerationConfig, eos: int, pad: int,
                 seeds: list[int] | None = None):
        """The new tokens (rows, max_new_tokens), padded with `pad` after EOS. `seeds`: one per row
        when sampling, so a row's sample does not depend on which other rows share its batch."""
        import torch

        generators = None
        if gen.do_sample and seeds is not None:
            generators = [torch.Generator(device=input_ids.device).manual_seed(s) for s in seeds]
        rows, length = input_ids.shape
        size = length + gen.max_new_tokens
        dtype, device = self.embed.dtype, self.embed.device
        keys = torch.empty((len(self.layers), rows, self.kv_heads, self.head_dim, size), dtype=dtype, device=device)
        values = torch.empty((len(self.layers), rows, self.kv_heads, size, self.head_dim), dtype=dtype, device=device)
        cos, sin = self.rotary(self.embed[None, :1], torch.arange(size, device=device)[None])
        neg = torch.finfo(dtype).min
        pad_mask = torch.zeros(rows, 1, 1, size, dtype=dtype, device=device)
        pad_mask[:, 0, 0, :length].masked_fill_(attention_mask == 0, neg)
        causal = torch.full((length, length), neg, dtype=dtype, device=device).triu(1)
        positions = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
        logits = self.forward(input_ids, positions, keys, values, 0,
                              (pad_mask[..., :length] + causal).clamp(min=neg), cos[0], sin[0])
        out = torch.full((rows, gen.max_new_tokens), pad, dtype=torch.long, device=device)
        live = torch.arange(rows, device=device)  # which rows of `out` the batch rows are
        position = positions[:, -1:]
        for t in range(gen.max_new_tokens):
            if t < self.min_new_tokens:
                logits[:, eos] = float("-inf")
            token = self.pick(logits, gen, None if generators is None else [generators[i] for i in live.tolist()])
            out[live, t] = token
            if t == gen.max_new_tokens - 1:
                break
            done = token == eos
            if done.any():  # drop finished rows: later steps compute only the rest
                keep = ~done
                if not keep.any():
                    break
                live, token, position, pad_mask = live[keep], token[keep], position[keep], pad_mask[keep]
                keys, values = keys[:, keep], values[:, keep]
            position = position + 1
            logits = self.forward(token[:, None], position, keys, values, length + t,
                                  pad_mask[..., :length + t + 1], cos[0], sin[0])
        return out

    @staticmethod
    def pick(logits, gen: GenerationConfig, generators=None):
        """The next token of each row: argmax, or a sample with temperature and top_p (from each
        row's own generator when given)."""
        import torch

        if not gen.do_sample:
            return logits.argmax(-1)
        logits = logits / gen.temperature
        if gen.top_p < 1.0:  # keep the most likely tokens whose probabilities sum to top_p
            sorted_logits, order = logits.sort(-1)
            drop = sorted_logits.softmax(-1).cumsum(-1) <= 1 - gen.top_p
            drop[:, -1] = False  # always keep the most likely token
            logits = logits.scatter(-1, order, sorted_logits.masked_fill(drop, float("-inf")))
        probs = logits.softmax(-1)
        if generators is None:
            return torch.multinomial(probs, 1)[:, 0]
        return torch.cat([torch.multinomial(p, 1, generator=g) for p, g in zip(probs, generators)])

    def forward(self, ids, positions, keys, values, start, mask, cos, sin):
        """Logits of the last position of `ids` (rows, n), whose keys and values are written to the
        cache at positions start..start+n;
        `positions` (rows, n) are the rotary positions, `mask` (rows, 1, n, start+n) is added to
        the attention scores."""
        import torch
        import torch.nn.functional as F

        rows, n = ids.shape
        heads, kv_heads, dim = self.heads, self.kv_heads, self.head_dim
        end = start + n
        x = F.embedding(ids, self.embed)
        cos, sin = cos[positions][:, None], sin[positions][:, None]  # (rows, 1, n, dim)
        for i, (norm1, eps1, qkv, wo, norm2, eps2, gate_up, down) in enumerate(self.layers):
            h = F.linear(_rms_norm(x, norm1, eps1), qkv).view(rows, n, heads + 2 * kv_heads, dim).transpose(1, 2)
            qk, v = h.split([heads + kv_heads, kv_heads], 1)
            q, k = _rotate(qk, cos, sin).split([heads, kv_heads], 1)
            keys[i, :, :, :, start:end] = k.transpose(2, 3)
            values[i, :, :, start:end] = v
            k_t, v = keys[i, :, :, :, :end], values[i, :, :, :end]
            if kv_heads != heads:
                k_t, v = k_t.repeat_interleave(heads // kv_heads, 1), v.repeat_interleave(heads // kv_heads, 1)
            scores = torch.matmul(q, k_t).mul_(self.scale).add_(mask)
            o = torch.matmul(scores.softmax(-1), v).transpose(1, 2).reshape(rows, n, heads * dim)
            x = x + F.linear(o, wo)
            g, u = F.linear(_rms_norm(x, norm2, eps2), gate_up).chunk(2, -1)
            x = x + F.linear(F.silu(g) * u, down)
        return F.linear(_rms_norm(x[:, -1], *self.norm), self.lm_head)


def _rms_norm(x, weight, eps):
    import torch

    return weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps))


def _rotate(x, cos, sin):
    """Rotary position embedding, as Hugging Face Llama applies it."""
    import torch

    half = x.shape[-1] // 2
    return x * cos + torch.cat((-x[..., half:], x[..., :half]), -1) * sin


def is_small_cpu_model(model, max_params: int = 100_000_000) -> bool:
    """On the CPU and at most `max_params` parameters: what the tiny demo models are."""
    first = next(model.parameters())
    return first.device.type == "cpu" and sum(p.numel() for p in model.parameters()) <= max_params
