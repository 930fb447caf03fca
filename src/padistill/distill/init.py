"""Initial synthetic images and labels (DATM; spec §3.3, §3.4, invariants §8.18-8.19).

Images (class-major: rows c*IPC..(c+1)*IPC-1 belong to class c):
- correct: distinct real training images of class c that an expert's checkpoint classifies as c.
  The classes' images are scanned in a seeded random order; if one expert cannot supply IPC correct
  images, the next expert is asked (the reference assumes 10 experts per file here; we do not); if no
  expert can, the remainder is filled with random real images of the class and a warning is printed.
- real: IPC random real images per class.   - noise: standard normal pixels (model space).
Labels:
- soft: for each image the mean logits of exactly the experts that classify it correctly (so the
  argmax of every initial label is its class); images that no expert gets right use the mean over
  all experts (counted and reported).
- expert: the logits of ONE expert (the first, at the label checkpoint), no filtering: what the published PAD
  code does with `pix_init: real` (CIFAR-100 IPC 50, spec §3.4).
- hard: the class index (MTT: fixed labels, plain cross-entropy).
"""

from __future__ import annotations

import torch

from padistill.utils.rng import generator


@torch.no_grad()
def predict(model, layout, theta, x: torch.Tensor, batch: int = 512) -> torch.Tensor:
    model.eval()
    out = torch.cat([layout.functional_forward(model, theta, x[i:i + batch]) for i in range(0, len(x), batch)])
    model.train()
    return out


def init_images(prepared, ipc: int, mode: str, seed: int, experts=None, model=None, layout=None,
                label_epoch: int = -1, log=print) -> torch.Tensor:
    """Return class-major initial images [C*IPC, ch, H, W] in model space and their source indices
    (-1 for noise / fill-ins are real indices too)."""
    g = generator(seed, "init-images")
    x = prepared.x_train
    C = prepared.num_classes
    if mode == "noise":
        return torch.randn((C * ipc, *x.shape[1:]), generator=g).to(x.device), torch.full((C * ipc,), -1)
    chosen: list[torch.Tensor] = []
    fills = 0
    for c, idx in enumerate(prepared.class_indices()):
        order = idx[torch.randperm(len(idx), generator=g)]
        if mode == "real" or experts is None:
            pick = order[:ipc]
        else:
            picked: list[int] = []
            taken: set[int] = set()
            for e in range(len(experts)):
                theta = experts.checkpoint(e, label_epoch, x.device)
                for start in range(0, len(order), 256):
                    cand = order[start:start + 256]
                    cand = cand[[int(i) not in taken for i in cand]] if taken else cand
                    if len(cand) == 0:
                        continue
                    pred = predict(model, layout, theta, x[cand.to(x.device)]).argmax(1).cpu()
                    for i in cand[pred == c].tolist()[: ipc - len(picked)]:
                        picked.append(i)
                        taken.add(i)
                    if len(picked) == ipc:
                        break
                if len(picked) == ipc:
                    break
            if len(picked) < ipc:
                rest = [int(i) for i in order if int(i) not in taken][: ipc - len(picked)]
                fills += len(rest)
                picked += rest
            pick = torch.tensor(picked, dtype=torch.int64)
        if len(pick) < ipc:
            raise ValueError(f"class {c} has only {len(pick)} training images, fewer than ipc={ipc}")
        chosen.append(pick)
    if fills:
        log(f"init: {fills} images no expert classified correctly were filled with random real images")
    src = torch.cat(chosen)
    return x[src.to(x.device)].clone(), src


def init_labels(prepared, images: torch.Tensor, ipc: int, mode: str, experts=None, model=None, layout=None,
                label_epoch: int = -1, log=print) -> torch.Tensor:
    C = prepared.num_classes
    cls = torch.arange(C, device=images.device).repeat_interleave(ipc)
    if mode == "hard" or experts is None:
        return cls.clone()
    if mode == "expert":
        return predict(model, layout, experts.checkpoint(0, label_epoch, images.device), images)
    total = torch.zeros(len(images), C, device=images.device)
    correct_sum = torch.zeros(len(images), C, device=images.device)
    correct_n = torch.zeros(len(images), device=images.device)
    for e in range(len(experts)):
        logits = predict(model, layout, experts.checkpoint(e, label_epoch, images.device), images)
        ok = logits.argmax(1) == cls
        total += logits
        correct_sum[ok] += logits[ok]
        correct_n += ok.float()
    labels = torch.where(correct_n[:, None] > 0, correct_sum / correct_n.clamp_min(1)[:, None], total / len(experts))
    missing = int((correct_n == 0).sum())
    if missing:
        log(f"init: {missing} of {len(images)} images are misclassified by every expert; "
            "their soft labels are the mean over all experts")
    return labels
