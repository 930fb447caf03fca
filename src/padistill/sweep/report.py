"""The sweep's figure and HTML page (written by `padistill sweep` after its table).

- `plot.png`: accuracy against the swept value with error bars (std over the runs; one line per net) for a
  one-key grid, like the paper's Figures 2 and 3; for named cells, one point per cell. The baseline cell's mean is
  a dashed line, the random real subset (when evaluated) a dotted one.
- `report/index.html`: self-contained (figures embedded), with the table, the figure, and every cell's synthetic
  images side by side (de-whitened with each set's own preprocess.pt), reusing the run report's pieces.
"""

from __future__ import annotations

import html
import json
import math
from pathlib import Path

from padistill.report import _embed, _grid, _missing, _new_figure, _png
from padistill.utils.io import atomic_write_bytes, atomic_write_text
from padistill.utils.page import html_page


def _number(v) -> float | None:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    return float(v)


def sweep_figure(results: dict) -> bytes | None:
    """Accuracy (%) per cell; x = the swept value for a one-key grid with numeric values, else one point per cell."""
    nets = results.get("nets") or []
    rows = [r for r in results.get("cells", []) if r.get("nets")]
    if not nets or not rows:
        return None
    grid = results.get("grid") or []
    xs = [_number((r.get("values") or {}).get(grid[0])) for r in rows] if len(grid) == 1 else []
    numeric = bool(xs) and all(x is not None for x in xs)
    fig = _new_figure(6.4, 4.0)
    ax = fig.add_subplot(1, 1, 1)
    base = next((r for r in rows if r["cell"] == results.get("baseline")), None)
    width = 0.8 / len(nets)
    for j, net in enumerate(nets):
        pts = [(i, r["nets"][net]) for i, r in enumerate(rows) if net in r["nets"]]
        ys = [100 * s["mean"] for _, s in pts]
        es = [100 * s["std"] for _, s in pts]
        if numeric:
            x = [100 * xs[i] if all(0 <= v <= 1 for v in xs) else xs[i] for i, _ in pts]
            ax.errorbar(x, ys, yerr=es, marker="o", capsize=4, label=net)
        else:
            x = [i + (j - (len(nets) - 1) / 2) * width for i, _ in pts]
            ax.errorbar(x, ys, yerr=es, fmt="o", capsize=4, label=net)
        if base is not None and net in base["nets"]:
            ax.axhline(100 * base["nets"][net]["mean"], color=f"C{j}", ls="--", lw=0.8)
        rnd = (results.get("random") or {}).get(net)
        if rnd:
            ax.axhline(100 * rnd["mean"], color="grey", ls=":", lw=1.0,
                       label="random real" if j == 0 else None)
    if numeric:
        pct = all(0 <= v <= 1 for v in xs)
        ax.set_xlabel(f"{grid[0]}{' (%)' if pct else ''}")
    else:
        ax.set_xticks(range(len(rows)))
        ax.set_xticklabels([r["cell"] for r in rows], rotation=30 if len(rows) > 4 else 0, ha="right"
                           if len(rows) > 4 else "center")
    ax.set_ylabel("test accuracy (%)")
    n = rows[0]["nets"][next(iter(rows[0]["nets"]))]["n"]
    ax.set_title(f"{results.get('sweep', '')}: mean ± std (n={n}); dashed: baseline '{results.get('baseline')}'",
                 fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _png(fig)


def _table_html(md: str) -> str:
    """The Markdown table of table.md as an HTML table (the text around it as paragraphs)."""
    lines = md.splitlines()
    out, rows = [], []
    for line in lines:
        if line.startswith("|"):
            cells = [c.strip().replace("\\|", "|") for c in line.strip().strip("|").split(" | ")]
            if all(set(c) <= {"-"} for c in cells):
                continue
            rows.append(cells)
        elif line.startswith("# "):
            continue
        elif line.strip():
            out.append(f"<p>{html.escape(line)}</p>")
    if rows:
        head = "".join(f"<th>{html.escape(c)}</th>" for c in rows[0])
        body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in rows[1:])
        out.append(f"<table><tr>{head}</tr>{body}</table>")
    return "\n".join(out)


def build_sweep_report(root: str | Path) -> Path:
    """Write <root>/plot.png and <root>/report/index.html from results.json and the cells' folders."""
    from padistill.artifacts import load_distilled
    from padistill.errors import PadistillError

    root = Path(root)
    results = json.loads((root / "results.json").read_text(encoding="utf-8"))
    out = root / "report"
    out.mkdir(parents=True, exist_ok=True)
    parts = ["<h2>Results</h2>"]
    md = (root / "table.md").read_text(encoding="utf-8") if (root / "table.md").is_file() else ""
    parts.append(_table_html(md) if md else _missing("No table yet."))
    fig = sweep_figure(results)
    if fig:
        atomic_write_bytes(root / "plot.png", fig)
        parts.append(_embed(fig, "accuracy per cell"))
    parts.append("<h2>Synthetic images</h2><p>The first distillation of every cell, one row per class, de-whitened "
                 "with the set's own transform.</p><div style=\"display:flex;flex-wrap:wrap;gap:16px\">")
    for row in results.get("cells", []):
        reps = row.get("replicates") or []
        folder = root / reps[0]["folder"] / "distill" if reps else None
        stats = next(iter(row.get("nets", {}).values()), None)
        caption = html.escape(row["cell"]) + (f"<br>{100 * stats['mean']:.2f} ± {100 * stats['std']:.2f} %"
                                              if stats and not math.isnan(stats["mean"]) else "")
        try:
            syn = load_distilled(folder) if folder is not None and (folder / "images.pt").is_file() else None
        except PadistillError:
            syn = None
        if syn is None:
            img = _missing("not distilled yet")
        else:
            safe = "".join(ch if ch.isalnum() or ch in "._-" else "_" for ch in row["cell"])
            img = _embed(_grid(syn.images, syn.pre, syn.ipc, out / f"cell-{safe}.png"), row["cell"])
        parts.append(f"<figure style=\"margin:0\">{img}<figcaption>{caption}</figcaption></figure>")
    parts.append("</div>")
    overrides = "".join(f"<tr><td>{html.escape(r['cell'])}</td><td><code>{html.escape(json.dumps(r['overrides']))}"
                        f"</code></td></tr>" for r in results.get("cells", []))
    parts.append(f"<h2>Cells</h2><table><tr><th>cell</th><th>overrides</th></tr>{overrides}</table>")
    page = html_page(f"padistill sweep: {results.get('sweep', root.name)}",
                     f"<p><code>{html.escape(str(root))}</code> from "
                     f"<code>{html.escape(str(results.get('source', '')))}</code></p>", parts)
    index = out / "index.html"
    atomic_write_text(index, page)
    return index
