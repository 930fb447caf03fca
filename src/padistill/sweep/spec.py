"""Sweep specs: a base config, common overrides, and a grid or a list of named cells (`padistill sweep`).

A spec is a YAML file (or a shipped sweep preset, `padistill sweep --list`):

    base: cpu/cifar10-ipc1          # config preset name, or a YAML config path relative to the spec
    name: modules-ipc1              # optional (default: the file name); the default output folder
    set:                            # overrides applied to every cell (dotted keys, YAML values)
      distill.iterations: 300
    cells:                          # EITHER named cells, each a mapping of dotted overrides ...
      datm: {}
      pad: {experts.schedule.enabled: true, distill.select.ratio: 0.25}
    grid:                           # ... OR a grid: every combination of the listed values
      distill.select.ratio: [0, 0.25, 0.5]
    baseline: datm                  # the cell every other cell is compared with (paired differences)
    distill_seeds: 1                # distillations per cell (distill.seed = seed + k for repeat k >= 1)
    random_baseline: true           # evaluate a random real subset once, in the baseline cell

Grid cells are named `<last key part>=<value>` (joined by `,` for several keys), e.g. `ratio=0.25`.
Everything is resolved and validated before any work: unknown keys, values of the wrong type, an empty grid, a
baseline that is not a cell, or a cell config the stages would refuse are one-line errors naming the cell and
the key. Order of precedence: base preset <- `set` <- command-line `--set` <- the cell's own overrides.
"""

from __future__ import annotations

import copy
import itertools
import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from padistill.config import (
    Config,
    _apply,
    _load_layers,
    comment_header,
    named_yaml,
    parse_override,
    preset_path,
    validate,
    yaml_names,
)
from padistill.errors import PadistillError

TOP_KEYS = ("base", "name", "set", "cells", "grid", "baseline", "distill_seeds", "random_baseline")
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+=,-]*")


def presets_root() -> Path:
    return Path(str(resources.files("padistill") / "sweep" / "presets"))


def list_sweep_presets() -> list[str]:
    return yaml_names(presets_root())


def sweep_preset_path(name: str) -> Path:
    return named_yaml(presets_root(), name, "sweep preset", "padistill sweep --list")


def sweep_preset_header(path: Path) -> str:
    return comment_header(path)


@dataclass
class Replicate:
    """One distillation of a cell (repeat k of `distill_seeds`) and its evaluation."""

    index: int
    config: Config
    folder: str  # relative to the sweep folder: cells/<name> (k = 0) or cells/<name>/seed-<k>


@dataclass
class Cell:
    name: str
    overrides: dict  # dotted key -> value (the cell's own)
    replicates: list[Replicate] = field(default_factory=list)
    values: dict = field(default_factory=dict)  # grid cells: dotted key -> value

    @property
    def config(self) -> Config:
        return self.replicates[0].config


@dataclass
class Spec:
    name: str
    source: str  # the file, or `preset:<name>`
    base: str
    common: dict
    cells: list[Cell]
    baseline: str
    distill_seeds: int
    random_baseline: bool
    grid_keys: list[str]
    raw: dict

    def cell(self, name: str) -> Cell:
        return next(c for c in self.cells if c.name == name)


def format_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if v is None:
        return "null"
    if isinstance(v, float) and v.is_integer():
        return str(int(v)) if abs(v) < 1e15 else str(v)
    return str(v)


def _dotted(mapping: Any, where: str) -> dict:
    if mapping is None:
        return {}
    if not isinstance(mapping, dict):
        raise PadistillError(f"{where}: expected a mapping of dotted config keys to values, got "
                             f"{type(mapping).__name__}")
    for k in mapping:
        if not isinstance(k, str) or not k.strip():
            raise PadistillError(f"{where}: keys must be dotted config keys like distill.ipc; got {k!r}")
    return dict(mapping)


def _nest(key: str, value: Any) -> dict:
    out: Any = copy.deepcopy(value)
    for part in reversed(key.split(".")):
        out = {part: out}
    return out


def _apply_overrides(cfg: Config, overrides: dict, where: str) -> None:
    for key, value in overrides.items():
        _apply(cfg, _nest(key, value), where)


def _base_layers(base: str, spec_dir: Path | None):
    if not isinstance(base, str) or not base.strip():
        raise PadistillError("'base' must name a config preset or a YAML config file")
    if base.endswith((".yaml", ".yml")):
        path = (spec_dir / base) if spec_dir is not None and not Path(base).is_absolute() else Path(base)
        if not path.is_file():
            raise PadistillError(f"base config '{base}' not found (looked for {path})")
        return _load_layers(path.resolve())
    return _load_layers(preset_path(base))


def _read_spec_file(path: Path) -> dict:
    from padistill.config import read_yaml

    return read_yaml(path)


def load_spec(spec: str | None = None, preset: str | None = None, cli_overrides: list[str] | tuple = (),
              distill_seeds: int | None = None) -> Spec:
    """Read, resolve and validate a sweep spec (a file path or a shipped preset name)."""
    if (spec is None) == (preset is None):
        raise PadistillError("sweep: give a spec file or --preset NAME (one of them)")
    if preset is not None:
        path = sweep_preset_path(preset)
        source, default_name = f"preset:{preset}", preset.replace("/", "-")
    else:
        path = Path(spec)
        if not path.is_file():
            if not str(spec).endswith((".yaml", ".yml")) and (presets_root() / f"{spec}.yaml").is_file():
                return load_spec(preset=str(spec), cli_overrides=cli_overrides, distill_seeds=distill_seeds)
            raise PadistillError(f"{path}: sweep spec not found")
        source, default_name = str(path), path.stem
    where = str(path) if preset is None else f"sweep preset {preset}"
    raw = _read_spec_file(path)
    unknown = [k for k in raw if k not in TOP_KEYS]
    if unknown:
        import difflib

        close = difflib.get_close_matches(str(unknown[0]), TOP_KEYS, n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else f" (expected {', '.join(TOP_KEYS)})"
        raise PadistillError(f"{where}: unknown spec key '{unknown[0]}'{hint}")
    if "base" not in raw:
        raise PadistillError(f"{where}: 'base' is required (the config preset every cell starts from)")
    name = raw.get("name", default_name)
    if not isinstance(name, str) or not NAME_RE.fullmatch(name.replace("/", "-")):
        raise PadistillError(f"{where}: 'name' must be a plain name (letters, digits, . _ + = , -); got {name!r}")
    seeds = raw.get("distill_seeds", 1) if distill_seeds is None else distill_seeds
    if isinstance(seeds, bool) or not isinstance(seeds, int) or seeds < 1:
        raise PadistillError(f"{where}: 'distill_seeds' must be an integer >= 1; got {seeds!r}")
    random_baseline = raw.get("random_baseline", True)
    if not isinstance(random_baseline, bool):
        raise PadistillError(f"{where}: 'random_baseline' must be true or false; got {random_baseline!r}")
    common = _dotted(raw.get("set"), f"{where}: 'set'")
    has_cells, has_grid = "cells" in raw, "grid" in raw
    if has_cells == has_grid:
        raise PadistillError(f"{where}: give either 'cells' (named cells) or 'grid' (values per key), not "
                             f"{'both' if has_cells else 'neither'}")
    cells: list[tuple[str, dict, dict]] = []
    grid_keys: list[str] = []
    if has_cells:
        if not isinstance(raw["cells"], dict) or not raw["cells"]:
            raise PadistillError(f"{where}: 'cells' must be a non-empty mapping of cell name -> overrides")
        for cname, ov in raw["cells"].items():
            cname = str(cname)
            if not NAME_RE.fullmatch(cname):
                raise PadistillError(f"{where}: cell name {cname!r} must be a plain name (letters, digits, "
                                     ". _ + = , -)")
            cells.append((cname, _dotted(ov, f"{where}: cell '{cname}'"), {}))
    else:
        grid = _dotted(raw["grid"], f"{where}: 'grid'")
        if not grid:
            raise PadistillError(f"{where}: 'grid' is empty; list at least one key with its values")
        for key, values in grid.items():
            if not isinstance(values, list) or not values:
                raise PadistillError(f"{where}: grid key '{key}' needs a non-empty list of values; got {values!r}")
            if len({format_value(v) for v in values}) != len(values):
                raise PadistillError(f"{where}: grid key '{key}' lists a value twice: {values!r}")
        grid_keys = list(grid)
        short = [k.split(".")[-1] for k in grid_keys]
        if len(set(short)) != len(short):  # two keys ending in the same word: name cells by the full key
            short = list(grid_keys)
        for combo in itertools.product(*(grid[k] for k in grid_keys)):
            values = dict(zip(grid_keys, combo))
            cname = ",".join(f"{s}={format_value(v)}" for s, v in zip(short, combo))
            cells.append((cname, values, values))
    baseline = raw.get("baseline")
    names = [c[0] for c in cells]
    if baseline is None:
        raise PadistillError(f"{where}: 'baseline' is required: the cell the others are compared with (one of "
                             f"{', '.join(names)})")
    baseline = format_value(baseline) if not isinstance(baseline, str) else baseline
    if baseline not in names:
        raise PadistillError(f"{where}: baseline '{baseline}' is not a cell of this sweep (cells: "
                             f"{', '.join(names)})")
    if seeds > 1:
        for cname, ov, _ in cells:
            if "distill.seed" in ov or "distill.seed" in common:
                raise PadistillError(f"{where}: cell '{cname}' sets distill.seed, which distill_seeds={seeds} "
                                     "decides; remove one of them")

    spec_dir = path.parent if preset is None else None
    try:
        layers = _base_layers(raw["base"], spec_dir)
    except PadistillError as e:
        raise PadistillError(f"{where}: {e}") from None
    built: list[Cell] = []
    for cname, ov, values in cells:
        cell = Cell(cname, ov, values=values)
        for k in range(seeds):
            cfg = Config()
            cwhere = f"{where}: cell '{cname}'"
            try:
                for lwhere, data in layers:
                    _apply(cfg, data, str(lwhere))
                _apply_overrides(cfg, common, f"{where}: 'set'")
                for text in cli_overrides:
                    keys, value = parse_override(text)
                    _apply_overrides(cfg, {".".join(keys): value}, f"--set {text}")
                _apply_overrides(cfg, ov, cwhere)
                if k > 0:
                    cfg.distill.seed = cfg.seed + k
                # the random real subset is the same for every cell (same seed, same size): evaluate it once
                cfg.eval.baseline = random_baseline and cname == baseline and k == 0
                validate(cfg)
            except PadistillError as e:
                msg = str(e)
                raise PadistillError(msg if msg.startswith(cwhere) else f"{cwhere}: {msg}") from None
            cfg.name = f"{name}-{cname}" if k == 0 else f"{name}-{cname}-seed{k}"
            folder = f"cells/{cname}" if k == 0 else f"cells/{cname}/seed-{k}"
            cell.replicates.append(Replicate(k, cfg, folder))
        built.append(cell)
    return Spec(name=name.replace("/", "-"), source=source, base=raw["base"], common=common, cells=built,
                baseline=baseline, distill_seeds=seeds, random_baseline=random_baseline, grid_keys=grid_keys,
                raw=raw)

