"""Reading IREE's execution schedule of a multi-device module (for the schedule test).

iree-compile's stream phase groups each function's work into `stream.async.execute`
regions, one device each, that wait (`await`) on the timepoints of earlier regions
(through `stream.timepoint.join`). After `iree-stream-schedule-execution` that structure
is explicit; this module parses it from the printed IR (`--mlir-print-ir-after=...`).

`needless_waits` then says where a device waits on another for nothing: in a region that
waits on another device's region S, every dispatch that reads a weight (a
`!stream.resource<constant>`: the shard computation) must need a value S produced (within
the region, by data flow). One that does not could have run before the wait: its device
idles behind the other device, outside a collective.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

_EXEC = re.compile(r"^\s*%([\w$.-]+)(?::\d+)?, %([\w$.-]+) = stream\.async\.execute "
                   r"on\(#hal\.device\.affinity<@(\w+)>\)(?: await\(([^)]*)\))?")
_JOIN = re.compile(r"^\s*%([\w$.-]+) = stream\.timepoint\.join max\(([^)]*)\)")
_CAPTURE = re.compile(r"%([\w$.#-]+) as %([\w$.-]+): !stream\.resource<(\w+)>")
_NAME = re.compile(r"%([\w$.-]+)")


@dataclass
class Region:
    """One stream.async.execute: its device, the timepoints it awaits, and its ops' data flow."""

    timepoint: str
    results: str
    device: str
    awaits: list[str]
    captures: dict[str, tuple[str, str]] = field(default_factory=dict)  # inner arg -> (outer value, lifetime)
    ops: list[tuple[list[str], list[str], str]] = field(default_factory=list)  # (defs, uses, line)


def parse_schedule(text: str, function: str) -> tuple[list[Region], dict[str, list[str]]]:
    """The execute regions of `function` in order, and the timepoint joins."""
    start = text.index(f"util.func public @{function}(")
    end = text.find("\nutil.func", start + 1)
    regions: list[Region] = []
    joins: dict[str, list[str]] = {}
    cur: Region | None = None
    for line in text[start:end if end > 0 else None].splitlines():
        m = _EXEC.match(line)
        if m:
            results, tp, device, awaits = m.groups()
            cur = Region(tp, results, device, _names(awaits or ""))
            cur.captures = {inner: (outer, life) for outer, inner, life in _CAPTURE.findall(line)}
            regions.append(cur)
            continue
        m = _JOIN.match(line)
        if m:
            joins[m.group(1)] = _names(m.group(2))
            continue
        if cur is None:
            continue
        if line.strip().startswith("} =>"):
            cur = None
        elif "=" in line and line.strip().startswith("%"):
            lhs, rhs = line.split("=", 1)
            cur.ops.append((_NAME.findall(lhs), _NAME.findall(rhs), line.strip()))
    if not regions:
        raise ValueError(f"no stream.async.execute regions in @{function}")
    return regions, joins


def _names(text: str) -> list[str]:
    return [n.strip().lstrip("%") for n in text.split(",") if n.strip()]


def awaited(region: Region, joins: dict[str, list[str]]) -> set[str]:
    """The region timepoints `region` waits on, joins expanded."""
    out: set[str] = set()
    todo = list(region.awaits)
    while todo:
        t = todo.pop()
        if t in joins:
            todo += joins[t]
        else:
            out.add(t)
    return out


def cross_device_waits(regions: list[Region], joins: dict[str, list[str]]) -> list[tuple[Region, Region]]:
    """(region, the other device's region it waits on) pairs."""
    by_tp = {r.timepoint: r for r in regions}
    return [(r, by_tp[t]) for r in regions for t in sorted(awaited(r, joins))
            if t in by_tp and by_tp[t].device != r.device]


def needless_waits(regions: list[Region], joins: dict[str, list[str]]) -> list[str]:
    """Weight-reading dispatches that wait on another device's region without reading anything
    it produced (see the module docstring); one line each."""
    problems = []
    for r, s in cross_device_waits(regions, joins):
        tainted = {inner for inner, (outer, _) in r.captures.items() if outer.split("#")[0] == s.results}
        weights = {inner for inner, (_, life) in r.captures.items() if life == "constant"}
        for defs, uses, line in r.ops:
            if any(u in tainted for u in uses):
                tainted.update(defs)
            elif "stream.async.dispatch" in line and any(u in weights for u in uses):
                problems.append(f"{r.timepoint} on {r.device} waits on {s.timepoint} on {s.device} "
                                f"but does not need it for: {line[:160]}")
    return problems
