"""An artifact in words, for `llmirc inspect`: the manifest, what the weights are, file sizes,
the devices here that can run it, and, for a damaged artifact, everything that is wrong."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from llmirc.errors import ArtifactError

from .manifest import Manifest, file_problems, load_manifest


@dataclass
class ArtifactReport:
    """What `inspect` found. `manifest` is None when manifest.json itself is unreadable;
    `problems` lists every defect (empty: the artifact is intact)."""

    root: Path
    manifest: Manifest | None
    problems: list[str] = field(default_factory=list)
    file_sizes: dict[str, int] = field(default_factory=dict)
    devices: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        """The manifest's JSON (as before) plus an `inspect` section."""
        data = self.manifest.to_dict() if self.manifest is not None else {}
        data["inspect"] = {"problems": self.problems, "file_sizes": self.file_sizes, "devices": self.devices,
                           "weights": weights_summary(self.manifest) if self.manifest is not None else None}
        return data


def inspect_artifact(root: Path, verify_checksums: bool = True) -> ArtifactReport:
    """Describe whatever is there instead of refusing at the first defect. Raises ArtifactError
    only when there is no directory to look at."""
    manifest = None
    try:
        manifest = load_manifest(root)
    except ArtifactError as e:
        if not root.is_dir():
            raise
        problems = [str(e)]
    else:
        problems = file_problems(root, manifest, verify_checksums)
    sizes = {p.name: p.stat().st_size for p in sorted(root.iterdir()) if p.is_file() and not p.name.startswith(".")}
    return ArtifactReport(root, manifest, problems, sizes, available_devices(manifest) if manifest else [])


def available_devices(m: Manifest) -> list[str]:
    """The devices on this machine that can run the artifact, per runtime driver, or why none."""
    import iree.runtime as rt

    from llmirc.runtime.engine import DRIVERS_FOR_DEVICE

    present = rt.query_available_drivers()
    out = []
    for driver in DRIVERS_FOR_DEVICE.get(m.target.device, (m.target.driver,)):
        if driver not in present:
            out.append(f"{driver}: none (this IREE runtime has no {driver!r} driver)")
            continue
        try:
            devices = rt.get_driver(driver).query_available_devices()
        except (RuntimeError, ValueError) as e:
            out.append(f"{driver}: none ({_short(e)})")
            continue
        names = [f"{driver}://{d.get('device_id', i)} ({d.get('name') or d.get('path') or 'device'})"
                 for i, d in enumerate(devices)]
        out.append(f"{driver}: " + (", ".join(names) if names else "none found"))
    return out


def weights_summary(m: Manifest) -> str:
    """compiler.weights in words: stored dtype, quantization and each layer's group size."""
    w = m.compiler.get("weights")
    if not isinstance(w, dict):
        return "not recorded (artifact from an older llmirc)"
    text = f"{w.get('dtype', '?')} matrices"
    if w.get("requested_dtype"):
        text += f" (--dtype {w['requested_dtype']})"
    q = w.get("quantize")
    if isinstance(q, dict):
        head = q.get("lm_head", "float")  # a quantized lm_head is not float, whatever keep_float names
        kept = [k for k in str(q.get("keep_float") or "").split("|") if k and (head == "float" or k != "lm_head")]
        text += (f"; {q.get('scheme')} groups of {q.get('group_size')}, "
                 f"{'symmetric' if q.get('symmetric') else 'asymmetric'}, float: {'|'.join(kept) or 'none'}")
        if head != "float":
            text += f", lm_head {head}"
        layers = q.get("layer_group_sizes")
        if isinstance(layers, dict):
            counts: dict = {}
            for g in layers.values():
                counts[g] = counts.get(g, 0) + 1
            text += f"; {len(layers)} weights quantized (" + ", ".join(
                f"group {g}: {n}" for g, n in sorted(counts.items())) + ")"
    return text


def describe_report(r: ArtifactReport) -> str:
    """`inspect`'s text: the description (when the manifest reads), sizes, devices, problems."""
    lines = [describe(r.manifest, r.file_sizes)] if r.manifest is not None else [
        f"artifact   {r.root} (manifest unreadable)",
        "files      " + "\n           ".join(f"{n}  {_size(b)}" for n, b in r.file_sizes.items())]
    if r.manifest is not None:
        lines.append("weights    " + weights_summary(r.manifest))
        lines.append("devices    " + "\n           ".join(r.devices or ["none"]))
    if r.problems:
        lines.append("DAMAGED    " + "\n           ".join(r.problems))
    return "\n".join(lines)


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n} B" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


def _file_size(sizes: dict[str, int] | None, name: str) -> str:
    if sizes is None:
        return ""
    return f"{_size(sizes[name])}, " if name in sizes else "MISSING, "


def _short(e: BaseException, limit: int = 160) -> str:
    line = (str(e).strip().splitlines() or [type(e).__name__])[0]
    return line if len(line) <= limit else line[: limit - 3] + "..."


def describe(m: Manifest, sizes: dict[str, int] | None = None) -> str:
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
        "files      " + "\n           ".join(
            f"{name}  " + _file_size(sizes, name) + f"sha256 {digest[:16]}…"
            for name, digest in m.files.items()),
        f"compiler   llmirc {m.compiler.get('llmirc', '?')}, IREE {m.compiler.get('iree', '?')}",
        f"format     manifest v{m.format_version}, ABI v{m.abi_version}",
    ]
    if t.flags:
        lines.insert(2, "flags      " + " ".join(t.flags))
    parallel = _parallel(m)
    if parallel:
        lines.insert(2, parallel)
    b = t.extra.get("buckets")
    if b:  # static-shape target (docs/targets.md)
        lines.insert(3, f"buckets    static shapes: batch {b.get('batch')}, prefill lengths {b.get('prefill_len')}, "
                        f"{b.get('pages_per_seq')} pages per sequence, pool of {b.get('num_pages')} pages")
    return "\n".join(lines)


def _parallel(m: Manifest) -> str:
    """`parallel` line of a tensor- or pipeline-parallel artifact (manifest target.devices), else ""."""
    d = m.target.extra.get("devices")
    if not isinstance(d, dict):
        return ""
    n, kind = d.get("count", "?"), d.get("kind", m.target.device)
    if d.get("parallelism") == "pipeline":
        stages = "; ".join(f"{s.get('vmfb', '?')} layers {s['layers'][0]}..{s['layers'][1] - 1}"
                           for s in d.get("stages", []) if isinstance(s, dict) and len(s.get("layers", [])) == 2)
        return (f"parallel   pipeline parallelism: {n} stages on {n} '{kind}' devices ({stages}); "
                f"one KV pool per stage (its layers only), one block table for all")
    heads = m.kv.extra.get("pool_kv_heads", "?")
    return (f"parallel   {d.get('parallelism', 'tensor')} parallelism over {n} '{kind}' devices; "
            f"one KV pool per device ({heads} KV head{'s' if heads != 1 else ''} each), one block table for all")


def _specialised(sig: dict) -> str:
    """`; also decode_b1 (batch 1), ...` for -O3's static-batch functions and `; also
    prefill_r64 (64+ token rows)` for its row-chunked ones (docs/abi.md)."""
    by_batch = sorted((sig.get("batch_functions") or {}).items(), key=lambda x: int(x[0]))
    by_rows = sorted((sig.get("row_functions") or {}).items(), key=lambda x: int(x[0]))
    also = [f"{f} (batch {b})" for b, f in by_batch] + [f"{f} ({r}+ token rows)" for r, f in by_rows]
    return "; also " + ", ".join(also) if also else ""
