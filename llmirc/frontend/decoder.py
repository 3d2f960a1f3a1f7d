"""A decoder-only checkpoint -> llm IR with `prefill`, `extend`, `extend_all` and `decode`.

One builder for every registered family (families/): the ModelConfig's block choices
(biases, per-head q/k norms, RMSNorm or LayerNorm, gated or plain MLP, rotary or learned
positions, sequential or parallel blocks) select the variant. Reads top to bottom like the
model: embed, then per layer norm -> attention -> residual -> norm -> mlp -> residual (or a
parallel block: x + attention(norm(x)) + mlp(norm(x))), then norm and head.
The KV cache is an explicit contiguous `!llm.kv_cache` value threaded through
every layer; `blockify-kv-cache` later makes it paged. Weights are `llm.weight`
ops that name checkpoint tensors, so the IR never holds weight data; the names are Llama's for
every family (a family laid out otherwise, GPT-2 or Falcon, maps them to its own: layout.py).
"""

from __future__ import annotations

from iree.compiler import ir
from iree.compiler.dialects import func

from ..dialect import Builder, KVCacheT, TensorT, make_context
from .config import ModelConfig

F32 = "f32"
ENTRY_FUNCTIONS = ("prefill", "extend", "extend_all", "decode")  # what build_decoder emits, in order


def _norm_shapes(c: ModelConfig, name: str, size: int) -> dict[str, tuple[int, ...]]:
    """A norm's weight, and its bias for a LayerNorm."""
    return {name + ".weight": (size,)} | ({name + ".bias": (size,)} if c.norm == "layer" else {})


def weight_shapes(c: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Every tensor the IR references, with the shape config.json implies."""
    h, d = c.hidden_size, c.head_dim
    shapes: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (c.vocab_size, h)}
    if c.learned_positions:
        shapes["model.embed_positions.weight"] = (c.learned_positions, h)
    mlp_in = ("up",) if c.mlp == "plain" else ("gate", "up")
    for i in range(c.num_layers):
        p = f"model.layers.{i}."
        shapes |= _norm_shapes(c, p + "input_layernorm", h)
        shapes |= {
            p + "self_attn.q_proj.weight": (c.num_heads * d, h),
            p + "self_attn.k_proj.weight": (c.num_kv_heads * d, h),
            p + "self_attn.v_proj.weight": (c.num_kv_heads * d, h),
            p + "self_attn.o_proj.weight": (h, c.num_heads * d),
        }
        if not c.parallel_block:  # a parallel block's MLP reads the block input (its own norm or the first)
            shapes |= _norm_shapes(c, p + "post_attention_layernorm", h)
        if c.num_experts:  # router [E, H]; experts stacked as transformers 5 holds them
            shapes |= {p + "mlp.gate.weight": (c.num_experts, h),
                       p + "mlp.experts.gate_up_proj": (c.num_experts, 2 * c.intermediate_size, h),
                       p + "mlp.experts.down_proj": (c.num_experts, h, c.intermediate_size)}
        else:
            shapes |= {p + f"mlp.{n}_proj.weight": (c.intermediate_size, h) for n in mlp_in}
            shapes[p + "mlp.down_proj.weight"] = (h, c.intermediate_size)
        if c.qkv_bias:
            shapes |= {p + f"self_attn.{n}_proj.bias": (k,) for n, k in
                       (("q", c.num_heads * d), ("k", c.num_kv_heads * d), ("v", c.num_kv_heads * d))}
        if c.o_bias:
            shapes[p + "self_attn.o_proj.bias"] = (h,)
        if c.qk_norm:
            shapes |= {p + "self_attn.q_norm.weight": (d,), p + "self_attn.k_norm.weight": (d,)}
        if c.parallel_block and c.parallel_mlp_norm:
            shapes |= _norm_shapes(c, p + "pre_feedforward_layernorm", h)
        if c.sandwich_norms:
            shapes |= {p + "pre_feedforward_layernorm.weight": (h,), p + "post_feedforward_layernorm.weight": (h,)}
        if c.mlp_bias:
            shapes |= {p + f"mlp.{n}_proj.bias": (c.intermediate_size,) for n in mlp_in}
            shapes[p + "mlp.down_proj.bias"] = (h,)
    shapes |= _norm_shapes(c, "model.norm", h)
    if not c.tie_word_embeddings:
        shapes["lm_head.weight"] = (c.vocab_size, h)
    return shapes


def cache_type(c: ModelConfig, layers: int | None = None) -> KVCacheT:
    return KVCacheT(c.num_layers if layers is None else layers, c.num_kv_heads, c.head_dim, c.max_seq_len, F32)


def stage_layers(num_layers: int, stages: int) -> list[tuple[int, int]]:
    """Contiguous layer ranges [a, b) of `stages` pipeline stages, as even as possible (the
    first `num_layers % stages` stages get one layer more)."""
    q, r = divmod(num_layers, stages)
    out, a = [], 0
    for i in range(stages):
        b = a + q + (i < r)
        out.append((a, b))
        a = b
    return out


class _DecoderBuilder:
    def __init__(self, c: ModelConfig, b: Builder, quantized: dict | None = None,
                 layers: tuple[int, int] | None = None):
        self.c, self.b = c, b
        self.layers = layers or (0, c.num_layers)
        self.shapes = weight_shapes(c)
        self.inv_freq = [float(x) for x in c.inv_freq()]
        self.quantized = quantized or {}  # weight name -> prequantized.QuantizedLinear (GPTQ/AWQ)

    def w(self, name: str) -> ir.Value:
        return self.b.weight(name=name, result_types=[TensorT(self.shapes[name], F32)], loc=name)

    def linear(self, x: ir.Value, prefix: str, bias: bool) -> ir.Value:
        bias_w = self.w(prefix + ".bias") if bias else None
        q = self.quantized.get(prefix + ".weight")
        if q is None:
            return self.b.linear(x, self.w(prefix + ".weight"), bias=bias_w, loc=prefix)
        n, k, g = q.out_features, q.in_features, q.groups
        types = [TensorT((n, k), q.value_dtype), TensorT((n, g), F32), TensorT((n, g), "i8")]
        values, scales, zeros = (self.b.weight(name=nm, result_types=[t], loc=nm) for nm, t in zip(q.names, types))
        y = self.b.quantized_matmul(x, values, scales, zeros, bits=q.bits, group_size=q.group_size, loc=prefix)
        return y if bias_w is None else self.b.add(y, bias_w, loc=prefix)

    def attn(self, x: ir.Value, pos: ir.Value, cache: ir.Value, i: int) -> tuple[ir.Value, ir.Value]:
        c, b, p = self.c, self.b, f"model.layers.{i}.self_attn"
        q = b.reshape(self.linear(x, p + ".q_proj", c.qkv_bias), shape=[0, 0, c.num_heads, c.head_dim])
        k = b.reshape(self.linear(x, p + ".k_proj", c.qkv_bias), shape=[0, 0, c.num_kv_heads, c.head_dim])
        v = b.reshape(self.linear(x, p + ".v_proj", c.qkv_bias), shape=[0, 0, c.num_kv_heads, c.head_dim])
        if c.qk_norm:  # per head, over head_dim, before rope
            q = b.rms_norm(q, self.w(p + ".q_norm.weight"), eps=c.rms_norm_eps, loc=p + ".q_norm")
            k = b.rms_norm(k, self.w(p + ".k_norm.weight"), eps=c.rms_norm_eps, loc=p + ".k_norm")
        if not c.learned_positions:  # rotary; learned positions were added to the embeddings
            q = b.rope(q, pos, inv_freq=self.inv_freq, loc=p + ".rope_q")
            k = b.rope(k, pos, inv_freq=self.inv_freq, loc=p + ".rope_k")
        cache = b.append_kv(cache, k, v, pos, layer=i - self.layers[0], loc=p + ".append_kv")
        a = b.attention(q, cache, pos, layer=i - self.layers[0], num_heads=c.num_heads, num_kv_heads=c.num_kv_heads,
                        head_dim=c.head_dim, scale=c.attention_scale(i), window=c.window(i),
                        softcap=c.attn_softcap, loc=p + ".attention")
        a = b.reshape(a, shape=[0, 0, c.num_heads * c.head_dim])
        return self.linear(a, p + ".o_proj", c.o_bias), cache

    def act(self, x: ir.Value) -> ir.Value:
        if self.c.hidden_act == "silu":
            return self.b.silu(x)
        return self.b.gelu(x, approximate="tanh" if self.c.hidden_act == "gelu_tanh" else "none")

    def mlp(self, x: ir.Value, i: int) -> ir.Value:
        """Gated: down(act(gate(x)) * up(x)); plain (GPT-2, Falcon): down(act(up(x)))."""
        b, p, bias = self.b, f"model.layers.{i}.mlp", self.c.mlp_bias
        if self.c.num_experts:
            return self.moe(x, p)
        if self.c.mlp == "plain":
            return self.linear(self.act(self.linear(x, p + ".up_proj", bias)), p + ".down_proj", bias)
        gate = self.act(self.linear(x, p + ".gate_proj", bias))
        return self.linear(b.mul(gate, self.linear(x, p + ".up_proj", bias)), p + ".down_proj", bias)

    def moe(self, x: ir.Value, p: str) -> ir.Value:
        """Mixtral's sparse MoE block: each token's top-k experts (router: softmax, top-k,
        renormalised) and the weighted sum of their gated MLPs."""
        c, b = self.c, self.b
        weights, indices = b.moe_router(x, self.w(p + ".gate.weight"), top_k=c.experts_per_token,
                                        normalize=c.router_normalize, loc=p + ".gate")
        return b.moe_ffn(x, weights, indices, self.w(p + ".experts.gate_up_proj"), self.w(p + ".experts.down_proj"),
                         activation=c.hidden_act, loc=p + ".experts")

    def body(self, tokens: ir.Value, pos: ir.Value, cache: ir.Value,
             hidden: ir.Value | None = None) -> tuple[ir.Value, ir.Value]:
        """Decoder layers over tokens [B, T]; returns hidden [B, T, H] and the cache. A pipeline
        stage (self.layers != all) runs only its layers, from `hidden` after stage 0; its cache
        holds its layers only (cache layer i - first)."""
        b = self.b
        first, end = self.layers
        if first > 0:
            return self.layers_of(hidden, pos, cache)
        x = b.embedding(tokens, self.w("model.embed_tokens.weight"))
        if self.c.embed_scale != 1.0:
            x = b.scale(x, factor=self.c.embed_scale, loc="model.embed_scale")
        if self.c.learned_positions:  # padding positions (-1) read row 0 (embedding clamps), never used
            pe = b.embedding(pos, self.w("model.embed_positions.weight"), loc="model.embed_positions")
            x = b.add(x, pe, loc="model.embed_positions.add")
        return self.layers_of(x, pos, cache)

    def layers_of(self, x: ir.Value, pos: ir.Value, cache: ir.Value) -> tuple[ir.Value, ir.Value]:
        b = self.b
        for i in range(*self.layers):
            p = f"model.layers.{i}"
            if self.c.parallel_block:
                x, cache = self.parallel_block(x, pos, cache, i)
                continue
            a, cache = self.attn(self.norm(x, p + ".input_layernorm"), pos, cache, i)
            if self.c.sandwich_norms:  # Gemma 2: norm the attention output before the residual
                a = self.norm(a, p + ".post_attention_layernorm")
            x = b.add(x, a, loc=p + ".attn_residual")
            mlp_norm = ".pre_feedforward_layernorm" if self.c.sandwich_norms else ".post_attention_layernorm"
            m = self.mlp(self.norm(x, p + mlp_norm), i)
            if self.c.sandwich_norms:
                m = self.norm(m, p + ".post_feedforward_layernorm")
            x = b.add(x, m, loc=p + ".mlp_residual")
        return x, cache

    def parallel_block(self, x: ir.Value, pos: ir.Value, cache: ir.Value, i: int) -> tuple[ir.Value, ir.Value]:
        """Falcon: x + (mlp(norm_m(x)) + attention(norm_a(x))), both branches reading the block
        input; norm_m is norm_a unless the MLP has its own (new_decoder_architecture's ln_mlp)."""
        p = f"model.layers.{i}"
        h = self.norm(x, p + ".input_layernorm")
        a, cache = self.attn(h, pos, cache, i)
        m = self.mlp(self.norm(x, p + ".pre_feedforward_layernorm") if self.c.parallel_mlp_norm else h, i)
        return self.b.add(x, self.b.add(m, a, loc=p + ".parallel_sum"), loc=p + ".residual"), cache

    def norm(self, x: ir.Value, name: str) -> ir.Value:
        if self.c.norm == "layer":
            return self.b.layer_norm(x, self.w(name + ".weight"), self.w(name + ".bias"), eps=self.c.layer_norm_eps,
                                     loc=name)
        return self.b.rms_norm(x, self.w(name + ".weight"), eps=self.c.rms_norm_eps, loc=name)

    def head(self, x: ir.Value) -> ir.Value:
        """Final norm and lm_head on [B, H] -> logits [B, V]."""
        x = self.norm(x, "model.norm")
        name = "model.embed_tokens.weight" if self.c.tie_word_embeddings else "lm_head.weight"
        logits = self.b.linear(x, self.w(name), loc="lm_head")
        if self.c.final_softcap:
            logits = self.b.softcap(logits, cap=self.c.final_softcap, loc="final_logit_softcap")
        return logits


def _entry(name: str, args: list, results: list, body) -> None:
    f = func.FuncOp(name, ([ir.Type.parse(str(t)) for t in args], [ir.Type.parse(str(t)) for t in results]))
    block = f.add_entry_block()
    with ir.InsertionPoint(block):
        func.ReturnOp(list(body(*block.arguments)))


def build_decoder(c: ModelConfig, ctx: ir.Context | None = None, quantized: dict | None = None,
                  layers: tuple[int, int] | None = None) -> ir.Module:
    """llm IR module with `prefill`, `extend`, `extend_all` and `decode` (contiguous KV cache semantics).

    prefill(tokens i64[B,T], seq_lens i64[B], cache) -> (logits f32[B,V], cache)
    extend(tokens i64[B,T], start_pos i64[B], new_lens i64[B], cache) -> (logits f32[B,V], cache)
        tokens at positions start_pos[b] .. start_pos[b] + new_lens[b] - 1 attend to the cached
        prefix and to each other; prefill is extend at 0 (chunked prefill, prefix-cache hits
        and re-prefill after preemption are extend at the cached length)
    extend_all(same) -> (logits f32[B,T,V] of every new position, cache)  (prompt logprobs)
    decode(tokens i64[B], positions i64[B], cache) -> (logits f32[B,V], cache)
    `quantized` (a pre-quantized checkpoint's linears) makes those linears quantized_matmuls.

    `layers` = (a, b): one pipeline stage (docs/parallel.md), layers a..b-1 only, with a cache
    of b - a layers. After the first stage every function takes the hidden state after layer
    a - 1 as an argument after the cache (f32[B,T,H]; f32[B,H] for decode); before the last
    stage every function returns the hidden state after layer b - 1 (the same shapes; prefill
    and extend return every position: the last stage picks the last token) instead of logits.
    """
    ctx = ctx or make_context()
    first, end = layers or (0, c.num_layers)
    head_here, embed_here = end == c.num_layers, first == 0
    cache_t = cache_type(c, end - first)
    logits_t = TensorT((None, c.vocab_size), F32)
    seq_hidden_t = TensorT((None, None, c.hidden_size), F32)
    tok_hidden_t = TensorT((None, c.hidden_size), F32)
    with ctx, ir.Location.unknown():
        module = ir.Module.create()
        module.operation.attributes["llm.model"] = ir.StringAttr.get(c.architecture)
        lb = _DecoderBuilder(c, Builder(), quantized, (first, end))
        b = lb.b

        def prefill(tokens, seq_lens, cache, hidden=None):
            pos = b.positions(tokens, seq_lens, loc="prefill.positions")
            x, cache = lb.body(tokens, pos, cache, hidden)
            if not head_here:
                return x, cache
            return lb.head(b.last_token(x, seq_lens, loc="prefill.last_token")), cache

        def extend(tokens, start_pos, new_lens, cache, hidden=None):
            pos = b.extend_positions(tokens, start_pos, new_lens, loc="extend.positions")
            x, cache = lb.body(tokens, pos, cache, hidden)
            if not head_here:
                return x, cache
            return lb.head(b.last_token(x, new_lens, loc="extend.last_token")), cache

        def extend_all(tokens, start_pos, new_lens, cache, hidden=None):
            pos = b.extend_positions(tokens, start_pos, new_lens, loc="extend_all.positions")
            x, cache = lb.body(tokens, pos, cache, hidden)
            return (lb.head(x) if head_here else x), cache

        def decode(tokens, positions, cache, hidden=None):
            if hidden is not None:
                hidden = b.reshape(hidden, shape=[0, 1, c.hidden_size])
            x, cache = lb.body(b.reshape(tokens, shape=[0, 1]), b.reshape(positions, shape=[0, 1]), cache, hidden)
            x = b.reshape(x, shape=[0, c.hidden_size])
            return (lb.head(x) if head_here else x), cache

        seq_in = [] if embed_here else [seq_hidden_t]
        tok_in = [] if embed_here else [tok_hidden_t]
        with ir.InsertionPoint(module.body):
            _entry("prefill", [TensorT((None, None), "i64"), TensorT((None,), "i64"), cache_t] + seq_in,
                   [logits_t if head_here else seq_hidden_t, cache_t], prefill)
            extend_args = [TensorT((None, None), "i64"), TensorT((None,), "i64"), TensorT((None,), "i64"), cache_t]
            _entry("extend", extend_args + seq_in, [logits_t if head_here else seq_hidden_t, cache_t], extend)
            _entry("extend_all", extend_args + seq_in,
                   [TensorT((None, None, c.vocab_size), F32) if head_here else seq_hidden_t, cache_t], extend_all)
            _entry("decode", [TensorT((None,), "i64"), TensorT((None,), "i64"), cache_t] + tok_in,
                   [logits_t if head_here else tok_hidden_t, cache_t], decode)
    return module
