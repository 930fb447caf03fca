"""`padistill report RUN_DIR`: one self-contained HTML page about a run (plus its figures as PNGs).

Input: a run folder (`distill/`, optionally `eval/`, `experts/`, `scores/`) or a distill folder.
Output: `<run>/report/index.html` (figures embedded as base64 PNG, also written beside it) with
- the synthetic images, de-whitened with the set's own `preprocess.pt` (and the initial grid, if kept);
- the matching loss per iteration and the per-layer matching losses (paper Fig. 5 shape), from
  `distill/metrics.jsonl` (records with it, loss, lr, status, per_layer, seconds, optional val_acc);
- the learned student lr and the validation accuracy during distillation;
- label statistics: histograms of the max probability and the entropy of softmax(labels), and the
  fraction of images whose label argmax is their own class;
- the evaluation table from `eval/results.json`, with the random baseline and the improvement;
- the run's settings: config, stage manifests (status, versions, timings).
Missing parts (no evaluation yet, no metrics, ...) are said on the page instead of failing.
Matplotlib is imported only when a figure is drawn, and draws on a bare `Figure` with the Agg canvas
(no pyplot, no global backend or font configuration).
"""

from __future__ import annotations

import html
import json
import math
from pathlib import Path

import torch

from padistill.errors import PadistillError
from padistill.utils.io import atomic_write_text
from padistill.utils.page import embed as _embed
from padistill.utils.page import html_page
from padistill.utils.page import img as _img
from padistill.utils.page import missing as _missing
from padistill.utils.page import new_figure as _new_figure
from padistill.utils.page import png as _png

STAGES = ("scores", "experts", "squeeze", "distill", "recover", "eval")


def read_metrics(path: Path) -> list[dict]:
    """Records of metrics.jsonl; torn or foreign lines (a crash mid-write) are skipped."""
    if not path.is_file():
        return []
    out = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(rec, dict) and isinstance(rec.get("it"), (int, float)):
            out.append(rec)
    return out


# ------------------------------------------------------------------------------------------ figures


def _smooth(values: list[float], window: int) -> list[float]:
    if window <= 1:
        return values
    out, acc, q = [], 0.0, []
    for v in values:
        q.append(v)
        acc += v
        if len(q) > window:
            acc -= q.pop(0)
        out.append(acc / len(q))
    return out


def _finite(v) -> bool:
    return isinstance(v, (int, float)) and math.isfinite(v)


def loss_figure(records: list[dict]) -> bytes | None:
    pts = [(r["it"], r["loss"], r.get("status")) for r in records if _finite(r.get("loss"))]
    if not pts:
        return None
    fig = _new_figure(7, 3.2)
    ax = fig.add_subplot()
    its = [p[0] for p in pts]
    losses = [p[1] for p in pts]
    ax.plot(its, losses, lw=0.6, alpha=0.35, color="C0", label="per iteration")
    ax.plot(its, _smooth(losses, max(1, len(pts) // 50)), lw=1.6, color="C0", label="moving average")
    skipped = [(p[0], p[1]) for p in pts if p[2] not in (None, "applied")]
    if skipped:
        ax.scatter(*zip(*skipped), s=6, color="C3", label=f"not applied ({len(skipped)})", zorder=3)
    if all(v > 0 for v in losses):
        ax.set_yscale("log")
    ax.set_xlabel("iteration")
    ax.set_ylabel("matching loss")
    ax.legend(fontsize=8)
    return _png(fig)


def per_layer_figure(records: list[dict]) -> bytes | None:
    rows = [r for r in records if isinstance(r.get("per_layer"), dict) and r["per_layer"]]
    if not rows:
        return None
    names: list[str] = []
    for r in rows:
        for k in r["per_layer"]:
            if k not in names:
                names.append(k)
    from matplotlib import colormaps

    cmap = colormaps["viridis"]
    fig = _new_figure(7, 3.6)
    ax = fig.add_subplot()
    window = max(1, len(rows) // 50)
    positive = True
    for i, name in enumerate(names):  # metrics list layers shallow -> deep
        pts = [(r["it"], r["per_layer"][name]) for r in rows if _finite(r["per_layer"].get(name))]
        if not pts:
            continue
        ys = [p[1] for p in pts]
        positive = positive and all(y > 0 for y in ys)
        show = len(names) <= 12 or i in (0, len(names) - 1)
        ax.plot([p[0] for p in pts], _smooth(ys, window), lw=1.2, color=cmap(i / max(1, len(names) - 1)),
                label=name if show else None)
    if positive:
        ax.set_yscale("log")
    ax.set_xlabel("iteration")
    ax.set_ylabel("per-layer matching loss")
    ax.set_title("shallow (dark) -> deep (light)", fontsize=9)
    ax.legend(fontsize=7, ncol=2)
    return _png(fig)


def series_figure(records: list[dict], key: str, ylabel: str, percent: bool = False) -> bytes | None:
    pts = [(r["it"], r[key]) for r in records if _finite(r.get(key))]
    if not pts:
        return None
    fig = _new_figure(7, 2.8)
    ax = fig.add_subplot()
    scale = 100.0 if percent else 1.0
    ax.plot([p[0] for p in pts], [scale * p[1] for p in pts], lw=1.4, marker="o" if len(pts) < 40 else None,
            ms=3)
    ax.set_xlabel("iteration")
    ax.set_ylabel(ylabel)
    return _png(fig)


def label_stats(labels: torch.Tensor, num_classes: int) -> dict:
    """Entropy / max probability of softmax(labels) and how many labels name their own class."""
    ipc = len(labels) // num_classes
    own = torch.arange(num_classes).repeat_interleave(ipc)
    if not labels.is_floating_point():
        return {"kind": "hard", "n": len(labels), "argmax_is_class": float((labels.cpu() == own).float().mean())}
    p = torch.softmax(labels.float().cpu(), dim=1)
    ent = -(p * p.clamp_min(1e-12).log()).sum(1)
    maxp = p.max(1).values
    return {"kind": "soft", "n": len(labels), "argmax_is_class": float((p.argmax(1) == own).float().mean()),
            "max_prob": maxp.tolist(), "entropy": ent.tolist(), "max_entropy": math.log(num_classes),
            "mean_max_prob": float(maxp.mean()), "mean_entropy": float(ent.mean())}


def label_figure(stats: dict) -> bytes | None:
    if stats.get("kind") != "soft":
        return None
    fig = _new_figure(7, 2.8)
    a, b = fig.subplots(1, 2)
    a.hist(stats["max_prob"], bins=20, range=(0, 1), color="C0")
    a.set_xlabel("max softmax probability")
    a.set_ylabel("images")
    b.hist(stats["entropy"], bins=20, range=(0, stats["max_entropy"]), color="C1")
    b.set_xlabel(f"entropy (nats; uniform = {stats['max_entropy']:.2f})")
    return _png(fig)


# ------------------------------------------------------------------------------------------ page


def _grid(images: torch.Tensor, pre, ipc: int, path: Path) -> bytes:
    """De-whitened grid, one row per class; tiny images (digits: 8 px) are enlarged for viewing."""
    from padistill.artifacts import save_grid

    h = images.shape[-1]
    scale = max(1, 64 // h) if h < 32 else 1
    return save_grid(pre.inverse(images), path, nrow=ipc, scale=scale).read_bytes()


def _eval_html(results: dict) -> str:
    from padistill.evaluate.table import EvalTable

    table = EvalTable.from_dict(results["table"])
    header, lines = table._grid()
    rows = ["<tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in header) + "</tr>"]
    for cells in lines:
        cls = ' class="gain"' if cells[0].startswith("↑") else ""
        rows.append(f"<tr{cls}>" + "".join(f"<td>{html.escape(c)}</td>" for c in cells) + "</tr>")
    legend = "".join(f"<li><b>{html.escape(r.name)}</b>: {html.escape(r.description)}</li>"
                     for r in table.rows.values() if r.description)
    p = results.get("protocol", {})
    d = results.get("data", {})
    if p.get("relabel"):  # the SRe2L protocol
        from padistill.evaluate.sre2l import describe

        return (f"<table>{''.join(rows)}</table><ul>{legend}</ul><p>{html.escape(describe(p))}; top-1 on the full "
                f"test split ({d.get('test_images', '?')} images of {d.get('name', '?')}), mean ± std over n "
                "fresh networks.</p>")
    proto = (f"Top-1 accuracy (%) on the full test split ({d.get('test_images', '?')} images of "
             f"{d.get('name', '?')}), mean ± std over n fresh networks; {p.get('epochs', 0) + 1} epochs, "
             f"batch {p.get('batch')}, SGD momentum {p.get('momentum')}, weight decay {p.get('weight_decay')}, "
             f"lr x0.1 after epoch {p.get('epochs', 0) // 2 + 1}, DSA {'on' if p.get('augment') else 'off'}.")
    return (f"<table>{''.join(rows)}</table><ul>{legend}</ul><p>{html.escape(proto)}</p>")


def _manifest_html(root: Path, distill: Path | None, eval_dir: Path) -> str:
    from padistill.utils.manifest import read_manifest

    folders = {s: root / s for s in STAGES}
    if distill is not None:
        folders["recover" if distill.name == "recover" else "distill"] = distill
    folders["eval"] = eval_dir
    rows = []
    versions = None
    for stage, folder in folders.items():
        try:
            m = read_manifest(folder) if folder.is_dir() else None
        except PadistillError:
            m = None
        if m is None:
            continue
        versions = versions or m.get("versions")
        extra = {k: v for k, v in m.items() if k in ("seconds", "counters", "best", "iterations")}
        cells = [stage, str(m.get("status")), str(m.get("created", "")), str(m.get("updated", ""))]
        rows.append("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in cells)
                    + f"<td><code>{html.escape(json.dumps(extra, sort_keys=True))}</code></td></tr>")
    if not rows:
        return _missing("No stage manifests found.")
    ver = "".join(f"<li>{html.escape(k)}: {html.escape(str(v))}</li>" for k, v in (versions or {}).items())
    return ("<table><tr><th>stage</th><th>status</th><th>created</th><th>updated</th><th>details</th></tr>"
            + "".join(rows) + f"</table><p>Versions:</p><ul>{ver}</ul>")


def build_report(run_dir: str | Path, out: str | Path | None = None) -> Path:
    """Write the HTML report of `run_dir` (a run folder or a distill folder); returns index.html's path."""
    from padistill.artifacts import load_distilled, locate_run

    root, distill, eval_dir = locate_run(Path(run_dir))
    out = Path(out) if out is not None else root / "report"
    out.mkdir(parents=True, exist_ok=True)
    written: list[str] = []
    parts: list[str] = []
    title = root.name
    config_text = None
    for cand in ([distill / "config.yaml"] if distill else []) + [eval_dir / "config.yaml"]:
        if cand.is_file():
            config_text = cand.read_text(encoding="utf-8")
            break
    if config_text:
        import yaml

        try:
            title = (yaml.safe_load(config_text) or {}).get("name", title)
        except yaml.YAMLError:
            pass

    # images and labels
    parts.append("<h2>Synthetic images</h2>")
    syn = None
    if distill is not None and (distill / "images.pt").is_file():
        try:
            syn = load_distilled(distill)
        except PadistillError as e:
            parts.append(_missing(f"The distilled set cannot be shown: {e}"))
    if syn is not None:
        parts.append(f"<p>{syn.images.shape[0]} images, {syn.ipc} per class (one row per class), "
                     f"{syn.pre.kind} model space shown de-whitened; learned lr {float(syn.lr):.4g}.</p>")
        parts.append(_embed(_grid(syn.images, syn.pre, syn.ipc, out / "grid.png"), "synthetic images"))
        written.append("grid.png")
        if (distill / "grid_init.png").is_file():
            parts.append("<p>Initialisation:</p>" + _img((distill / "grid_init.png").read_bytes(), "grid_init.png",
                                                         out, "initial images", written))
    elif not parts[-1].startswith("<p class"):
        parts.append(_missing("No distilled set yet (distill/images.pt): run `padistill distill` first."))

    recovered = distill is not None and distill.name == "recover"
    if recovered:  # SRe2L: the BN-statistics loss instead of a matching loss (sre2l/report.py)
        from padistill.sre2l.report import recover_html

        parts.append(recover_html(distill, out, written))
    records = read_metrics(distill / "metrics.jsonl") if distill is not None and not recovered else []
    if not recovered:
        parts.append("<h2>Matching loss</h2>")
        fig = loss_figure(records)
        parts.append(_img(fig, "loss.png", out, "matching loss", written) if fig else
                     _missing("No distillation metrics (distill/metrics.jsonl) yet."))
        fig = per_layer_figure(records)
        parts.append("<h3>Per layer</h3>" + (_img(fig, "per_layer.png", out, "per-layer loss", written) if fig else
                                              _missing("No per-layer losses were recorded.")))
        if records:
            n = sum(1 for r in records if "loss" in r)
            applied = sum(1 for r in records if r.get("status") == "applied")
            secs = sum(r.get("seconds", 0) for r in records if _finite(r.get("seconds")))
            parts.append(f"<p>{n} iterations recorded, {applied} updates applied, "
                         f"{n - applied} not applied (threshold gate or non-finite); "
                         f"{secs:.0f} s in iterations ({secs / max(1, n):.2f} s each).</p>")
        parts.append("<h2>Learned learning rate</h2>")
        fig = series_figure(records, "lr", "student lr")
        parts.append(_img(fig, "lr.png", out, "learned lr", written) if fig else _missing("No lr was recorded."))
        fig = series_figure(records, "val_acc", "validation accuracy (%)", percent=True)
        if fig:
            parts.append("<h3>Validation accuracy during distillation</h3>"
                         + _img(fig, "val_acc.png", out, "validation accuracy", written)
                         + "<p>Measured on a split held out from the training data; the test set is not used.</p>")

    parts.append("<h2>Labels</h2>")
    if syn is not None:
        st = label_stats(syn.labels, syn.num_classes)
        if st["kind"] == "soft":
            parts.append(f"<p>Soft labels (logits; targets = softmax). Argmax equals the image's class for "
                         f"{100 * st['argmax_is_class']:.1f}% of the images; mean max probability "
                         f"{st['mean_max_prob']:.3f}, mean entropy {st['mean_entropy']:.3f} nats "
                         f"(uniform: {st['max_entropy']:.3f}).</p>")
            parts.append(_img(label_figure(st), "labels.png", out, "label statistics", written))
        else:
            parts.append(f"<p>Hard labels; {100 * st['argmax_is_class']:.1f}% equal the row's class.</p>")
    else:
        parts.append(_missing("No labels (no distilled set yet)."))

    parts.append("<h2>Evaluation</h2>")
    res_path = eval_dir / "results.json"
    results = None
    if res_path.is_file():
        try:
            results = json.loads(res_path.read_text(encoding="utf-8"))
            parts.append(_eval_html(results))
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            parts.append(_missing(f"{res_path} cannot be read ({e})."))
    else:
        parts.append(_missing(f"No evaluation yet: run `padistill eval {root}`."))
    from padistill.select.report import baselines_html

    parts.append(baselines_html(root))  # coreset baselines under <run>/baselines/ (padistill select)

    parts.append("<h2>Settings</h2>")
    parts.append(_manifest_html(root, distill, eval_dir))
    if results and "seconds" in results:
        parts.append(f"<p>Evaluation took {results['seconds']:.0f} s.</p>")
    parts.append(f"<h3>Config</h3><pre>{html.escape(config_text)}</pre>" if config_text else
                 _missing("No config.yaml found."))

    page = html_page(f"padistill report: {title}", f"<p><code>{html.escape(str(root))}</code></p>", parts)
    index = out / "index.html"
    atomic_write_text(index, page)
    return index
