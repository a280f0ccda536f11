"""Table printers for the benches' console output (markdown and aligned key/value tables)."""

from __future__ import annotations

from typing import Iterable, Sequence


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[object]], align: str = "") -> str:
    """A markdown table; ``align`` holds one letter per column, 'l' or 'r' (default: all plain '---')."""
    seps = [("---:" if a == "r" else "---") for a in align.ljust(len(header), "l")] if align else ["---"] * len(header)
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(seps) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def aligned_table(rows: Sequence[Sequence[str]], sep: str = "  ") -> str:
    """Rows of string cells with every column but the last padded to its widest cell."""
    if not rows:
        return ""
    widths = [max(len(r[i]) for r in rows if i < len(r)) for i in range(max(len(r) for r in rows))]
    return "\n".join(sep.join([c.ljust(widths[i]) for i, c in enumerate(r[:-1])] + [r[-1]]).rstrip() for r in rows)


def key_value_table(rows: Sequence[tuple[str, str]]) -> str:
    """``what  value`` lines with the first column padded to its widest entry."""
    return aligned_table([list(r) for r in rows])
