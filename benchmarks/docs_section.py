"""Write a benchmark's table into a docs page between `<!-- tag:begin -->` and `<!-- tag:end -->`,
so the prose around it (written by people) survives re-runs. Imported by the scripts beside it."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def write_doc_section(doc: Path, tag: str, text: str) -> None:
    """Replace the marked section of `doc`; append one (with its markers) when there is none."""
    begin, end = f"<!-- {tag}:begin -->", f"<!-- {tag}:end -->"
    page = doc.read_text() if doc.exists() else ""
    if begin in page:
        head, rest = page.split(begin, 1)
        page = head + begin + "\n" + text + "\n" + end + rest.split(end, 1)[1]
    else:
        page += f"\n{begin}\n{text}\n{end}\n"
    doc.write_text(page)
    print(f"wrote the {tag} section of {doc.relative_to(ROOT)}")
