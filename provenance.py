"""Run provenance: what a verifier needs to check a run from its own files, and nothing it would have to trust.

train.py uses four things, and records.py reads the same definitions back to verify a run:

    start = provenance.start()                                # load average and clocks before any work
    text = provenance.code_sections(sources)                  # the core files, as the text log embeds them
    prov = provenance.RunProvenance(sources, data_dir, data_name, device, world_size, start)
    summary["provenance"] = prov.summary(...)                 # code and data hashes, validation protocol, machine
    summary = provenance.seal(summary)                        # adds the JSON's own sha256 (`json_sha256`)

- **Code**: `code_sha256` is the sha256 of the `sha256sum` listing of the core files, in CORE_FILES order
  (`sha256sum train.py model.py … | sha256sum` in the checkout gives the same), computed from the text the log
  embeds. A log whose embedded code was edited no longer matches it.
- **Data**: the sha256 of every train, valid and test shard. Train shards are read from `{name}_manifest.json`
  (data/tokenize_fasta.py) when it lists exactly the shards found with their token counts; otherwise, and
  always for the (small) valid and test shards, they are hashed here, once per run, before the clock starts.
- **Machine**: load average before the run and when the summary is written, wall time and process CPU time, so
  a contended run can be spotted (a shared machine changes a run's time by several times, docs/RESULTS.md).
- **Seal**: `json_sha256` is the sha256 of the summary's canonical JSON without that field. It catches a JSON
  edited by hand; a forger can recompute it, which is why records.py also cross-checks the JSON against the
  text log, and why a record's final proof is that its embedded code can be run again.
"""
import hashlib
import json
import os
import platform
import re
import resource
import time
from dataclasses import dataclass
from pathlib import Path

from shards import SPLITS, read_header, sha256_file

CODE_HEADER = "==================== {} ===================="
CODE_HEADER_RE = re.compile(r"^={20} ([\w./-]+\.py) ={20}\n", re.MULTILINE)
CONFIG_HEADER = "==================== config (resolved) ===================="
FORMAT = 1  # version of the provenance block; records.py refuses blocks it does not know


# ---------------------------------------------------------------------------------------------------------------
# Code

def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def code_hash(sources: dict[str, str]) -> str:
    """sha256 of the `sha256sum` listing ("<sha256>  <name>\\n" per file, in the given order)."""
    return sha256_text("".join(f"{sha256_text(text)}  {name}\n" for name, text in sources.items()))


def code_sections(sources: dict[str, str]) -> str:
    """The core files as the text log embeds them: a header line per file, then its text."""
    return "\n".join(f"{CODE_HEADER.format(name)}\n{text}" for name, text in sources.items())


def _config_header(log_text: str) -> re.Match:
    """The resolved-config header line (a line of its own: the embedded code may quote it, never as a line)."""
    match = re.search(f"^{re.escape(CONFIG_HEADER)}\n", log_text, re.MULTILINE)
    if match is None:
        raise ValueError("no resolved-config section after the embedded code")
    return match


def read_code_sections(log_text: str) -> dict[str, str]:
    """The core files embedded in a text log (the inverse of `code_sections` plus the log's line end).

    The sections end where the resolved config starts. Raises ValueError when the log has no such layout."""
    head = log_text[:_config_header(log_text).start()]
    headers = list(CODE_HEADER_RE.finditer(head))
    if not headers or headers[0].start() != 0:
        raise ValueError("the log does not open with an embedded core file")
    sources = {}
    for this, nxt in zip(headers, headers[1:] + [None]):
        body = head[this.end():nxt.start() if nxt else len(head)]
        if not body.endswith("\n"):
            raise ValueError(f"embedded {this.group(1)} is not followed by a line end")
        if this.group(1) in sources:
            raise ValueError(f"{this.group(1)} is embedded twice")
        sources[this.group(1)] = body[:-1]  # the log's own line end after each write
    return sources


def read_config_section(log_text: str) -> str:
    """The resolved config (YAML text) that the text log holds after the embedded code."""
    rest = log_text[_config_header(log_text).end():]
    end = rest.find("\nrun id: ")
    if end < 0:
        raise ValueError("the resolved config is not followed by the run id")
    return rest[:end]


# ---------------------------------------------------------------------------------------------------------------
# Data

def data_fingerprint(data_dir, data_name: str) -> dict:
    """{name, sha256, train_from_manifest, shards: {split: [{file, tokens, sha256}]}} of every shard of the data.

    `sha256` hashes the listing "<split> <file> <sha256>\\n" of all shards, so two runs used the same data iff
    their fingerprints are equal."""
    data_dir = Path(data_dir)
    manifest_path = data_dir / f"{data_name}_manifest.json"
    manifest = json.loads(manifest_path.read_text()) if manifest_path.is_file() else None
    shards, from_manifest = {}, False
    for split in SPLITS:
        paths = sorted(data_dir.glob(f"{data_name}_{split}_*.bin"))
        entries = [{"file": p.name, "tokens": read_header(p)} for p in paths]
        listed = {s["file"]: s for s in (manifest or {}).get("splits", {}).get(split, {}).get("shards", [])}
        if split == "train" and entries and set(listed) == {e["file"] for e in entries} \
                and all(listed[e["file"]]["tokens"] == e["tokens"] for e in entries):
            for e in entries:
                e["sha256"] = listed[e["file"]]["sha256"]
            from_manifest = True
        else:
            for e, p in zip(entries, paths):
                e["sha256"] = sha256_file(p)
        if entries:
            shards[split] = entries
    listing = "".join(f"{split} {e['file']} {e['sha256']}\n" for split, entries in shards.items() for e in entries)
    return {"name": data_name, "sha256": sha256_text(listing), "train_from_manifest": from_manifest,
            "shards": shards}


# ---------------------------------------------------------------------------------------------------------------
# Machine: hardware, load, CPU time

@dataclass(frozen=True)
class Start:
    """The machine just before the run's work: load average (1, 5, 15 min), wall clock, CPU time used so far."""
    loadavg: tuple[float, float, float] | None
    wall: float
    cpu_s: float
    children_cpu_s: float


def _loadavg() -> tuple[float, float, float] | None:
    try:
        return tuple(round(x, 2) for x in os.getloadavg())
    except OSError:  # not available on this platform
        return None


def _cpu_seconds(who: int) -> float:
    usage = resource.getrusage(who)
    return usage.ru_utime + usage.ru_stime


def start() -> Start:
    return Start(_loadavg(), time.time(), _cpu_seconds(resource.RUSAGE_SELF), _cpu_seconds(resource.RUSAGE_CHILDREN))


def machine_usage(since: Start) -> dict:
    """Load before and now, wall and CPU seconds since `since`. Children are loader workers that have exited."""
    wall = time.time() - since.wall
    cpu = _cpu_seconds(resource.RUSAGE_SELF) - since.cpu_s
    return {"loadavg_before": since.loadavg, "loadavg_after": _loadavg(), "wall_time_s": wall, "cpu_time_s": cpu,
            "children_cpu_time_s": _cpu_seconds(resource.RUSAGE_CHILDREN) - since.children_cpu_s,
            "cpu_per_wall": cpu / wall if wall > 0 else None}


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_id(cpuinfo: str) -> str | None:
    """The CPU's generation from /proc/cpuinfo's first processor: vendor, family, model, stepping and the widest
    vector unit, e.g. "AuthenticAMD family 26 model 2 stepping 1, avx512". The model name alone does not tell
    generations apart: on this project's VMs "AMD EPYC" named two CPUs whose single-thread training speeds differ by
    1.5x, and a time measured on one does not compare with a time measured on the other. None without those fields."""
    fields = {}
    for line in cpuinfo.splitlines():
        if not line.strip():
            if fields:
                break  # the first processor is enough: a VM's cores are one kind
            continue
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
    if not all(k in fields for k in ("vendor_id", "cpu family", "model")):
        return None
    flags = set(fields.get("flags", "").split())
    vector = next((v for v in ("avx512f", "avx2", "avx", "sse4_2") if v in flags), "no avx")
    return (f"{fields['vendor_id']} family {fields['cpu family']} model {fields['model']} stepping "
            f"{fields.get('stepping', '?')}, {vector.removesuffix('f')}" + (", amx" if "amx_tile" in flags else ""))


def this_cpu_id() -> str | None:
    try:
        return cpu_id(Path("/proc/cpuinfo").read_text())
    except OSError:
        return None


def recorded_cpu_id(summary: dict) -> str | None:
    """The CPU id a run's JSON summary recorded (None for runs made before it was recorded)."""
    return ((summary.get("provenance") or {}).get("hardware") or {}).get("cpu_id")


def hardware(device, world_size: int) -> dict:
    """What the run ran on. `summary` is the one-line description records compare between runs; `cpu_id` tells CPU
    generations apart (compare_runs.py pairs and flags runs by it)."""
    import torch

    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    info = {"device": device.type, "world_size": world_size, "cpu": cpu_model(), "cpu_id": this_cpu_id(),
            "cpu_count": os.cpu_count(), "usable_cpus": usable, "torch_threads": torch.get_num_threads(),
            "gpu": None, "gpus_per_node": 0}
    if device.type == "cuda":
        info["gpu"], info["gpus_per_node"] = torch.cuda.get_device_name(device), torch.cuda.device_count()
        info["summary"] = f"{world_size}×{info['gpu']}"
    else:
        cpu = info["cpu"] + (f" [{info['cpu_id']}]" if info["cpu_id"] else "")
        info["summary"] = (f"{world_size}× CPU {cpu} ({usable} usable of {info['cpu_count']} cores, "
                           f"{info['torch_threads']} torch threads)")
    return info


# ---------------------------------------------------------------------------------------------------------------
# The run's provenance block and the seal

class RunProvenance:
    """Hashes computed once at the start of a run; `summary()` adds what is known only later."""

    def __init__(self, sources: dict[str, str], data_dir, data_name: str, device, world_size: int, since: Start,
                 hash_data: bool = True):
        self.code = {"sha256": code_hash(sources), "files": {name: sha256_text(t) for name, t in sources.items()}}
        self.data = data_fingerprint(data_dir, data_name) if hash_data else None
        self.hardware = hardware(device, world_size)
        self.since = since
        self._checkpoint_sha256: dict[str, str] = {}

    def header(self) -> str:
        """Lines for the text log, which records.py cross-checks against the JSON."""
        lines = [f"code sha256: {self.code['sha256']} ({' '.join(self.code['files'])})"]
        if self.data is not None:
            counts = ", ".join(f"{split} {len(entries)}" for split, entries in self.data["shards"].items())
            lines.append(f"data sha256: {self.data['sha256']} ({self.data['name']}: {counts} shards; train "
                         f"{'from the manifest' if self.data['train_from_manifest'] else 'hashed'})")
            lines += [f"shard sha256: {e['sha256']} {e['file']}" for e in self.data["shards"].get("valid", [])]
        lines.append(f"hardware: {self.hardware['summary']}; load average before: {self.since.loadavg}")
        return "\n".join(lines)

    def checkpoint_sha256(self, checkpoint_dir) -> str | None:
        """sha256 of a checkpoint's weights (what evaluate.py reports as checkpoint_sha256), hashed once."""
        from checkpoint import MODEL_FILE

        path = Path(checkpoint_dir) / MODEL_FILE
        if str(path) not in self._checkpoint_sha256 and path.is_file():
            self._checkpoint_sha256[str(path)] = sha256_file(path)
        return self._checkpoint_sha256.get(str(path))

    def summary(self, *, val_mask_rate: float, val_mask_seed: int, val_stats: dict, checkpoints: list[str]) -> dict:
        valid = (self.data or {}).get("shards", {}).get("valid", [])
        return {"format": FORMAT, "code": self.code, "data": self.data,
                "validation": {"split": "valid", "mask_rate": val_mask_rate, "mask_seed": val_mask_seed,
                               "masked_tokens": val_stats["masked_tokens"], "sequences": val_stats["sequences"],
                               "shard_sha256": [e["sha256"] for e in valid]},
                "hardware": self.hardware, "machine": machine_usage(self.since),
                "checkpoint_sha256": self.checkpoint_sha256(checkpoints[-1]) if checkpoints else None}


def json_sha256(summary: dict) -> str:
    """sha256 of the canonical JSON (sorted keys, no spaces) of a summary without provenance.json_sha256."""
    body = dict(summary)
    if isinstance(body.get("provenance"), dict):
        body["provenance"] = {k: v for k, v in body["provenance"].items() if k != "json_sha256"}
    return sha256_text(json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True))


def seal(summary: dict) -> dict:
    """The summary as JSON values (tuples become lists, keys strings) with provenance.json_sha256 set."""
    summary = json.loads(json.dumps(summary))
    if isinstance(summary.get("provenance"), dict):
        summary["provenance"]["json_sha256"] = json_sha256(summary)
    return summary
