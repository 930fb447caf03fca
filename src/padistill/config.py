"""Configuration: dataclasses with per-field docs, YAML presets, strict validation, `--set` overrides.

Input: a preset name (`padistill list presets`) or a YAML file, plus `a.b=c` overrides.
Output: a fully resolved `Config`, written as `config.yaml` into every stage folder.

Rules (the field's research scripts get these wrong, so they are tested):
- unknown keys and duplicate keys are errors that name the key and the file;
- booleans are booleans (`true`/`false`), never strings parsed by truthiness;
- a YAML file may start from another preset with `base: <preset name or relative path>`;
- every value can be overridden from the command line with `--set section.key=value` (YAML syntax).
"""

from __future__ import annotations

import dataclasses
import difflib
import io
import math
import re
import types
import typing
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from padistill.errors import PadistillError

# --------------------------------------------------------------------------------------------------
# Sections


@dataclass
class DataConfig:
    name: str = "cifar10"  # dataset registry name (`padistill list datasets`)
    root: str | None = None  # data folder; None = $PADISTILL_DATA or ~/.cache/padistill/data
    download: bool = False  # fetch the official archive when missing (checksum verified)
    options: dict = field(default_factory=dict)  # loader-specific options (e.g. npz `path`)
    preprocess: str = "zca"  # zca | normalize | none (every published PAD number uses zca)
    zca_eps: float = 0.1  # kornia ZCAWhitening eps used by MTT/DATM/PAD
    val_per_class: int = 0  # training images per class held out for model selection (never the test set)


@dataclass
class NetConfig:
    name: str = "convnet"  # `padistill list nets`; parseable names like convnet-4, resnet18-bn
    options: dict = field(default_factory=dict)  # builder options, e.g. {width: 128, depth: 3}


@dataclass
class ScoresConfig:
    method: str = "el2n"  # el2n | grand | loss | uncertainty | forgetting | file
    file: str | None = None  # ordering file [C, N_c] (published PAD format) when method == file
    models: int = 10  # independently initialised scoring models averaged (data-diet practice)
    epochs: int = 20  # training epochs before scoring (EL2N is read early in training)
    net: str | None = None  # scoring network; None = the config's net
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-4
    batch: int = 256
    augment: bool = True  # DSA while training the scoring models


@dataclass
class ScheduleConfig:
    """PAD's data scheduler (paper §3.2, spec §1.5): easy-first addition, then one-shot easy removal."""

    enabled: bool = True
    init_ratio: float = 0.75  # IR: fraction of each class (easiest first) at epoch 0
    add_end_epoch: int = 20  # AEE: full data from this epoch (linear growth before)
    rm_epoch_first: int = 40  # R1: after this epoch drop the easiest rm_easy_ratio_first
    rm_easy_ratio_first: float = 0.1
    rm_epoch_second: int = 60  # R2: after this epoch drop the easiest rm_easy_ratio_second (total)
    rm_easy_ratio_second: float = 0.2
    removal: str = "oneshot"  # oneshot (paper) | gradual (App. A.2's alternative: the share ramps from R1 to R2)


@dataclass
class PruneConfig:
    """FIEX for DC/DM (paper App. A.1): statically remove hard (small IPC) or easy (large IPC) samples."""

    mode: str = "none"  # none | hard | easy
    ratio: float = 0.0


@dataclass
class ExpertsConfig:
    num: int = 100  # number of expert trajectories
    epochs: int = 100  # training epochs per expert (checkpoints 0..epochs are stored)
    optimizer: str = "gsam"  # gsam (reference: FTD flat trajectories) | sgd
    lr: float = 0.01
    momentum: float = 0.0
    weight_decay: float = 0.0
    batch: int = 256
    rho: float = 0.01  # GSAM perturbation radius
    alpha: float = 0.3  # GSAM surrogate-gap weight
    adaptive: bool = True  # adaptive (ASAM-style) perturbation, as in the reference
    augment: bool = True  # DSA on every batch
    microbatch: int = 64  # forward/backward in chunks of this size (cache-friendly on CPU; same gradient)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    # static FIEX for the experts (Fig. 2's TM panel): remove the hardest / easiest share of every class for all
    # epochs, before the scheduler (if on) sees the ordering; needs a scores folder like the scheduler
    prune: PruneConfig = field(default_factory=PruneConfig)
    save_dtype: str = "float32"  # float32 | float16 (halves the buffer size)
    eval_every: int = 1  # test accuracy logged every N epochs (0 = never)


@dataclass
class ParamSelectConfig:
    """FIEM (paper §3.3, eq. 4): which parameters the matching distance uses."""

    mode: str = "depth"  # depth (paper) | layer (whole shallow layers) | loss (published code) | deep (Table 5b)
    ratio: float = 0.0  # alpha: share of parameters dropped from the shallow end (0 = match all)


@dataclass
class DistillConfig:
    method: str = "tm"  # tm (MTT/DATM/PAD) | dc | dm
    ipc: int = 10  # images per class
    iterations: int = 10000  # outer updates of the synthetic set
    seed: int | None = None  # seed of the distillation alone (init, iteration draws); None = the run's seed.
    # Scores, experts and the evaluation keep the run's seed, so repeats over distill seeds stay paired.
    # initialisation and what is learned
    image_init: str = "correct"  # correct (real images an expert classifies correctly) | real | noise
    label_init: str = "soft"  # soft (mean logits of the correct experts) | expert (one expert's logits) | hard
    learn_labels: bool = True
    learn_lr: bool = True
    lr_images: float = 100.0  # SGD lr of the pixels
    momentum_images: float = 0.5
    lr_labels: float = 2.0  # SGD lr of the soft-label logits (lr_y)
    momentum_labels: float = 0.9
    lr_lr: float = 1e-5  # SGD lr of the learnable student lr
    momentum_lr: float = 0.5
    syn_lr: float = 0.01  # initial student lr (lr_teacher)
    batch_syn: int | None = None  # synthetic mini-batch per student step; None = whole set
    augment: bool = True  # DSA on every student step
    # trajectory matching
    syn_steps: int = 80  # N: student steps per iteration
    expert_epochs: int = 2  # M: target = start + M
    min_start_epoch: int = 0  # T-
    current_max_start_epoch: int = 10  # T: initial upper bound of the start epoch (exclusive)
    max_start_epoch: int = 20  # T+: final upper bound (exclusive)
    sequential: bool = True  # DATM's growing window; false = uniform in [T-, T+)
    expansion_end_iteration: int = 1000  # iteration at which the window reaches T+ (Interval*(T+-T))
    threshold: float = 1.0  # skip the update when the normalised matching loss exceeds this
    select: ParamSelectConfig = field(default_factory=ParamSelectConfig)
    # auto: plain if the full graph fits in unroll_budget_gib, else recompute | recompute (exact, memory of one
    # micro-batch step) | plain (exact, the full graph of all syn_steps, ~25 % faster)
    unroll: str = "auto"
    unroll_budget_gib: float = 4.0  # memory `auto` lets the full graph take (measured on one step x syn_steps)
    microbatch: int = 25  # student micro-batch in the unroll (0 = whole batch; BatchNorm nets: whole batch)
    label_model_epoch: int = -1  # expert checkpoint used for image/label init (-1 = last)
    max_experts: int | None = None  # use only the first N experts
    # gradient / distribution matching (dc, dm)
    outer_loop: int = 10  # DC: outer loops per iteration (fresh net each iteration)
    inner_loop: int = 50  # DC: network updates on the synthetic set between outer loops
    batch_real: int = 256  # DC/DM: real images per class per step
    net_lr: float = 0.01  # DC: lr of the network trained between outer loops
    net_momentum: float = 0.0  # DC: SGD momentum of that network (the official DC code: plain SGD, none)
    prune: PruneConfig = field(default_factory=PruneConfig)
    # bookkeeping
    checkpoint_every: int = 50  # iterations between resumable checkpoints
    eval_every: int = 0  # iterations between validation evaluations (needs data.val_per_class > 0)
    eval_epochs: int = 300  # training epochs of those validation evaluations
    grid_every: int = 500  # iterations between PNG grids of the images
    max_bad_steps: int = 20  # stop after this many consecutive non-finite losses/gradients
    loggers: list = field(default_factory=list)  # optional metric mirrors: tensorboard, wandb (metrics.jsonl always)


@dataclass
class EvalConfig:
    nets: list = field(default_factory=list)  # cross-architecture list; empty = the distillation net (net.name)
    runs: int = 5  # fresh networks per net (mean +- std over runs, n stated)
    epochs: int = 1000  # training epochs (lr x0.1 after epochs//2 + 1)
    batch: int = 128
    lr: float | None = None  # None = the learned lr of the distilled set (0.01 for baselines)
    momentum: float = 0.9
    weight_decay: float = 5e-4
    augment: bool = True  # DSA on every batch
    soft_labels: bool = True  # use the distilled soft labels (soft cross-entropy)
    baseline: bool = True  # also evaluate a random real subset of the same size
    kd_teacher: str | None = None  # knowledge-distillation evaluation: 'expert' or a checkpoint path
    kd_temperature: float = 4.0
    # speed only (results equal up to float rounding): forward/backward in chunks of this many images
    # (instance-norm nets; BatchNorm nets always use the whole batch; 0 = whole batch)
    microbatch: int = 25
    test_batch: int = 32  # images per forward pass when testing (cache-sized batches are ~2x faster on CPU)
    protocol: str = "tm"  # tm (the paper's: SGD, DSA, set labels) | sre2l (teacher relabel, KL; `sre2l:` section)


@dataclass
class Sre2lConfig:
    """SRe2L (squeeze, recover, relabel; docs/methods/sre2l.md). Used when distill.method is sre2l, and by
    eval.protocol sre2l. FIEX: experts.schedule (the experts' scheduler, in squeeze epochs) trains the teacher."""

    # squeeze: the teacher (net: the config's net, which must have batch norm)
    squeeze_epochs: int = 200
    squeeze_lr: float = 0.1  # SGD, cosine over squeeze_epochs (stepped per epoch)
    squeeze_momentum: float = 0.9
    squeeze_weight_decay: float = 5e-4
    squeeze_batch: int = 128
    squeeze_warmup: int = 0  # epochs of linear lr warm-up (Tiny: 5)
    squeeze_augment: bool = True  # random crop (pad 4 at 32 px) + horizontal flip
    # recover: images synthesised from the teacher
    recover_ipc: int | None = None  # images per class recovered (None = distill.ipc); eval takes the first ipc
    recover_batch: int | None = None  # classes per recover batch, one image each (None = all classes)
    iterations: int = 1000  # Adam steps per IPC index
    lr: float = 0.25  # Adam lr, cosine to 0 over `iterations`, betas (0.5, 0.9)
    bn_weight: float = 0.01  # alpha: weight of the BN-statistics term
    first_bn_weight: float = 10.0  # extra multiplier of the first (stem) BN layer
    jitter: int = 4  # circular roll by offsets in {0..jitter} (CIFAR) or {-jitter..jitter} (jitter_both)
    jitter_both: bool = False  # two-sided roll offsets (Tiny)
    crop: bool = False  # random-resized crop of the whole batch before the roll (Tiny)
    flip: bool = False  # random horizontal flip of the whole batch (Tiny)
    bn_stats: str = "teacher"  # teacher (its running stats) | subset (re-estimated on the FIEX-kept subset)
    storage: str = "float"  # float (lossless, default) | uint8 (truncated 8-bit pixels, like the published JPEGs)
    # relabel + evaluation (eval.protocol sre2l; eval.epochs / batch / runs / nets as usual)
    eval_optimizer: str = "adamw"  # adamw (CIFAR code) | sgd (Tiny code, momentum 0.9)
    eval_lr: float = 1e-3
    eval_weight_decay: float = 0.01
    eval_warmup: int = 0  # epochs of linear warm-up before the cosine schedule
    temperature: float = 30.0  # KL temperature
    kl_t2: bool = False  # multiply the KL by T^2 (Tiny code) or not (CIFAR code)
    mixup: bool = True  # mixup with lambda ~ Beta(mixup_alpha, mixup_alpha) on every batch (CIFAR code)
    mixup_alpha: float = 0.8
    teacher_mode: str = "train"  # train (the published CIFAR code: batch statistics) | eval (running statistics)
    teacher: str | None = None  # eval teacher: a squeeze folder or teacher.pt; None = the run's squeeze/


@dataclass
class SelectConfig:
    """Coreset baselines (`padistill select`, docs/methods/coresets.md): real training images kept per class."""

    # random | herding | kcenter | forgetting | glister | easy | hard | middle | full (the whole training split)
    method: str = "random"
    ipc: int | None = None  # images per class; None = distill.ipc (unless ratio is set)
    ratio: float | None = None  # fraction in (0, 1] of each class (its size before the validation hold-out)
    score: str = "el2n"  # easy / hard / middle: el2n | grand | uncertainty | loss from the scores stage
    features: str = "embedding"  # herding / kcenter: embedding (the selection net's) | pixels (no training)
    deepcore_compat: bool = False  # herding picks the farthest (argmax), glister without its update (DeepCore)
    never_learned: str = "zero"  # forgetting score of never-learned samples: zero (DeepCore) | inf (Toneva)
    # the selection net (herding, kcenter, forgetting, glister), trained from scratch without augmentation
    net: str | None = None  # None = the config's net (with its options)
    net_options: dict = field(default_factory=dict)  # options of select.net when it is set
    epochs: int = 40
    lr: float = 0.1  # constant; also glister's step size eta
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-4
    batch: int = 256


@dataclass
class Config:
    name: str = "run"  # run name (used for the output folder)
    seed: int = 0  # one seed for everything; derived generators per stage
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    data: DataConfig = field(default_factory=DataConfig)
    net: NetConfig = field(default_factory=NetConfig)
    scores: ScoresConfig = field(default_factory=ScoresConfig)
    experts: ExpertsConfig = field(default_factory=ExpertsConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    sre2l: Sre2lConfig = field(default_factory=Sre2lConfig)
    select: SelectConfig = field(default_factory=SelectConfig)


CHOICES: dict[str, tuple[str, ...]] = {
    "data.preprocess": ("zca", "normalize", "none"),
    "scores.method": ("el2n", "grand", "loss", "uncertainty", "forgetting", "file"),
    "experts.optimizer": ("gsam", "sgd"),
    "experts.save_dtype": ("float32", "float16"),
    "distill.method": ("tm", "dc", "dm", "sre2l"),
    "distill.unroll": ("auto", "recompute", "plain"),
    "distill.image_init": ("correct", "real", "noise"),
    "distill.label_init": ("soft", "expert", "hard"),
    "distill.select.mode": ("depth", "layer", "loss", "deep"),
    "distill.prune.mode": ("none", "hard", "easy"),
    "experts.prune.mode": ("none", "hard", "easy"),
    "experts.schedule.removal": ("oneshot", "gradual"),
    "eval.protocol": ("tm", "sre2l"),
    "sre2l.bn_stats": ("teacher", "subset"),
    "sre2l.storage": ("float", "uint8"),
    "sre2l.eval_optimizer": ("adamw", "sgd"),
    "sre2l.teacher_mode": ("train", "eval"),
    "select.method": ("random", "herding", "kcenter", "forgetting", "glister", "easy", "hard", "middle", "full"),
    "select.score": ("el2n", "grand", "uncertainty", "loss"),
    "select.features": ("embedding", "pixels"),
    "select.never_learned": ("zero", "inf"),
}

# --------------------------------------------------------------------------------------------------
# YAML loading (duplicate keys rejected)


class _StrictLoader(yaml.SafeLoader):
    pass


def _construct_mapping(loader: _StrictLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    seen: dict = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            mark = key_node.start_mark
            raise PadistillError(f"{mark.name}:{mark.line + 1}: duplicate key '{key}'")
        seen[key] = True
    return loader.construct_mapping(node, deep=deep)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def read_yaml(path: Path) -> dict:
    """A YAML mapping from `path` (strict: duplicate keys refused); one-line errors naming the file."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise PadistillError(f"{path}: cannot read config ({e.strerror})") from None
    except UnicodeDecodeError:
        raise PadistillError(f"{path}: not a UTF-8 text file (expected a YAML config)") from None
    try:
        stream = io.StringIO(text)
        stream.name = str(path)  # YAML marks (duplicate keys, syntax errors) then name the file
        data = yaml.load(stream, Loader=_StrictLoader) or {}
    except yaml.YAMLError as e:
        raise PadistillError(f"{path}: invalid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise PadistillError(f"{path}: expected a mapping at the top level")
    return data


# --------------------------------------------------------------------------------------------------
# presets


def presets_dir() -> Path:
    return Path(str(resources.files("padistill") / "configs"))


def yaml_names(root: Path) -> list[str]:
    """The YAML files under `root`, named by their path relative to it without the suffix (preset names)."""
    return sorted(str(p.relative_to(root).with_suffix("")) for p in root.rglob("*.yaml"))


def named_yaml(root: Path, name: str, what: str, listing: str) -> Path:
    """`root/<name>.yaml`, or a one-line error suggesting close names (`what`: 'preset', 'sweep preset')."""
    path = root / f"{name}.yaml"
    if not path.is_file():
        close = difflib.get_close_matches(name, yaml_names(root), n=3)
        hint = f" (did you mean {', '.join(close)}?)" if close else f" (see `{listing}`)"
        raise PadistillError(f"unknown {what} '{name}'{hint}")
    return path


def comment_header(path: Path) -> str:
    """The leading comment block of a YAML file (a preset's command and paper number)."""
    lines = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.startswith("#"):
            break
        lines.append(line.lstrip("# ").rstrip())
    return "\n".join(lines)


def list_presets() -> list[str]:
    return yaml_names(presets_dir())


def preset_path(name: str) -> Path:
    return named_yaml(presets_dir(), name, "preset", "padistill list presets")


def preset_header(name: str) -> str:
    """The leading comment block of a preset file (command and paper number)."""
    return comment_header(preset_path(name))


def _resolve_base(base: str, current: Path) -> Path:
    if base.endswith((".yaml", ".yml")):
        p = (current.parent / base).resolve()
        if not p.is_file():
            raise PadistillError(f"{current}: base file '{base}' not found")
        return p
    return preset_path(base)


def _load_layers(path: Path, chain: tuple[Path, ...] = ()) -> list[tuple[Path, dict]]:
    if path in chain:
        raise PadistillError(f"{path}: circular 'base:' chain")
    data = read_yaml(path)
    base = data.pop("base", None)
    layers: list[tuple[Path, dict]] = []
    if base is not None:
        if not isinstance(base, str):
            raise PadistillError(f"{path}: 'base' must be a preset name or a relative YAML path")
        layers = _load_layers(_resolve_base(base, path), chain + (path,))
    return layers + [(path, data)]


# --------------------------------------------------------------------------------------------------
# applying values with type checks


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _type_ok(value: Any, tp: Any) -> tuple[bool, Any]:
    """Check (and minimally coerce: int -> float) `value` against annotation `tp`."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        for arg in typing.get_args(tp):
            ok, v = _type_ok(value, arg)
            if ok:
                return True, v
        return False, value
    if tp is type(None):
        return value is None, value
    if tp is bool:
        return isinstance(value, bool), value
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool), value
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return True, float(value)
        if isinstance(value, str):  # YAML 1.1 reads `1e-5` (no dot) as a string; accept it as a number
            try:
                return True, float(value)
            except ValueError:
                return False, value
        return False, value
    if tp is str:
        return isinstance(value, str), value
    if tp is list or origin is list:
        if isinstance(value, str):
            return True, [value]
        return isinstance(value, list), value
    if tp is dict or origin is dict:
        return isinstance(value, dict), value
    return True, value


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if tp is type(None):
        return "null"
    return getattr(tp, "__name__", str(tp))


def _apply(obj: Any, data: dict, where: str, prefix: str = "") -> None:
    hints = _hints(type(obj))
    names = [f.name for f in dataclasses.fields(obj)]
    for key, value in data.items():
        dotted = f"{prefix}{key}"
        if key not in names:
            close = difflib.get_close_matches(str(key), names, n=1)
            hint = f" (did you mean '{prefix}{close[0]}'?)" if close else ""
            raise PadistillError(f"{where}: unknown config key '{dotted}'{hint}")
        current = getattr(obj, key)
        if dataclasses.is_dataclass(current):
            if not isinstance(value, dict):
                raise PadistillError(f"{where}: '{dotted}' must be a mapping of its fields")
            _apply(current, value, where, f"{dotted}.")
            continue
        ok, coerced = _type_ok(value, hints[key])
        if not ok:
            raise PadistillError(
                f"{where}: '{dotted}' expects {_type_name(hints[key])}, got {value!r}")
        setattr(obj, key, coerced)


def parse_override(text: str) -> tuple[list[str], Any]:
    if "=" not in text:
        raise PadistillError(f"--set {text}: expected section.key=value")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key:
        raise PadistillError(f"--set {text}: empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    return key.split("."), value


def _nest(path: list[str], value: Any) -> dict:
    out: Any = value
    for part in reversed(path):
        out = {part: out}
    return out


# Fields where .inf means "no limit": MTT never skips an update; the full unroll graph is always allowed.
_INF_OK = ("distill.threshold", "distill.unroll_budget_gib")


def _numbers(obj: Any, prefix: str = ""):
    """(dotted name, value) of every int/float field, sections included (not inside `options` dicts)."""
    for f in dataclasses.fields(obj):
        v = getattr(obj, f.name)
        if dataclasses.is_dataclass(v):
            yield from _numbers(v, f"{prefix}{f.name}.")
        elif isinstance(v, (int, float)) and not isinstance(v, bool):
            yield f"{prefix}{f.name}", v


def validate(cfg: Config) -> Config:
    """Cross-field checks with one-line messages naming the field."""
    for dotted, allowed in CHOICES.items():
        obj: Any = cfg
        for part in dotted.split("."):
            obj = getattr(obj, part)
        if obj not in allowed:
            raise PadistillError(f"config: '{dotted}' must be one of {', '.join(allowed)}; got {obj!r}")
    for dotted, v in _numbers(cfg):
        if isinstance(v, float) and not math.isfinite(v) and not (v == math.inf and dotted in _INF_OK):
            raise PadistillError(f"config: '{dotted}' must be a finite number; got {v}")
    d, e, s, ev = cfg.distill, cfg.experts, cfg.scores, cfg.eval
    positive = {"distill.ipc": d.ipc, "experts.epochs": e.epochs, "experts.batch": e.batch, "experts.num": e.num,
                "eval.runs": ev.runs, "eval.batch": ev.batch, "scores.models": s.models, "scores.batch": s.batch,
                "experts.microbatch": e.microbatch, "eval.test_batch": ev.test_batch,
                "distill.batch_real": d.batch_real, "distill.outer_loop": d.outer_loop,
                "distill.checkpoint_every": d.checkpoint_every, "distill.max_bad_steps": d.max_bad_steps}
    if d.max_experts is not None:
        positive["distill.max_experts"] = d.max_experts
    for k, v in positive.items():
        if v < 1:
            raise PadistillError(f"config: '{k}' must be >= 1; got {v}")
    nonneg = {"distill.iterations": d.iterations, "distill.syn_steps": d.syn_steps,
              "eval.epochs": ev.epochs, "distill.microbatch": d.microbatch, "scores.epochs": s.epochs,
              "data.val_per_class": cfg.data.val_per_class, "eval.microbatch": ev.microbatch,
              "distill.unroll_budget_gib": d.unroll_budget_gib, "distill.inner_loop": d.inner_loop,
              "distill.eval_every": d.eval_every, "distill.eval_epochs": d.eval_epochs,
              "distill.grid_every": d.grid_every, "experts.eval_every": e.eval_every,
              "distill.expansion_end_iteration": d.expansion_end_iteration,
              "distill.threshold": d.threshold,  # 0 skips every update; .inf never skips (MTT)
              # learning rates of the synthetic set's optimisers: 0 freezes that part (an ablation)
              "distill.lr_images": d.lr_images, "distill.lr_labels": d.lr_labels, "distill.lr_lr": d.lr_lr,
              "scores.weight_decay": s.weight_decay, "experts.weight_decay": e.weight_decay,
              "eval.weight_decay": ev.weight_decay, "experts.rho": e.rho, "experts.alpha": e.alpha,
              "experts.schedule.add_end_epoch": e.schedule.add_end_epoch,
              "experts.schedule.rm_epoch_first": e.schedule.rm_epoch_first,
              "experts.schedule.rm_epoch_second": e.schedule.rm_epoch_second}
    for k, v in nonneg.items():
        if v < 0:
            raise PadistillError(f"config: '{k}' must be >= 0; got {v}")
    # learning rates of networks trained by SGD, and ZCA's regulariser
    for k, v in {"scores.lr": s.lr, "experts.lr": e.lr, "distill.syn_lr": d.syn_lr, "distill.net_lr": d.net_lr,
                 "data.zca_eps": cfg.data.zca_eps}.items():
        if not v > 0:
            raise PadistillError(f"config: '{k}' must be > 0; got {v}")
    for k, v in {"scores.momentum": s.momentum, "experts.momentum": e.momentum, "eval.momentum": ev.momentum,
                 "distill.momentum_images": d.momentum_images, "distill.momentum_labels": d.momentum_labels,
                 "distill.momentum_lr": d.momentum_lr, "distill.net_momentum": d.net_momentum}.items():
        if not 0.0 <= v < 1.0:
            raise PadistillError(f"config: '{k}' must be in [0, 1); got {v}")
    if not re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", cfg.device.strip().lower()):
        raise PadistillError(f"config: 'device' must be auto, cpu, cuda or cuda:N; got {cfg.device!r}")
    if cfg.scores.method == "file" and not cfg.scores.file:
        raise PadistillError("config: 'scores.method' file needs 'scores.file' (an ordering file [C, N_c])")
    if d.label_model_epoch < -1:
        raise PadistillError(f"config: 'distill.label_model_epoch' must be >= 0 or -1 (the last); got "
                             f"{d.label_model_epoch}")
    for k, v in {"distill.select.ratio": d.select.ratio, "distill.prune.ratio": d.prune.ratio,
                 "experts.prune.ratio": e.prune.ratio,
                 "experts.schedule.init_ratio": e.schedule.init_ratio,
                 "experts.schedule.rm_easy_ratio_first": e.schedule.rm_easy_ratio_first,
                 "experts.schedule.rm_easy_ratio_second": e.schedule.rm_easy_ratio_second}.items():
        if not 0.0 <= v <= 1.0:
            raise PadistillError(f"config: '{k}' must be in [0, 1]; got {v}")
    sch = e.schedule
    if sch.enabled and sch.removal == "gradual" and sch.rm_epoch_second <= sch.rm_epoch_first:
        raise PadistillError("config: 'experts.schedule.removal' gradual ramps from rm_epoch_first to rm_epoch_second, "
                             f"so rm_epoch_second must be > rm_epoch_first; got {e.schedule.rm_epoch_first} and "
                             f"{e.schedule.rm_epoch_second}")
    if e.prune.mode != "none" and e.prune.ratio > 0 and d.method != "tm":
        raise PadistillError(f"config: 'experts.prune' applies to trajectory matching's experts only; for "
                             f"distill.method {d.method} use 'distill.prune' (DC/DM) or 'experts.schedule' (SRe2L)")
    if e.prune.mode != "none" and e.prune.ratio >= 1.0:
        raise PadistillError(f"config: 'experts.prune.ratio' must be < 1 (something must be trained on); got "
                             f"{e.prune.ratio}")
    if d.select.ratio >= 1.0:
        raise PadistillError("config: 'distill.select.ratio' must be < 1 (something must be matched)")
    if d.method == "tm":
        if d.expert_epochs < 1:
            raise PadistillError("config: 'distill.expert_epochs' must be >= 1")
        if not d.min_start_epoch < d.max_start_epoch:
            raise PadistillError("config: 'distill.min_start_epoch' must be < 'distill.max_start_epoch'")
        if d.sequential and not d.min_start_epoch < d.current_max_start_epoch <= d.max_start_epoch:
            raise PadistillError("config: need min_start_epoch < current_max_start_epoch <= max_start_epoch")
        if d.max_start_epoch - 1 + d.expert_epochs > e.epochs:
            raise PadistillError(
                f"config: start epochs up to {d.max_start_epoch - 1} + expert_epochs {d.expert_epochs} "
                f"exceed experts.epochs {e.epochs}")
    if d.method != "tm" and d.select.mode in ("loss", "deep") and d.select.ratio > 0:
        raise PadistillError(f"config: 'distill.select.mode' {d.select.mode} is defined for trajectory matching only; "
                             "use depth or layer with dc/dm")
    if d.method == "dm" and d.select.ratio > 0:
        _check_dm_select(cfg)
    if d.batch_syn is not None and d.batch_syn < 1:
        raise PadistillError("config: 'distill.batch_syn' must be >= 1 or null")
    from padistill.utils.loggers import LOGGERS

    for name in d.loggers:
        if name not in LOGGERS:
            raise PadistillError(f"config: 'distill.loggers' entries must be one of {', '.join(LOGGERS)}; got {name!r}")
    if not cfg.eval.nets:  # the default: evaluate on the network the set was distilled with
        cfg.eval.nets = [cfg.net.name]
    if not cfg.eval.kd_temperature > 0:
        raise PadistillError(f"config: 'eval.kd_temperature' must be > 0; got {cfg.eval.kd_temperature}")
    if cfg.eval.lr is not None and not cfg.eval.lr > 0:
        raise PadistillError(f"config: 'eval.lr' must be > 0 or null; got {cfg.eval.lr}")
    if d.method == "sre2l" or cfg.eval.protocol == "sre2l":
        _validate_sre2l(cfg)
    _validate_select(cfg.select)
    return cfg


def _validate_sre2l(cfg: Config) -> None:
    """The `sre2l:` section (and distill.ipc against the recover budget, see sre2l.settings.recover_ipc)."""
    s, d = cfg.sre2l, cfg.distill
    for k in ("squeeze_epochs", "squeeze_batch", "iterations"):
        if getattr(s, k) < 1:
            raise PadistillError(f"config: 'sre2l.{k}' must be >= 1; got {getattr(s, k)}")
    for k in ("squeeze_warmup", "eval_warmup", "jitter", "bn_weight", "first_bn_weight", "squeeze_weight_decay",
              "eval_weight_decay"):
        if getattr(s, k) < 0:
            raise PadistillError(f"config: 'sre2l.{k}' must be >= 0; got {getattr(s, k)}")
    for k in ("squeeze_lr", "lr", "eval_lr", "temperature", "mixup_alpha"):
        if not getattr(s, k) > 0:
            raise PadistillError(f"config: 'sre2l.{k}' must be > 0; got {getattr(s, k)}")
    if not 0.0 <= s.squeeze_momentum < 1.0:
        raise PadistillError(f"config: 'sre2l.squeeze_momentum' must be in [0, 1); got {s.squeeze_momentum}")
    if s.squeeze_warmup >= s.squeeze_epochs:
        raise PadistillError("config: 'sre2l.squeeze_warmup' must be < 'sre2l.squeeze_epochs'")
    if s.recover_ipc is not None and s.recover_ipc < 1:
        raise PadistillError(f"config: 'sre2l.recover_ipc' must be >= 1 or null; got {s.recover_ipc}")
    if s.recover_batch is not None and s.recover_batch < 1:
        raise PadistillError(f"config: 'sre2l.recover_batch' must be >= 1 or null; got {s.recover_batch}")
    budget = s.recover_ipc if s.recover_ipc is not None else d.ipc
    if d.method == "sre2l":
        if d.ipc > budget:
            raise PadistillError(f"config: 'distill.ipc' {d.ipc} exceeds 'sre2l.recover_ipc' {budget} "
                                 "(the images recovered per class); raise sre2l.recover_ipc")
        if cfg.data.preprocess not in ("normalize", "none"):
            raise PadistillError(f"config: SRe2L recovers images in a per-channel model space; 'data.preprocess' "
                                 f"must be normalize or none, got {cfg.data.preprocess!r}")
        if s.bn_stats == "subset" and (d.prune.mode == "none" or d.prune.ratio <= 0):
            raise PadistillError("config: 'sre2l.bn_stats' subset re-estimates BN statistics on the FIEX-kept "
                                 "subset, which 'distill.prune.mode' (hard | easy) and 'distill.prune.ratio' > 0 "
                                 "define; set them or use bn_stats teacher")


def _validate_select(sc: SelectConfig) -> None:
    if sc.ipc is not None and sc.ipc < 1:
        raise PadistillError(f"config: 'select.ipc' must be >= 1 or null; got {sc.ipc}")
    if sc.ipc is not None and sc.ratio is not None:
        raise PadistillError(f"config: give 'select.ipc' ({sc.ipc}) or 'select.ratio' ({sc.ratio}), not both "
                             "(set the other to null)")
    if sc.ratio is not None and not 0.0 < sc.ratio <= 1.0:
        raise PadistillError(f"config: 'select.ratio' must be in (0, 1] (a fraction of each class); got {sc.ratio}")
    for k, v in {"select.epochs": sc.epochs, "select.batch": sc.batch}.items():
        if v < 1:
            raise PadistillError(f"config: '{k}' must be >= 1; got {v}")
    if not sc.lr > 0:
        raise PadistillError(f"config: 'select.lr' must be > 0; got {sc.lr}")
    if not 0.0 <= sc.momentum < 1.0:
        raise PadistillError(f"config: 'select.momentum' must be in [0, 1); got {sc.momentum}")
    if sc.weight_decay < 0:
        raise PadistillError(f"config: 'select.weight_decay' must be >= 0; got {sc.weight_decay}")
# (classes, channels, image side) of the datasets whose shape is known before loading them
_KNOWN_SHAPES = {"cifar10": (10, 3, 32), "cifar100": (100, 3, 32), "tinyimagenet": (200, 3, 64), "tiny": (200, 3, 64)}


def _check_dm_select(cfg: Config) -> None:
    """DM's FIEM must leave an output channel to match on the configured net (refused here for the datasets whose
    shape is known; the distillation stage checks any other dataset on its real shape before it starts)."""
    shape = _KNOWN_SHAPES.get(cfg.data.name.strip().lower().replace("-", "").replace("_", ""))
    if shape is None:
        return
    from padistill.filters.params import dm_feature_selection
    from padistill.nets import build

    classes, channels, side = shape
    model = build(cfg.net.name, num_classes=classes, channels=channels, im_size=(side, side), seed=0,
                  **cfg.net.options)
    dm_feature_selection(model, cfg.distill.select.mode, cfg.distill.select.ratio)


def load_config(preset: str | None = None, path: str | Path | None = None,
                overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Resolve a config: defaults <- preset/file (with its `base:` chain) <- `--set` overrides."""
    cfg = Config()
    layers: list[tuple[Path, dict]] = []
    if preset is not None and path is not None:
        raise PadistillError("give either a preset or a config file, not both")
    if preset is not None:
        layers = _load_layers(preset_path(preset))
    elif path is not None:
        p = Path(path)
        if not p.is_file():
            # allow `padistill run pad/cifar10-ipc10` as a preset name too
            if not str(path).endswith((".yaml", ".yml")):
                layers = _load_layers(preset_path(str(path)))
            else:
                raise PadistillError(f"{p}: config file not found")
        else:
            layers = _load_layers(p.resolve())
    for where, data in layers:
        _apply(cfg, data, str(where))
    for text in overrides:
        keys, value = parse_override(text)
        _apply(cfg, _nest(keys, value), f"--set {text}")
    return validate(cfg)


def to_dict(cfg: Any) -> dict:
    return dataclasses.asdict(cfg)


def from_dict(data: dict, where: str = "config") -> Config:
    cfg = Config()
    _apply(cfg, data, where)
    return validate(cfg)


def apply_overrides(cfg, overrides) -> Config:
    """`a.b=c` strings applied to a resolved config (same rules as `--set`)."""
    for text in overrides or ():
        keys, value = parse_override(text)
        d = to_dict(cfg)
        node = d
        for k in keys[:-1]:
            if not isinstance(node.get(k), dict):
                node[k] = {}
            node = node[k]
        node[keys[-1]] = value
        cfg = from_dict(d, where=f"--set {text}")
    return cfg


def dump_yaml(cfg: Config) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False, default_flow_style=False)
