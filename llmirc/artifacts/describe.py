"""A manifest in words, for `llmirc inspect` (the JSON form is Manifest.to_json)."""

from __future__ import annotations

from .manifest import Manifest


def describe(m: Manifest) -> str:
    md, t, kv = m.model, m.target, m.kv
    eos = ", ".join(map(str, md.eos_token_id)) or "none"
    lines = [
        f"model      {md.architecture}: {md.num_layers} layers, hidden {md.hidden_size}, "
        f"{md.num_heads} heads ({md.num_kv_heads} KV heads, head_dim {md.head_dim}), vocab {md.vocab_size}, "
        f"max {md.max_seq_len} tokens, bos {md.bos_token_id}, eos {eos}",
        f"target     {t.name}{':' + t.variant if t.variant else ''} (IREE device '{t.device}', "
        f"runtime driver '{t.driver}'), -O{m.opt_level}",
        f"kv cache   paged, {kv.page_size} tokens per page, {kv.dtype}, pool layout "
        f"[{', '.join(kv.layout)}], page {kv.scratch_page} is scratch",
        "entry      " + "\n           ".join(
            f"{name}({', '.join(sig.get('args', []))}) -> ({', '.join(sig.get('results', []))})"
            + _specialised(sig) for name, sig in m.entry_points.items()),
        "files      " + "\n           ".join(f"{name}  sha256 {digest[:16]}…" for name, digest in m.files.items()),
        f"compiler   llmirc {m.compiler.get('llmirc', '?')}, IREE {m.compiler.get('iree', '?')}",
        f"format     manifest v{m.format_version}, ABI v{m.abi_version}",
    ]
    if t.flags:
        lines.insert(2, "flags      " + " ".join(t.flags))
    b = t.extra.get("buckets")
    if b:  # static-shape target (docs/targets.md)
        lines.insert(3, f"buckets    static shapes: batch {b.get('batch')}, prefill lengths {b.get('prefill_len')}, "
                        f"{b.get('pages_per_seq')} pages per sequence, pool of {b.get('num_pages')} pages")
    return "\n".join(lines)


def _specialised(sig: dict) -> str:
    """`; also decode_b1 (batch 1), ...` for -O3's static-batch functions (docs/abi.md)."""
    fns = sig.get("batch_functions") or {}
    return ("; also " + ", ".join(f"{f} (batch {b})" for b, f in sorted(fns.items(), key=lambda x: int(x[0])))
            if fns else "")
