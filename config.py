"""Reading a run's configuration: defaults → YAML file → command line, strict and typed.

A run's config is a composition of component configs, each a dataclass owned by its component and checking its
own rules in `__post_init__` (ModelConfig in model.py, DataConfig in dataloader.py, OptimConfig in optim.py,
RunConfig in train.py). Keys are flat, in YAML (`lr_hidden: 0.04`) and on the command line (`--lr_hidden 0.04`),
as in SpeedrunningPLMs (github.com/Synthyra/SpeedrunningPLMs); every field name is unique across the components,
so `key_table` maps each key to the one component that owns it. Nothing here knows a particular key, except the
removed keys' migration messages.

    parse(sections, argv) -> ({section: config object}, keys set)     raises ConfigError naming the key
    reference_table(sections)                                         the key reference, from the dataclasses
    python config.py                  rewrites that table in docs/TRAINING.md (between its config markers)
"""
import dataclasses
import difflib
import inspect
import re
import types
import typing
from pathlib import Path

import yaml


class ConfigError(ValueError):
    """A wrong key, value or combination: the run stops before any work, with a message naming the key."""


# Keys people pass tokens with (SpeedrunningPLMs' --token/--wandb_token): refused, with the variable to use instead.
SECRET_KEYS = {"token": "HF_TOKEN", "hf_token": "HF_TOKEN", "hub_token": "HF_TOKEN", "huggingface_token": "HF_TOKEN",
               "wandb_token": "WANDB_API_KEY", "wandb_api_key": "WANDB_API_KEY", "wandb_key": "WANDB_API_KEY"}
# Keys that existed once (or in SpeedrunningPLMs) and were removed: (the value that made them a no-op, what to write
# instead). records.py drops a removed key from an old run's config only when it holds that value.
REMOVED = {
    "bugfix": (False, "use `--yaml_path example_yamls/debug.yaml`, the tiny run for debugging"),
    "use_muon": (None, "use `recipe: speedrun` (Muon + Adam) or `recipe: esm2` (AdamW)"),
    "cooldown_steps": (None, "use `cooldown_frac` (the cooldown's fraction of num_steps or of the time budget)"),
    "lr_value_embed": (0.06, "value embeddings use `lr_embed`"),
    "muon_weight_decay": (0.0, "removed: no experiment measured it (Muon has no weight decay)"),
    "cautious_weight_decay": (False, "removed with muon_weight_decay"),
    "ns_coefficients": ("quintic", "removed: Newton–Schulz uses the quintic coefficients"),
    "sliding_window": (0, "removed: attention spans the whole sequence"),
    "rope_base": (10000.0, "removed: the rotary base is 10,000 (ESM2's)"),
    "logit_cap_type": ("tanh", "removed: the logit cap is cap·tanh(z/cap)"),
    "mask_rate_start": (None, "removed: the mask rate is constant (`mask_rate`)"),
    "mask_rate_warmup_steps": (0, "removed: the mask rate is constant (`mask_rate`)"),
}

def without_removed(flat: dict) -> dict:
    """An old run's flat config with the removed keys that held their no-op value left out, so that today's
    train.py reads it back to the same run (a removed key with any other value stays, and is refused by name)."""
    return {k: v for k, v in flat.items() if not (k in REMOVED and v == REMOVED[k][0])}


def key_table(sections: dict[str, type]) -> dict[str, tuple[str, object]]:
    """key -> (section name, its type) over all component dataclasses; a key owned twice is a bug."""
    table: dict[str, tuple[str, object]] = {}
    for section, cls in sections.items():
        for name, kind in typing.get_type_hints(cls).items():
            if name in table:
                raise TypeError(f"config key {name!r} is defined by both {table[name][0]} and {section}")
            table[name] = (section, kind)
    return table


def convert(key: str, value, kind):
    """A YAML or command-line value -> the type of field `key`, or a ConfigError naming the key."""
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if origin in (typing.Union, types.UnionType) and type(None) in args:
        if value is None or (isinstance(value, str) and value.strip().lower() in ("none", "null", "~", "")):
            return None
        (kind,) = [a for a in args if a is not type(None)]
        return convert(key, value, kind)
    if origin is tuple:
        items = [v for v in re.sub(r"[()\[\]]", "", value).split(",") if v.strip()] \
            if isinstance(value, str) else value
        if not isinstance(items, (list, tuple)) or len(items) != len(args):
            raise ConfigError(f"{key}: expected {len(args)} comma-separated values, got {value!r}")
        return tuple(convert(key, v, a) for v, a in zip(items, args))
    if kind is bool:
        if isinstance(value, bool):
            return value
        word = value.strip().lower() if isinstance(value, str) else None
        if word in ("true", "1", "yes", "on", "false", "0", "no", "off"):
            return word in ("true", "1", "yes", "on")
        raise ConfigError(f"{key}: expected true or false, got {value!r}")
    if kind is int:
        if isinstance(value, bool) or isinstance(value, float) and not value.is_integer():
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        try:
            return int(float(value)) if isinstance(value, str) and "e" in value.lower() else int(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{key}: expected an integer, got {value!r}") from None
    if kind is float:
        if isinstance(value, bool):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{key}: expected a number, got {value!r}") from None
    if kind is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return value
    raise TypeError(f"config field {key} has unsupported type {kind}")


def check_key(key: str, table: dict, source: str) -> None:
    if key.lower() in SECRET_KEYS:
        raise ConfigError(f"{source}: '{key}' is refused: secrets never go in a YAML file or on the command line "
                          f"(they would land in logs, shell history and `ps`). Set the environment variable "
                          f"{SECRET_KEYS[key.lower()]} instead.")
    if key in REMOVED:
        raise ConfigError(f"{source}: '{key}' is no longer a config key: {REMOVED[key][1]}")
    if key not in table:
        close = difflib.get_close_matches(key, list(table), n=1)
        raise ConfigError(f"{source}: unknown config key '{key}'" + (f" (did you mean '{close[0]}'?)" if close else ""))


def parse(sections: dict[str, type], argv: list[str]) -> tuple[dict[str, object], set[str]]:
    """Defaults, then `--yaml_path FILE`, then `--key value` / `--key=value` -> ({section: config}, keys set).

    Strict: an unknown key (with the closest known key suggested), a removed key (with what to use instead), a
    value of the wrong type, a token passed as a key, a rule a component's config breaks, or a key given on the
    command line that has no effect under the rest of the config (`inert`, e.g. `--lr_hidden` with
    `recipe: esm2`) raises ConfigError.
    """
    table = key_table(sections)
    cli: list[tuple[str, object]] = []
    yaml_path = None
    i = 0
    while i < len(argv):
        arg = argv[i]
        if not arg.startswith("--") or arg == "--":
            raise ConfigError(f"command line: expected --key value, got {arg!r}")
        key, has_value, value = arg[2:].partition("=")
        key = key.replace("-", "_")
        if not has_value:
            if i + 1 < len(argv) and not argv[i + 1].startswith("--"):
                value, i = argv[i + 1], i + 1
            elif key in table and table[key][1] is bool:
                value = "true"  # a bare `--stop_at_target` means true
            elif key != "yaml_path" and key not in table:
                value = None  # check_key names the unknown key below
            else:
                raise ConfigError(f"command line: --{key} needs a value")
        i += 1
        if key == "yaml_path":
            yaml_path = value
            continue
        check_key(key, table, "command line")
        cli.append((key, value))

    values: dict[str, object] = {}
    if yaml_path is not None:
        path = Path(yaml_path)
        if not path.is_file():
            raise ConfigError(f"--yaml_path: no such file {path}")
        try:
            loaded = yaml.safe_load(path.read_text())
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: not valid YAML: {e}") from None
        loaded = {} if loaded is None else loaded
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: expected a mapping of config keys, got {type(loaded).__name__}")
        for key, value in loaded.items():
            check_key(str(key), table, str(path))
            values[key] = convert(f"{path}: {key}", value, table[key][1])
    for key, value in cli:
        values[key] = convert(f"--{key}", value, table[key][1])

    configs = {}
    for section, cls in sections.items():
        try:
            configs[section] = cls(**{k: v for k, v in values.items() if table[k][0] == section})
        except ValueError as e:  # each component's own check, which names its key
            raise ConfigError(str(e)) from None
    for key, reason in inert(configs, {key for key, _ in cli}).items():
        raise ConfigError(f"--{key}: set on the command line, but it has no effect {reason}: remove it")
    return configs, set(values)


def inert(configs: dict[str, object], keys: set[str]) -> dict[str, str]:
    """Those of `keys` that have no effect under the parsed configs (each component's `inert_keys()`), with the
    reason. `parse` refuses them on the command line; train.py logs a warning for those a YAML sets (a YAML key that
    a command-line switch such as `--recipe esm2` made inert is an override, not a mistake, but it is said)."""
    out = {}
    for part in configs.values():
        reasons = part.inert_keys() if hasattr(part, "inert_keys") else {}
        out |= {key: reasons[key] for key in sorted(keys & set(reasons))}
    return out


def field_comments(cls: type) -> dict[str, str]:
    """The one-line comment after each field of a dataclass's source (`name: type = default  # comment`)."""
    comments = {}
    for line in inspect.getsource(cls).splitlines():
        match = re.match(r"\s+(\w+): [^#]+#\s*(.*)$", line)
        if match:
            comments[match.group(1)] = match.group(2).strip()
    return comments


def reference_table(sections: dict[str, type]) -> str:
    """Markdown table of every key: component, default and meaning, generated from the dataclasses."""
    rows = ["| key | component | default | meaning |", "|---|---|---|---|"]
    for section, cls in sections.items():
        comments = field_comments(cls)
        owner = f"`{cls.__name__}` ({Path(inspect.getfile(cls)).name})"
        for field in dataclasses.fields(cls):
            default = field.default if field.default is not dataclasses.MISSING else field.default_factory()
            shown = repr(default) if isinstance(default, str) else default
            meaning = comments.get(field.name, "").replace("|", "\\|")  # a bare | would split the cell
            rows.append(f"| `{field.name}` | {owner} | `{shown}` | {meaning} |")
    return "\n".join(rows)


def replace_between(text: str, start: str, end: str, body: str, where: str) -> str:
    """`text` with everything between the marker lines `start` and `end` replaced by `body` (generated docs)."""
    i, j = text.find(start), text.find(end)
    if i < 0 or j < i:
        raise ValueError(f"{where}: needs the markers {start} and {end}")
    return text[:i + len(start)] + "\n" + body + text[j:]


CONFIG_START, CONFIG_END = "<!-- config:start -->", "<!-- config:end -->"

if __name__ == "__main__":
    import train  # the run's sections; train.py imports this module, so only here
    docs = Path(__file__).resolve().parent / "docs" / "TRAINING.md"
    docs.write_text(replace_between(docs.read_text(), CONFIG_START, CONFIG_END,
                                    reference_table(train.SECTIONS) + "\n", str(docs)))
    print(f"{docs}: config table regenerated")
