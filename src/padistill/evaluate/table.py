"""The results table: rows = what was trained on, columns = architectures (paper Table 2 / 3a shape).

Input: `EvalResult`s added per (row, net), each row optionally naming the baseline row it is compared
with (DD-Ranking's fairness rule: a distilled set is only as good as its gain over a random real
subset of the same size evaluated the same way). Output: Markdown and plain-text tables with cells
`mean ± std (n=…)` in percent, one "↑" row per compared row (difference of the means, in points) and
an average column when there are several nets; `to_dict` / `from_dict` for results.json.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from padistill.evaluate.protocol import EvalResult


@dataclass
class Row:
    name: str
    description: str = ""
    baseline: str | None = None  # the row this one is compared with
    results: dict[str, EvalResult] = field(default_factory=dict)


class EvalTable:
    def __init__(self, nets: list[str]):
        self.nets = list(nets)
        self.rows: dict[str, Row] = {}

    def add_row(self, name: str, description: str = "", baseline: str | None = None) -> Row:
        if name not in self.rows:
            self.rows[name] = Row(name, description, baseline)
        return self.rows[name]

    def add(self, row: str, result: EvalResult) -> None:
        self.add_row(row).results[result.net] = result

    def get(self, row: str, net: str) -> EvalResult | None:
        r = self.rows.get(row)
        return r.results.get(net) if r else None

    # ------------------------------------------------------------------ derived numbers
    def improvement(self, row: str) -> dict[str, float]:
        """Mean accuracy of `row` minus that of its baseline row, per net (fractions)."""
        r = self.rows[row]
        base = self.rows.get(r.baseline) if r.baseline else None
        if base is None:
            return {}
        out = {}
        for net in self.nets:
            a, b = r.results.get(net), base.results.get(net)
            if a is not None and b is not None and a.accs and b.accs:
                out[net] = a.mean - b.mean
        return out

    def _avg(self, row: Row) -> float | None:
        means = [row.results[n].mean for n in self.nets if n in row.results and row.results[n].accs]
        return float(np.mean(means)) if len(self.nets) > 1 and len(means) == len(self.nets) else None

    def _grid(self) -> tuple[list[str], list[list[str]]]:
        avg = len(self.nets) > 1
        header = ["method", *self.nets] + (["avg"] if avg else [])
        lines = []
        for row in self.rows.values():
            cells = [row.name] + [row.results[n].cell() if n in row.results else "-" for n in self.nets]
            if avg:
                a = self._avg(row)
                cells.append(f"{100 * a:.2f}" if a is not None else "-")
            lines.append(cells)
        for row in self.rows.values():
            imp = self.improvement(row.name)
            if not imp:
                continue
            cells = [f"↑ {row.name} vs {row.baseline}"] + [f"{100 * imp[n]:+.2f}" if n in imp else "-"
                                                           for n in self.nets]
            if avg:
                cells.append(f"{100 * float(np.mean(list(imp.values()))):+.2f}" if len(imp) == len(self.nets)
                             else "-")
            lines.append(cells)
        return header, lines

    # ------------------------------------------------------------------ rendering
    def to_markdown(self) -> str:
        header, lines = self._grid()
        out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
        out += ["| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |" for cells in lines]
        return "\n".join(out) + "\n"

    def to_text(self) -> str:
        header, lines = self._grid()
        widths = [max(len(r[i]) for r in [header, *lines]) for i in range(len(header))]
        def line(cells):
            return "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))

        return "\n".join([line(header), *(line(cells) for cells in lines)]) + "\n"

    def legend(self) -> str:
        """One line per row saying what it is."""
        return "\n".join(f"- **{r.name}**: {r.description}" for r in self.rows.values() if r.description) + "\n"

    # ------------------------------------------------------------------ persistence
    def to_dict(self) -> dict:
        return {"nets": self.nets,
                "rows": [{"name": r.name, "description": r.description, "baseline": r.baseline,
                          "results": {n: res.to_dict() for n, res in r.results.items()},
                          "improvement": self.improvement(r.name)} for r in self.rows.values()]}

    @classmethod
    def from_dict(cls, d: dict) -> EvalTable:
        t = cls(d["nets"])
        for r in d["rows"]:
            row = t.add_row(r["name"], r.get("description", ""), r.get("baseline"))
            for net, res in r.get("results", {}).items():
                row.results[net] = EvalResult.from_dict(res)
        return t
