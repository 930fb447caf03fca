"""The report's "Baselines" section: coreset sets evaluated beside the run (`<run>/baselines/<name>/eval/`)."""

from __future__ import annotations

import html
import json
from pathlib import Path


def baseline_rows(root: Path) -> list[tuple[str, dict, dict]]:
    """(folder name, row, results) for every evaluated set folder under `root/baselines/`, sorted by name."""
    out = []
    folder = root / "baselines"
    if not folder.is_dir():
        return out
    for sub in sorted(p for p in folder.iterdir() if p.is_dir()):
        path = sub / "eval" / "results.json"
        try:
            results = json.loads(path.read_text(encoding="utf-8"))
            rows = results["table"]["rows"]
        except (OSError, json.JSONDecodeError, KeyError, TypeError):
            continue
        for row in rows:
            out.append((sub.name, row, results))
    return out


def baselines_html(root: Path) -> str:
    """A table of the baselines' accuracies (mean ± std (n) per net), or '' when there are none."""
    found = baseline_rows(root)
    if not found:
        return ""
    nets: list[str] = []
    for _, row, _ in found:
        nets += [n for n in row.get("results", {}) if n not in nets]
    head = "<tr><th>set</th><th>row</th><th>IPC</th>" + "".join(f"<th>{html.escape(n)}</th>" for n in nets) + "</tr>"
    lines = []
    for name, row, results in found:
        cells = [name, row.get("name", "?"), str(results.get("set", {}).get("ipc", "?"))]
        for n in nets:
            r = row.get("results", {}).get(n)
            cells.append(f"{100 * r['mean']:.2f} ± {100 * r['std']:.2f} (n={r['n']})" if r and "mean" in r else "")
        lines.append("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in cells) + "</tr>")
    return ("<h3>Baselines (real subsets, <code>padistill select</code>)</h3>"
            f"<table>{head}{''.join(lines)}</table><p>Each from <code>baselines/&lt;set&gt;/eval/results.json"
            "</code>, evaluated with its own config's protocol; compare with the table above at the same IPC.</p>")
