"""JSON config loading (with ``_base_`` inheritance), dotted-path overrides, defaults and checks of the top level.
Registered components resolve their own derived values (``Registry.resolve_block``); method-owned top-level sections (e.g. ``distill``) are validated by whoever registers them:
``resolve_config`` receives them as ``sections``."""
from __future__ import annotations

import copy
import json
import math
import os
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

from longtail.utils.defaults import FEW_THRESHOLD, MANY_THRESHOLD, SAVE_DIR, TEST_BATCH_SIZE
from longtail.utils.errors import ConfigError
from longtail.utils.resources import find_shipped

# Top-level keys every config may contain; other keys must be sections registered by a method (or are typos).
CORE_KEYS = {
    "name": str, "seed": int, "n_gpu": int, "arch": dict, "data_loader": dict, "loss": dict,
    "optimizer": dict, "lr_scheduler": dict, "combiner": dict, "finetuning_combiner": dict,
    "trainer": dict, "evaluation": dict, "description": str,
    "stage": (dict, str),  # how the run trains: {"type": "sgd"} (default) or a registered non-SGD stage
    "imports": list,       # extra plugin modules to import before building (your own methods)
}
REQUIRED_KEYS = ("name", "arch", "data_loader", "loss", "optimizer", "trainer")
# Short names of the keys people override most (train.py flags and API keyword arguments); a method adds its own with
# longtail.registry.register_cli_flag.
SHORTCUT_KEYS = {
    "seed": "seed", "epochs": "trainer.epochs", "batch_size": "data_loader.args.batch_size", "lr": "optimizer.args.lr",
    "num_experts": "arch.args.num_experts", "data_dir": "data_loader.args.data_dir", "save_dir": "trainer.save_dir",
}

# Trainer options with their defaults; every speed switch lives here or in arch.args.
TRAINER_DEFAULTS: dict[str, Any] = {
    "epochs": 1,
    "save_dir": SAVE_DIR,
    "save_period": 0,          # 0: only last.pth (and best.pth when monitoring)
    "val_period": 0,           # validate every N epochs (and after the last); 0: only after the last
    "monitor": "off",          # "max val_accuracy" writes best.pth; off by default (no test-set selection)
    "log_interval": 20,        # steps between progress-bar refreshes (each one is a host sync)
    "accumulate_steps": 1,     # micro-batches per optimizer step: effective batch = batch_size x accumulate_steps
    "cache_features": False,   # frozen backbone: compute the training set's features once, train the heads on them
    "channels_last": True,
    "amp": "off",              # off | bf16 | fp16 | auto (bf16 on GPUs that support it, fp32 elsewhere)
    "compile": False,          # false | true | an inductor mode (default, reduce-overhead = CUDA graphs,
                               # max-autotune) | another torch.compile backend such as "aot_eager"
    "tensorboard": True,
    "deterministic": False,
    "sync_batchnorm": False,   # DDP only: BN statistics over the global batch instead of per process
    "parallel": "ddp",         # n_gpu > 1 GPUs: ddp (train.py starts one process per GPU) | data_parallel
}
EVALUATION_DEFAULTS: dict[str, Any] = {
    "many_threshold": MANY_THRESHOLD,  # many-shot: n_c > many_threshold
    "few_threshold": FEW_THRESHOLD,    # few-shot: n_c < few_threshold
    "test_batch_size": TEST_BATCH_SIZE,
    "source_prior": "uniform",  # prior the model's posteriors assume (EM test-prior estimation): uniform | train | train^g
    "test_time": {},           # settings of the test-time procedure (e.g. SADE's aggregation, methods/sade.py)
    "views": {"type": "center", "args": {}},  # how each test image is seen (TEST_VIEWS): --set evaluation.views.type=five_crop
}


BASE_KEY = "_base_"      # a config names the files it inherits from (paths relative to itself)
DELETE_KEY = "_delete_"  # inside an object: replace the inherited object instead of merging into it


def load_json(path: str | Path) -> dict[str, Any]:
    """Read one JSON object from a file with a clear error for missing files, syntax errors and non-objects."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path} (pass an existing JSON file with -c)")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path} is not valid JSON: line {exc.lineno} column {exc.colno}: {exc.msg}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path} is not a text file (a JSON config is expected)") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a JSON object {{...}} (a config), not a {type(data).__name__}")
    return data


def merge_configs(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """Deep merge: objects merge key by key, anything else (lists included) is replaced; an object holding
    ``"_delete_": true`` replaces the inherited object whole."""
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and value.get(DELETE_KEY):
            out[key] = {k: copy.deepcopy(v) for k, v in value.items() if k != DELETE_KEY}
        elif isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge_configs(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _strip_delete_markers(node: Any) -> Any:
    """Drop ``_delete_`` markers left in objects that had nothing to replace."""
    if isinstance(node, dict):
        return {k: _strip_delete_markers(v) for k, v in node.items() if k != DELETE_KEY}
    return node


def load_config(path: str | Path, _chain: tuple[Path, ...] = ()) -> dict[str, Any]:
    """Read a config file and everything it inherits: ``"_base_": "a.json"`` or ``["a.json", "b.json"]`` (paths
    relative to the file; later bases override earlier ones, the file's own keys override all bases). A shipped config
    may be named from any folder: ``fmnist_ir100/balpoe.json`` or ``configs/fmnist_ir100/balpoe.json``."""
    path = find_shipped(path, "configs") if not _chain else Path(path)
    resolved = path.resolve()
    if resolved in _chain:
        cycle = " -> ".join(str(p) for p in (*_chain, resolved))
        raise ConfigError(f"config inheritance cycle: {cycle}")
    own = load_json(path)
    bases = own.pop(BASE_KEY, [])
    if isinstance(bases, str):
        bases = [bases]
    if not isinstance(bases, list) or not all(isinstance(b, str) for b in bases):
        raise ConfigError(f"{path}: '{BASE_KEY}' must be a file name or a list of file names, got {bases!r}")
    merged: dict[str, Any] = {}
    for base in bases:
        base_path = path.parent / base
        if not base_path.is_file():
            raise ConfigError(f"{path}: base config {base!r} not found (looked for {base_path})")
        merged = merge_configs(merged, load_config(base_path, (*_chain, resolved)))
    return _strip_delete_markers(merge_configs(merged, own))


def parse_cli_value(text: str) -> Any:
    """Turn a command-line string into a JSON value (numbers, lists, booleans), else keep the string."""
    lowered = text.strip().lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    if lowered == "null":  # "none" stays a string: it is a registered name (e.g. augment none)
        return None
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _same_kind(old: Any, new: Any) -> bool:
    """Whether an override keeps the JSON type of the value it replaces (ints may become floats)."""
    if old is None or new is None:
        return True
    if isinstance(old, bool) or isinstance(new, bool):
        return isinstance(old, bool) and isinstance(new, bool)
    if isinstance(old, (int, float)) and isinstance(new, (int, float)):
        return not (isinstance(old, int) and isinstance(new, float) and not new.is_integer())
    if isinstance(old, str) and isinstance(new, (list, str)):
        return True  # e.g. tau_list "limits" <-> [0, 1, 2]
    if isinstance(old, list) and isinstance(new, (list, str)):
        return True
    return type(old) is type(new)


def set_by_path(config: dict[str, Any], dotted: str, value: Any) -> None:
    """Set ``a.b.c`` in a nested dict, creating missing leaf keys; type changes of existing values are errors."""
    keys = dotted.split(".")
    node = config
    for i, key in enumerate(keys[:-1]):
        if key not in node:
            node[key] = {}
        if not isinstance(node[key], dict):
            raise ConfigError(f"cannot set '{dotted}': '{'.'.join(keys[:i + 1])}' is a {type(node[key]).__name__}, not an object")
        node = node[key]
    leaf = keys[-1]
    if leaf in node and not _same_kind(node[leaf], value):
        raise ConfigError(
            f"'{dotted}' must be of type {type(node[leaf]).__name__} (currently {node[leaf]!r}), got {value!r}"
        )
    node[leaf] = value


def get_by_path(config: dict[str, Any], dotted: str, default: Any = None) -> Any:
    """Read ``a.b.c`` from a nested dict, returning ``default`` when any part is missing."""
    node: Any = config
    for key in dotted.split("."):
        if not isinstance(node, dict) or key not in node:
            return default
        node = node[key]
    return node


SectionValidator = Callable[[Any, dict[str, Any]], Any]


def resolve_config(config: dict[str, Any], sections: Mapping[str, SectionValidator] | None = None) -> dict[str, Any]:
    """Validate the top level, fill defaults and expand derived values once; returns a new dict.

    ``sections`` maps the extra top-level keys a method owns to a validator ``(block, config) -> block``.
    """
    config = copy.deepcopy(config)
    if not isinstance(config, dict):
        raise ConfigError(f"a config must be a JSON object, got {type(config).__name__}")
    sections = dict(sections or {})
    unknown = sorted(set(config) - set(CORE_KEYS) - set(sections))
    if unknown:
        raise ConfigError(f"unknown top-level config key(s): {', '.join(unknown)}. "
                          f"Valid keys: {', '.join(sorted(set(CORE_KEYS) | set(sections)))}")
    missing = [k for k in REQUIRED_KEYS if k not in config]
    if missing:
        raise ConfigError(f"config is missing required section(s): {', '.join(missing)}")
    for key, kind in CORE_KEYS.items():
        if key in config and (not isinstance(config[key], kind) or (kind is int and isinstance(config[key], bool))):
            kinds = " or ".join(k.__name__ for k in (kind if isinstance(kind, tuple) else (kind,)))
            raise ConfigError(f"top-level '{key}' must be a {kinds}, got {config[key]!r}")
    config.setdefault("seed", 1)
    config.setdefault("n_gpu", 1)
    _fill_defaults(config, "trainer", TRAINER_DEFAULTS)
    trainer = config["trainer"]
    if trainer["amp"] not in ("off", "bf16", "fp16", "auto"):
        raise ConfigError(f"trainer.amp must be 'off', 'bf16', 'fp16' or 'auto' (bf16 on GPUs, fp32 on CPUs), got "
                          f"{trainer['amp']!r}")
    if trainer["parallel"] not in ("ddp", "data_parallel"):
        raise ConfigError(f"trainer.parallel must be 'ddp' (one process per GPU) or 'data_parallel', got "
                          f"{trainer['parallel']!r}")
    _fill_defaults(config.setdefault("evaluation", {}), None, EVALUATION_DEFAULTS, where="evaluation")
    for key, validate in sections.items():
        if key in config:
            config[key] = validate(config[key], config)
    check_finite(config)
    check_ranges(config)
    return config


def check_finite(node: Any, where: str = "") -> None:
    """Every number of the config is finite (nan / inf anywhere is a typo or a broken script)."""
    if isinstance(node, dict):
        for key, value in node.items():
            check_finite(value, f"{where}.{key}" if where else str(key))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            check_finite(value, f"{where}[{i}]")
    elif isinstance(node, float) and not math.isfinite(node):
        raise ConfigError(f"'{where}' is {node}: every number in a config must be finite")


# (dotted key, smallest allowed value, strict) for values whose sign or range the code relies on
RANGES = [("trainer.epochs", 1, False), ("trainer.save_period", 0, False), ("trainer.val_period", 0, False),
          ("trainer.log_interval", 1, False), ("trainer.accumulate_steps", 1, False), ("evaluation.test_batch_size", 1, False), ("optimizer.args.lr", 0, False),
          ("optimizer.args.weight_decay", 0, False), ("optimizer.args.momentum", 0, False)]


def check_ranges(config: dict[str, Any]) -> None:
    """Values outside their meaningful range are errors that name the key (e.g. --epochs 0)."""
    for key, low, strict in RANGES:
        value = get_by_path(config, key)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and (value <= low if strict else value < low):
            raise ConfigError(f"'{key}' must be {'>' if strict else '>='} {low}, got {value}")


def _fill_defaults(config: dict[str, Any], key: str | None, defaults: dict[str, Any], where: str | None = None) -> None:
    """Check the keys and value kinds of ``config[key]`` (or ``config`` itself) against ``defaults`` and fill gaps."""
    block = config[key] if key is not None else config
    where = where or key
    unknown = sorted(set(block) - set(defaults))
    if unknown:
        raise ConfigError(f"unknown key(s) {where}.{f', {where}.'.join(unknown)}. Valid keys: {', '.join(sorted(defaults))}")
    for name, default in defaults.items():
        block.setdefault(name, copy.deepcopy(default))
        value = block[name]
        if (name == "compile" and isinstance(value, str)) or (name == "views" and isinstance(value, (str, dict))):
            continue
        if not _same_kind(default, value) or (isinstance(default, int) and isinstance(value, float)):
            raise ConfigError(f"'{where}.{name}' must be of type {type(default).__name__}, got {value!r}")


def parse_set_items(items: Iterable[str], flag: str = "--set") -> list[tuple[str, Any]]:
    """``["a.b=1", "c=[1,2]"]`` -> ``[("a.b", 1), ("c", [1, 2])]`` (values parsed as JSON when they are JSON)."""
    pairs = []
    for item in items:
        if "=" not in item or not item.split("=", 1)[0].strip():
            raise ConfigError(f"{flag} expects KEY=VALUE (e.g. {flag} trainer.epochs=5), got {item!r}")
        key, value = item.split("=", 1)
        pairs.append((key.strip(), parse_cli_value(value)))
    return pairs


def apply_overrides(config: dict[str, Any], pairs: Iterable[tuple[str, Any]]) -> dict[str, Any]:
    """Set every dotted key of ``pairs`` in ``config`` (in place; returns it)."""
    for key, value in pairs:
        set_by_path(config, key, value)
    return config


def config_stem(name: str) -> str:
    """A filesystem-safe version of a config name."""
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


# Overrides that do not change what is trained (where data and runs live, logging, paths of earlier stages' files):
# they do not rename the run.
NEUTRAL_KEYS = ("seed", "name", "description", "data_loader.args.data_dir", "data_loader.args.num_workers",
                "data_loader.args.txt_dir", "trainer.save_dir", "trainer.tensorboard", "trainer.log_interval")
NEUTRAL_SUFFIXES = (".checkpoint", ".checkpoints", ".base.args.data_dir")


def run_name_suffix(pairs: Iterable[tuple[str, Any]]) -> str:
    """'-num_experts7-type_resnet10' for the overrides that change the training (empty when there are none)."""
    parts = []
    for key, value in pairs:
        if key in NEUTRAL_KEYS or key.endswith(NEUTRAL_SUFFIXES):
            continue
        text = ",".join(map(str, value)) if isinstance(value, list) else str(value)
        parts.append(f"{key.split('.')[-1]}{'' if text[:1].isdigit() or text[:1] == '-' else '_'}{text}")
    return "".join(f"-{part}" for part in parts)


def with_run_name(raw: dict[str, Any], pairs: Sequence[tuple[str, Any]], name: str | None = None) -> list[tuple[str, Any]]:
    """The overrides plus the run's name, by the one naming rule of train.py and the API: an explicit ``name``
    (--name, or a ``name`` override) wins; otherwise the config's name plus a suffix for every override that changes
    the training (``--epochs 5`` -> ``<name>-epochs5``). Runs land in ``<save_dir>/<name>/seed<S>-<time>/``."""
    pairs = list(pairs)
    if name:
        return pairs + [("name", name)]
    if any(key == "name" for key, _ in pairs):
        return pairs
    return pairs + [("name", f"{raw.get('name', 'run')}{run_name_suffix(pairs)}")]


def config_leaves(node: Any, prefix: str = "") -> Iterable[tuple[str, Any]]:
    """(dotted key, value) of every leaf of a nested dict (an empty dict is a leaf)."""
    if isinstance(node, dict) and node:
        for key, value in node.items():
            if key in (BASE_KEY, DELETE_KEY):
                continue
            yield from config_leaves(value, f"{prefix}.{key}" if prefix else str(key))
    else:
        yield prefix, node


def config_sources(path: str | Path, _chain: tuple[Path, ...] = ()) -> dict[str, list[tuple[str, Any]]]:
    """For every dotted key, the files that set it, in the order they apply (bases first), with their values: what
    ``train.py --explain KEY`` reports."""
    path = find_shipped(path, "configs") if not _chain else Path(path)
    own = load_json(path)
    bases = own.get(BASE_KEY, [])
    sources: dict[str, list[tuple[str, Any]]] = {}
    for base in [bases] if isinstance(bases, str) else bases:
        for key, entries in config_sources(path.parent / base, (*_chain, path.resolve())).items():
            sources.setdefault(key, []).extend(entries)
    for key, value in config_leaves(own):
        sources.setdefault(key, []).append((os.path.normpath(path), value))
    return sources


def explain_key(key: str, resolved: dict[str, Any], sources: dict[str, list[tuple[str, Any]]],
                overrides: Sequence[tuple[str, Any]] = ()) -> str:
    """Which file or command-line override set ``key`` (or an object above or below it), and its resolved value."""
    lines = []
    for origin, value in sources.get(key, []):
        lines.append(f"  {origin}: {json.dumps(value)}")
    for parent in (".".join(key.split(".")[:i]) for i in range(1, key.count(".") + 1)):
        for origin, value in sources.get(parent, []):
            lines.append(f"  {origin}: sets the whole '{parent}' to {json.dumps(value)}")
    children = sorted(k for k in sources if k.startswith(key + "."))
    for child in children:
        lines.append(f"  {sources[child][-1][0]}: {child} = {json.dumps(sources[child][-1][1])}")
    for dotted, value in overrides:
        if dotted == key or dotted.startswith(key + ".") or key.startswith(dotted + "."):
            lines.append(f"  command line: {dotted} = {json.dumps(value)}")
    value = get_by_path(resolved, key, default=_MISSING)
    if value is _MISSING:
        raise ConfigError(f"'{key}' is not a key of the resolved config (top-level keys: {', '.join(resolved)})")
    if not lines:
        lines.append("  not set by any file or override: a default filled in when the config is resolved")
    return f"{key} = {json.dumps(value)}\n" + "\n".join(lines)


_MISSING = object()
