"""Compare a CIFAR-10 scores folder with the published PAD orderings (issue 3 closing numbers).

    padistill scores --preset pad/cifar10-ipc10 --data-root ../shared/data --set scores.models=3 \\
        --set scores.epochs=3 --out runs/el2n-cifar10
    python -m benchmarks.el2n_vs_published runs/el2n-cifar10 [--orderings ../shared/data/pad-orderings]

Prints, per class (airplane .. truck):
- mean global rank: every training image is ranked 0 (easiest) .. N-1 (hardest) by its score over the WHOLE
  training set; the class's mean rank divided by N-1 (0.5 = average difficulty, higher = harder);
- Spearman rank correlation of the class's within-class order with the published CIFAR10_GraNd.pt row
  (and with CIFAR10_Uncertainty.pt), averaged over classes, and pooled over all 50,000 images using
  within-class normalised ranks ("overall"). The GraNd-vs-Uncertainty correlation of the published files
  is printed too as a yardstick (spec §1.4 reports 0.64).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from scipy.stats import spearmanr

ROOT = Path(__file__).resolve().parents[1]
CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def within_class_rank(ordering: torch.Tensor, n: int) -> torch.Tensor:
    """float [N]: position of each index in its row divided by (K-1) (0 = easiest); NaN if absent."""
    K = ordering.shape[1]
    r = torch.full((n,), float("nan"), dtype=torch.float64)
    r[ordering.reshape(-1)] = (torch.arange(K, dtype=torch.float64) / (K - 1)).repeat(ordering.shape[0])
    return r


def compare(a: torch.Tensor, b: torch.Tensor, ordering: torch.Tensor) -> tuple[list[float], float]:
    per_class = [float(spearmanr(a[row].numpy(), b[row].numpy()).statistic) for row in ordering]
    return per_class, float(spearmanr(a.numpy(), b.numpy()).statistic)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("scores_dir")
    ap.add_argument("--orderings", default=str(ROOT.parent / "shared" / "data" / "pad-orderings"))
    args = ap.parse_args()
    folder = Path(args.scores_dir)
    scores = torch.load(folder / "scores.pt", weights_only=True).double()
    ordering = torch.load(folder / "ordering.pt", weights_only=True)
    manifest = json.loads((folder / "manifest.json").read_text())
    n = len(scores)
    ours = within_class_rank(ordering, n)
    glob = torch.empty(n, dtype=torch.float64)
    glob[torch.argsort(scores, stable=True)] = torch.arange(n, dtype=torch.float64) / (n - 1)
    pub = {name: within_class_rank(torch.load(Path(args.orderings) / f"CIFAR10_{name}.pt", weights_only=True), n)
           for name in ("GraNd", "Uncertainty")}
    print(f"# {folder}: {manifest['scorer']} from {len(manifest['models'])} model(s), settings "
          f"{ {k: manifest['settings'][k] for k in ('models', 'epochs', 'lr', 'batch', 'augment')} }, "
          f"model test acc {[round(m['test_acc'], 4) for m in manifest['models']]}")
    rho_g, overall_g = compare(ours, pub["GraNd"], ordering)
    rho_u, overall_u = compare(ours, pub["Uncertainty"], ordering)
    rho_gu, overall_gu = compare(pub["GraNd"], pub["Uncertainty"], ordering)
    print(f"{'class':<11}{'mean global rank':>17}{'rho vs GraNd':>14}{'rho vs Unc.':>13}{'GraNd vs Unc.':>15}")
    labels = torch.empty(n, dtype=torch.int64)
    for c, row in enumerate(ordering):
        labels[row] = c
    means = []
    for c in range(len(ordering)):
        m = float(glob[labels == c].mean())
        means.append(m)
        print(f"{CLASSES[c]:<11}{m:>17.3f}{rho_g[c]:>14.3f}{rho_u[c]:>13.3f}{rho_gu[c]:>15.3f}")
    print(f"{'mean':<11}{sum(means) / len(means):>17.3f}{sum(rho_g) / len(rho_g):>14.3f}"
          f"{sum(rho_u) / len(rho_u):>13.3f}{sum(rho_gu) / len(rho_gu):>15.3f}")
    print(f"{'overall':<11}{'':>17}{overall_g:>14.3f}{overall_u:>13.3f}{overall_gu:>15.3f}")
    order = sorted(range(len(means)), key=lambda c: means[c])
    print("easiest -> hardest class:", ", ".join(CLASSES[c] for c in order))


if __name__ == "__main__":
    main()
