"""The recover part of the HTML report: the BN-statistics (and CE) loss per iteration, all IPC indices."""

from __future__ import annotations

import html
import json
from pathlib import Path


def recover_records(folder: Path) -> list[dict]:
    """Records of recover/metrics.jsonl ({index, it, loss, ce, bn, lr}); torn lines skipped."""
    path = folder / "metrics.jsonl"
    out = []
    if path.is_file():
        for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
            try:
                r = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(r, dict) and all(isinstance(r.get(k), (int, float)) for k in ("it", "bn", "ce")):
                out.append(r)
    return out


def bn_loss_figure(records: list[dict]) -> bytes | None:
    """BN term and CE against the iteration: thin lines per IPC index, the mean over indices bold."""
    from padistill.utils.page import new_figure as _new_figure
    from padistill.utils.page import png as _png

    if not records:
        return None
    fig = _new_figure(7, 3.2)
    axes = fig.subplots(1, 2)
    for ax, key, name in ((axes[0], "bn", "BN-statistics loss (sum_l w_l r_l)"), (axes[1], "ce", "teacher CE")):
        by_index: dict = {}
        for r in records:
            by_index.setdefault(r.get("index"), []).append((r["it"], r[key]))
        for pts in by_index.values():
            ax.plot(*zip(*sorted(pts)), lw=0.5, alpha=0.3, color="C0")
        its = sorted({r["it"] for r in records})
        mean = [sum(r[key] for r in records if r["it"] == t) / sum(1 for r in records if r["it"] == t) for t in its]
        ax.plot(its, mean, lw=1.8, color="C3", label=f"mean over {len(by_index)} IPC indices")
        if all(v > 0 for v in mean):
            ax.set_yscale("log")
        ax.set_xlabel("iteration")
        ax.set_ylabel(name)
        ax.legend(fontsize=7)
    return _png(fig)


def recover_html(folder: Path, out: Path, written: list[str]) -> str:
    from padistill.utils.manifest import read_manifest
    from padistill.utils.page import img as _img
    from padistill.utils.page import missing as _missing

    parts = ["<h2>Recover: BN-statistics matching</h2>"]
    fig = bn_loss_figure(recover_records(folder))
    parts.append(_img(fig, "bn_loss.png", out, "BN-statistics loss", written) if fig else
                 _missing("No recover metrics (recover/metrics.jsonl) yet."))
    try:
        m = read_manifest(folder) or {}
    except Exception:  # a broken manifest is reported by the settings section
        m = {}
    if m.get("status") == "complete" and isinstance(m.get("loss"), dict):
        lo = m["loss"]
        parts.append(f"<p>Mean over IPC indices: CE {lo['ce']['first']:.3f} &rarr; {lo['ce']['last']:.3f}, BN term "
                     f"{lo['bn']['first']:.3f} &rarr; {lo['bn']['last']:.3f}; the teacher classifies "
                     f"{100 * float(m.get('teacher_acc_on_recovered', float('nan'))):.1f}% of the (un-jittered) "
                     f"recovered images as their class.</p>")
    sq = folder.parent / "squeeze"
    try:
        ms = read_manifest(sq) if sq.is_dir() else None
    except Exception:
        ms = None
    if ms and ms.get("status") == "complete":
        sizes = ms.get("train_size_per_epoch") or []
        parts.append(f"<p>Teacher (squeeze): test accuracy {100 * float(ms.get('test_acc', float('nan'))):.2f}%, "
                     f"{len(sizes)} epochs, train size per epoch {html.escape(str(sizes[:3]))}"
                     f"{' ...' if len(sizes) > 3 else ''}.</p>")
    return "".join(parts)
