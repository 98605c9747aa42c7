"""Export a checkpoint of this trainer as a folder that loads with Hugging Face `transformers`, and optionally push it.

    python export.py checkpoints/RUN/step_000500 --output_dir checkpoints/RUN_hf [--push_to_hub you/RUN]

What the folder holds (docs/EXPORT.md has the details and the parity tests):
- architecture "esm2": a native `EsmForMaskedLM` (config.json, model.safetensors with ESM's parameter names);
  `AutoModelForMaskedLM.from_pretrained(DIR)` loads it with no remote code.
- architecture "speedrun": `hf/modeling_plm_speedrun.py` (HF classes wrapping model.py's `PLM`) with copies of
  `model.py` and `vocab.py`, config.json and model.safetensors (our names under `plm.`);
  `AutoModelForMaskedLM.from_pretrained(DIR, trust_remote_code=True)` loads it. The forward pass is model.py's own.
- both: ESM's tokenizer files, written from vocab.py; README.md, a model card read from the run's JSON summary
  (`logs/<run_id>.json`, found through the checkpoint's train_state.pt or given with --run_json);
  training_config.yaml, the run's resolved config, from which `train.py --yaml_path` repeats it.
Nothing is downloaded. `--push_to_hub` uploads the folder with the token in the environment variable HF_TOKEN.
"""
import argparse
import ast
import dataclasses
import json
import os
import re
import shutil
import sys
import tempfile
from pathlib import Path

import yaml
from safetensors.torch import save_file

import checkpoint
from config import without_removed
from model import PLM, ROPE_BASE
from shards import sha256_file
from vocab import CLS, EOS, MASK, PAD, TOKENS, VOCAB_SIZE

ROOT = Path(__file__).resolve().parent
TEMPLATE = ROOT / "hf" / "modeling_plm_speedrun.py"
CODE_FILES = ("model.py", "vocab.py")  # model.py and the repository modules it imports, shipped beside the template
AUTO_MAP = {"AutoConfig": "modeling_plm_speedrun.PLMSpeedrunConfig",
            "AutoModel": "modeling_plm_speedrun.PLMSpeedrunModel",
            "AutoModelForMaskedLM": "modeling_plm_speedrun.PLMSpeedrunForMaskedLM"}
MAX_POSITIONS = 1026  # facebook/esm2_t*: 1024 residues + <cls> + <eos>; rotary models have no hard limit


class ExportError(Exception):
    """A checkpoint, run record or option that export.py cannot turn into a correct folder; the message says why."""


# ----------------------------------------------------------------------------------------------------------------
# The folder


def export_checkpoint(checkpoint_dir, output_dir, *, run_json=None, eval_jsons=(), data_license: str | None = None,
                      overwrite: bool = False) -> tuple[Path, list[str]]:
    """Write the export of `checkpoint_dir` to `output_dir` -> (output_dir, notes for the user).

    The folder is built in a temporary sibling and renamed into place, so a failed export leaves nothing behind.
    `overwrite` replaces an earlier export in `output_dir`; any other non-empty `output_dir` is an error."""
    checkpoint_dir, output_dir = Path(checkpoint_dir), Path(output_dir)
    model = load_checkpoint(checkpoint_dir)
    check_output_dir(output_dir, checkpoint_dir, overwrite)
    notes = []
    record, run_json = find_run_record(checkpoint_dir, model, run_json, notes)
    evaluations = [read_evaluation(Path(p), checkpoint_dir) for p in eval_jsons]

    output_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = output_dir.with_name(f"{output_dir.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        if model.config.architecture == "esm2":
            write_esm2(model, tmp)
        else:
            write_speedrun(model, tmp)
        write_tokenizer(tmp)
        if record is not None:
            config = dict(without_removed(record["config"]), push_to_hub=False, hub_repo_id=None)
            (tmp / "training_config.yaml").write_text(
                "# The resolved config of the run (train.py's JSON summary), push_to_hub switched off; keys removed\n"
                "# since the run, where they were no-ops, left out.\n"
                + yaml.safe_dump(config, sort_keys=False))
        if run_json is not None:
            shutil.copy(run_json, tmp / "training_run.json")
        license_text = data_license or data_license_from_sources(record, notes)
        (tmp / "README.md").write_text(model_card(model, checkpoint_dir, record, evaluations, license_text))
        checkpoint.replace_directory(tmp, output_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return output_dir, notes


def check_output_dir(output_dir: Path, checkpoint_dir: Path, overwrite: bool) -> None:
    """Refuse to write where the result would mix with, or --overwrite would delete, anything but an earlier export."""
    out = output_dir.resolve()
    if out == checkpoint_dir.resolve() or out in checkpoint_dir.resolve().parents:
        raise ExportError(f"--output_dir {output_dir} holds the checkpoint {checkpoint_dir}: choose another folder")
    if output_dir.exists() and not output_dir.is_dir():
        raise ExportError(f"--output_dir {output_dir} is a file")
    if output_dir.exists() and any(output_dir.iterdir()):
        if not overwrite:
            raise ExportError(f"{output_dir} exists and is not empty (pass --overwrite to replace an earlier export)")
        if not (output_dir / "config.json").is_file() or (output_dir / checkpoint.CONFIG_FILE).is_file():
            raise ExportError(f"--overwrite: {output_dir} is not an earlier export (no config.json), so it is not "
                              "deleted; remove it yourself or choose another folder")


def load_checkpoint(checkpoint_dir: Path) -> PLM:
    """checkpoint.load_model, with the likely mistake (a run directory instead of one of its steps) named."""
    if not (checkpoint_dir / checkpoint.CONFIG_FILE).is_file():
        steps = sorted(checkpoint_dir.glob("step_*")) if checkpoint_dir.is_dir() else []
        hint = f"; its latest step is {steps[-1]}" if steps else ""
        raise ExportError(f"{checkpoint_dir} is not a checkpoint directory: it has no {checkpoint.CONFIG_FILE} and "
                          f"{checkpoint.MODEL_FILE}{hint}")
    try:
        return checkpoint.load_model(checkpoint_dir)
    except (FileNotFoundError, ValueError) as e:
        raise ExportError(str(e)) from e


def write_speedrun(model: PLM, out: Path) -> None:
    """config.json with auto_map, model.safetensors (model.py's names under `plm.`), the template and model code."""
    import transformers

    config = {"architectures": ["PLMSpeedrunForMaskedLM"], "model_type": "plm_speedrun", "auto_map": AUTO_MAP,
              **dataclasses.asdict(model.config), "pad_token_id": PAD, "mask_token_id": MASK, "bos_token_id": CLS,
              "eos_token_id": EOS, "tie_word_embeddings": model.config.tie_embeddings, "torch_dtype": "float32",
              "transformers_version": transformers.__version__}
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    # clone: a tied head shares the embedding's storage, which safetensors refuses (both keys load into one tensor)
    state = {f"plm.{k}": v.detach().float().contiguous().clone() for k, v in model.state_dict().items()}
    save_file(state, str(out / "model.safetensors"), metadata={"format": "pt"})
    shutil.copy(TEMPLATE, out / TEMPLATE.name)
    for name in CODE_FILES:
        (out / name).write_text(relative_imports((ROOT / name).read_text(), name))


def relative_imports(source: str, filename: str) -> str:
    """`from vocab import X` -> `from .vocab import X` for the shipped modules, nothing else changed.

    transformers loads remote code as a package (transformers_modules.<folder>), where a sibling file is found only
    by a relative import; an absolute `from vocab import` would also make it demand a pip package called `vocab`.
    A repository module that is not shipped, or an import form this cannot rewrite, stops the export."""
    shipped = {Path(name).stem for name in CODE_FILES}
    lines = source.splitlines(keepends=True)
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and node.level == 0:
            names = [node.module]
        elif isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        else:
            continue
        for name in names:
            top = name.split(".")[0]
            if not ((ROOT / f"{top}.py").is_file() or (ROOT / top).is_dir()):
                continue  # the standard library, torch, numpy: what transformers checks is installed
            if top not in shipped:
                raise ExportError(f"{filename} imports the repository module {top!r}, which the export does not ship: "
                                  f"add it to CODE_FILES in export.py")
            line = lines[node.lineno - 1]
            if not isinstance(node, ast.ImportFrom) or not re.match(rf"\s*from {name} import ", line):
                raise ExportError(f"{filename} line {node.lineno}: only `from {top} import ...` can be made relative")
            lines[node.lineno - 1] = line.replace(f"from {name} import", f"from .{name} import", 1)
    return "".join(lines)


def esm_parameter_names(num_layers: int) -> dict[str, str]:
    """model.py's esm2-mode parameter names -> transformers' EsmForMaskedLM names (a renaming: same maths)."""
    names = {"token_embedding.weight": "esm.embeddings.word_embeddings.weight",
             "final_norm.weight": "esm.encoder.emb_layer_norm_after.weight",
             "final_norm.bias": "esm.encoder.emb_layer_norm_after.bias",
             "head.dense_weight": "lm_head.dense.weight", "head.dense_bias": "lm_head.dense.bias",
             "head.norm.weight": "lm_head.layer_norm.weight", "head.norm.bias": "lm_head.layer_norm.bias",
             "head.decoder_weight": "lm_head.decoder.weight", "head.bias": "lm_head.bias"}
    for i in range(num_layers):
        ours, theirs = f"blocks.{i}.", f"esm.encoder.layer.{i}."
        pairs = [("attn.q", "attention.self.query"), ("attn.k", "attention.self.key"),
                 ("attn.v", "attention.self.value"), ("attn.out", "attention.output.dense"),
                 ("mlp.up", "intermediate.dense"), ("mlp.down", "output.dense")]
        for a, b in pairs:
            names[f"{ours}{a}_weight"], names[f"{ours}{a}_bias"] = f"{theirs}{b}.weight", f"{theirs}{b}.bias"
        for a, b in [("attn_norm", "attention.LayerNorm"), ("mlp_norm", "LayerNorm")]:
            names[f"{ours}{a}.weight"], names[f"{ours}{a}.bias"] = f"{theirs}{b}.weight", f"{theirs}{b}.bias"
    return names


def write_esm2(model: PLM, out: Path) -> None:
    """A native EsmForMaskedLM folder, written by transformers' own save_pretrained."""
    from transformers import EsmConfig, EsmForMaskedLM

    c = model.config
    if c.vocab_size != VOCAB_SIZE:
        raise ExportError(f"vocab_size={c.vocab_size}: the ESM tokenizer has {VOCAB_SIZE} tokens")
    config = EsmConfig(
        vocab_size=c.vocab_size, mask_token_id=MASK, pad_token_id=PAD, eos_token_id=EOS,
        hidden_size=c.hidden_size, num_hidden_layers=c.num_hidden_layers, num_attention_heads=c.num_attention_heads,
        intermediate_size=c.intermediate_size, hidden_act="gelu", hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0, max_position_embeddings=MAX_POSITIONS, rope_theta=ROPE_BASE,
        layer_norm_eps=1e-5, position_embedding_type="rotary", emb_layer_norm_before=False,
        token_dropout=c.token_dropout, tie_word_embeddings=True, architectures=["EsmForMaskedLM"])
    hf = EsmForMaskedLM(config)
    state = hf.state_dict()
    ours = model.state_dict()
    for name, theirs in esm_parameter_names(c.num_hidden_layers).items():
        if theirs not in state or state[theirs].shape != ours[name].shape:
            raise ExportError(f"transformers' EsmForMaskedLM has no parameter {theirs} of shape "
                              f"{tuple(ours[name].shape)} for our {name} (a transformers version with other names?)")
        state[theirs] = ours[name].detach().float().clone()
    # ESM's contact head is fitted after pre-training (logistic regression on attention maps); this trainer does not
    # fit it, so it is zeroed rather than left random. predict_contacts() is meaningless for this model.
    for name in state:
        if name.startswith("esm.contact_head."):
            state[name] = state[name].new_zeros(state[name].shape)
    hf.load_state_dict(state, strict=True)
    hf.save_pretrained(out)


def write_tokenizer(out: Path) -> None:
    """ESM's tokenizer (EsmTokenizer) over vocab.py's tokens, in vocab.py's order, so ids are the same."""
    from transformers import EsmTokenizer

    with tempfile.TemporaryDirectory() as tmp:
        vocab_file = Path(tmp) / "vocab.txt"
        vocab_file.write_text("\n".join(TOKENS) + "\n")
        EsmTokenizer(vocab_file=str(vocab_file)).save_pretrained(out)


# ----------------------------------------------------------------------------------------------------------------
# The run record and evaluations behind the model card


def find_run_record(checkpoint_dir: Path, model: PLM, run_json,
                    notes: list[str]) -> tuple[dict | None, Path | None]:
    """The run's JSON summary -> (record, its path). Given, or found at {log_dir}/{run_id}.json from the checkpoint's
    train_state.pt; without the JSON, train_state's own history (no controls, hardware or commit) is the record.
    train_state.pt is a pickle (checkpoint.load_train_state): with --run_json it is not read at all."""
    if run_json is not None:
        run_json = Path(run_json)
        if not run_json.is_file():
            raise ExportError(f"--run_json {run_json}: no such file")
        record = json.loads(run_json.read_text())
        check_record_matches(record, checkpoint_dir, model, run_json)
        return record, run_json
    if not (checkpoint_dir / checkpoint.STATE_FILE).is_file():
        notes.append(f"model card without training details: {checkpoint_dir} has no {checkpoint.STATE_FILE} to find "
                     "the run's JSON summary from (pass --run_json logs/<run_id>.json)")
        return None, None
    state = checkpoint.load_train_state(checkpoint_dir)
    name = f"{state['run_id']}.json"
    log_dir = Path(state["config"]["log_dir"])
    for candidate in (log_dir / name, ROOT / log_dir / name):
        if candidate.is_file():
            record = json.loads(candidate.read_text())
            check_record_matches(record, checkpoint_dir, model, candidate)
            return record, candidate
    notes.append(f"run summary {log_dir / name} not found: the model card uses the checkpoint's train_state "
                 "(no controls, hardware or commit; pass --run_json to add them)")
    return {"run_id": state["run_id"], "config": state["config"], "steps": state["step"], "tokens": state["tokens"],
            "train_time_s": state["train_time_s"], "val": state["val_log"], "checkpoints": state["checkpoints"],
            "world_size": state.get("world_size")}, None


def check_record_matches(record: dict, checkpoint_dir: Path, model: PLM, path: Path) -> None:
    """A card must describe the run that wrote this checkpoint: the JSON lists it (as <run_id>/<step>) and its
    config has the checkpoint's model config."""
    tail = checkpoint_dir.resolve().parts[-2:]
    if not any(Path(c).parts[-2:] == tail for c in record.get("checkpoints") or []):
        raise ExportError(f"{path} does not list the checkpoint {'/'.join(tail)} (it lists "
                          f"{record.get('checkpoints')}): pass the JSON summary of the run that wrote it")
    ours = dataclasses.asdict(model.config)
    differ = sorted(k for k, v in record.get("config", {}).items() if k in ours and v != ours[k])
    if differ:
        raise ExportError(f"{path} describes a model with other {differ} than "
                          f"{checkpoint_dir / checkpoint.CONFIG_FILE}")


def read_evaluation(path: Path, checkpoint_dir: Path) -> dict:
    """An evaluate.py output (--output): a probe ("task" + "results") or zero-shot scores ("assays"), checked to be
    about this checkpoint when it records checkpoint_sha256."""
    if not path.is_file():
        raise ExportError(f"--eval_json {path}: no such file")
    result = json.loads(path.read_text())
    recorded = result.get("checkpoint_sha256")
    if recorded and recorded != sha256_file(checkpoint_dir / checkpoint.MODEL_FILE):
        raise ExportError(f"--eval_json {path} scores another checkpoint (checkpoint_sha256 {recorded[:12]}… is not "
                          f"the sha256 of {checkpoint_dir / checkpoint.MODEL_FILE})")
    if "task" in result and "results" in result:
        return {"kind": "probe", "path": path, **result}
    if result.get("assays") and all("spearman" in a for a in result["assays"]):
        return {"kind": "zeroshot", "path": path, **result}
    raise ExportError(f"--eval_json {path}: neither a `probe.py` output (keys task, results) nor an "
                      f"`evaluate.py zeroshot` one (a list `assays` of entries with `spearman`); its keys: "
                      f"{sorted(result)}")


def data_license_from_sources(record: dict | None, notes: list[str]) -> str | None:
    """The licence paragraphs of the training data's SOURCE.md: in data_dir, or beside the FASTA files that its
    manifest (data/tokenize_fasta.py) lists as inputs."""
    if record is None:
        return None
    data_dir, name = Path(record["config"]["data_dir"]), record["config"]["data_name"]
    candidates = [data_dir / "SOURCE.md"]
    for base in (Path.cwd(), ROOT):
        manifest = base / data_dir / f"{name}_manifest.json"
        if manifest.is_file():
            inputs = json.loads(manifest.read_text()).get("inputs", [])
            candidates += [Path(i["path"]).parent / "SOURCE.md" for i in inputs if "path" in i]
    for source in candidates:
        for path in (source, ROOT / source):
            if path.is_file():
                found = licence_passages(path.read_text())
                if found:
                    return " ".join(found) + f" (from `{source}`)"
    notes.append(f"no licence found for the training data {name!r} (no SOURCE.md in {data_dir} or beside its "
                 "manifest's inputs): the model card says so; pass --data_license")
    return None


# ----------------------------------------------------------------------------------------------------------------
# The model card


def licence_passages(markdown: str) -> list[str]:
    """The paragraphs, or list items, of a SOURCE.md that mention a licence, headings dropped, one line each."""
    found = []
    for paragraph in re.split(r"\n\s*\n", markdown):
        body = "\n".join(line for line in paragraph.splitlines() if not line.lstrip().startswith("#"))
        items = re.split(r"\n(?=\s*- )", body) if body.lstrip().startswith("- ") else [body]
        found += [" ".join(item.split()).removeprefix("- ") for item in items if re.search(r"licen[cs]", item, re.I)]
    return found


def checkpoint_step(checkpoint_dir: Path) -> int | None:
    match = re.fullmatch(r"step_(\d+)", checkpoint_dir.name)
    return int(match.group(1)) if match else None


def _num(value, fmt=",.0f") -> str:
    return "n/a" if value is None else format(value, fmt)


def model_card(model: PLM, checkpoint_dir: Path, record: dict | None, evaluations: list[dict],
               license_text: str | None) -> str:
    """README.md of the export: how to load it, then what the run's record says about this checkpoint."""
    c = model.config
    remote = c.architecture != "esm2"
    name = record["run_id"] if record else checkpoint_dir.name
    load = ", trust_remote_code=True" if remote else ""
    kind = ("speedrun architecture (model.py's PLM: RMSNorm, QK-norm, ReLU², UNet skips, value embeddings, "
            "soft-capped head), through custom code in this folder" if remote else
            "ESM2 architecture, a native transformers `EsmForMaskedLM`")
    lines = ["---", "library_name: transformers", "pipeline_tag: fill-mask",
             "tags: [protein, protein-language-model, masked-lm, plm-speedrun]", "---", "",
             f"# {name}", "",
             f"A protein masked-language-model encoder trained with plm-speedrun: {kind}. "
             f"{model.num_parameters():,} parameters, {c.num_hidden_layers} layers of width {c.hidden_size}, "
             f"{c.num_attention_heads} heads.", "",
             "## Use", "", "```python", "from transformers import AutoModelForMaskedLM, AutoTokenizer", "",
             f'tokenizer = AutoTokenizer.from_pretrained("THIS_FOLDER_OR_REPO"{load})',  # reads config.json too
             f'model = AutoModelForMaskedLM.from_pretrained("THIS_FOLDER_OR_REPO"{load}).eval()',
             'batch = tokenizer(["MKTAYIAKQRQISFVKSHFSRQ", "MVLSPADKTNVKAAW"], padding=True, return_tensors="pt")',
             "out = model(**batch, output_hidden_states=True)  # logits (B, T, 33); hidden_states: L + 1 × (B, T, D)",
             "```", "",
             "The tokenizer is ESM2's (33 tokens, one-letter upper-case residues, `<cls>` … `<eos>`). "
             "`AutoModel` gives the encoder's hidden states: `hidden_states[i]` is the residual stream after i "
             "blocks and the last entry the final normed output, as in ESM. plm-speedrun tests that an export "
             "reproduces the logits and hidden states of its own loader (`checkpoint.load_model`) to 1e-5 in fp32, "
             "padded batches included (`tests/test_export.py`).", ""]
    if remote:
        lines += ["The model code is `model.py` of plm-speedrun, unchanged but for one relative import, wrapped by "
                  "`modeling_plm_speedrun.py`; read them before trusting remote code. Attention runs on "
                  "FlexAttention on CUDA and on SDPA elsewhere (`attention_backend` in config.json).", ""]
    else:
        lines += ["The contact-prediction head of `EsmModel` is not trained by plm-speedrun: it is zeros.", ""]
        if c.token_dropout:
            lines += ["Padded batches that contain `<mask>` need a transformers version with "
                      "huggingface/transformers#44163 (transformers 5): older ones, 4.57 included, scale ESM's token "
                      "dropout by the padded length instead of the sequence's.", ""]

    lines += ["## Training", ""]
    if record is None:
        lines += ["No run record was available when this folder was exported.", ""]
    else:
        lines += training_section(record, checkpoint_dir, license_text)
    for evaluation in evaluations:
        lines += evaluation_section(evaluation)
    return "\n".join(lines).rstrip() + "\n"


def training_section(record: dict, checkpoint_dir: Path, license_text: str | None) -> list[str]:
    cfg = record["config"]
    step = checkpoint_step(checkpoint_dir)
    val = {entry["step"]: entry for entry in record.get("val") or []}
    at = val.get(step)
    last = step is None or step == record.get("steps")
    tokens = at["tokens"] if at else record.get("tokens") if last else None
    seconds = at["train_time_s"] if at else record.get("train_time_s") if last else None
    hardware = (record.get("provenance") or {}).get("hardware", {}).get("summary") or record.get("hardware")
    world = record.get("world_size") or 1
    launcher = (f"torchrun --standalone --nproc_per_node={world} train.py" if world > 1 else "python train.py")
    git = record.get("git") or {}
    code = (f"plm-speedrun commit `{git['commit']}`" + (" (with uncommitted changes)" if git.get("dirty") else "")
            if git.get("commit") else "not recorded")
    rows = [("data", f"`{cfg['data_name']}` (`{cfg['data_dir']}`)"),
            ("data licence", license_text or "not recorded: check the licence of the training data before "
             "redistributing this model"),
            ("checkpoint", f"`{checkpoint_dir.name}`: step {_num(step)} of the run's {_num(record.get('steps'))}"),
            ("tokens seen", _num(tokens)),
            ("training time", f"{_num(seconds, ',.1f')} s of training clock" + (f" on {hardware}" if hardware else "")),
            ("code", code),
            ("command", f"`{launcher} --yaml_path training_config.yaml` (the run's resolved config, in this folder)")]
    lines = ["| | |", "|---|---|"] + [f"| {k} | {v} |" for k, v in rows] + [""]

    lines += ["## Validation", ""]
    if at is None:
        lines += [f"No validation at step {_num(step)} in the run record." if step is not None else
                  "The checkpoint's step is unknown (its directory is not named step_NNNNNN).", ""]
        return lines
    lines += [f"Loss per masked token on `{cfg['data_name']}` valid ({_num(cfg.get('val_mask_rate'), '.0%')} of "
              f"residues masked with fixed masks, seed {cfg.get('val_mask_seed')}) at step {step}: "
              f"**{at['loss']:.4f} nats** (perplexity {_num(at.get('perplexity'), '.3f')}, accuracy "
              f"{_num(at.get('accuracy'), '.4f')}).", ""]
    controls = record.get("controls")
    if controls:
        names = [k for k, v in controls.items() if k not in ("best", "best_name", "masked_tokens")
                 and isinstance(v, (int, float))]
        gain = at.get("gain", controls["best"] - at["loss"])
        lines += ["No-learning controls on the same masked tokens (what a model reaches without learning context):",
                  "", "| predictor | loss (nats) |", "|---|---|"]
        lines += [f"| {n} control | {controls[n]:.4f} |" for n in names]
        lines += [f"| **this model** | **{at['loss']:.4f}** |", "",
                  f"Gain below the best control ({controls['best_name']}): **{gain:+.4f} nats** "
                  "(positive: the model predicts masked residues better than residue statistics do).", ""]
    else:
        lines += ["The run record has no no-learning controls (a run from before controls.py, or a card made "
                  "without the JSON summary), so this loss has no reference point for what residue statistics "
                  "alone reach.", ""]
    test = record.get("test")
    if test and last:
        lines += [f"Test split (end of run): loss {test['loss']:.4f}, accuracy "
                  f"{_num(test.get('accuracy'), '.4f')}.", ""]
    if record.get("time_to_target_s") is not None:
        lines += [f"Reached the target loss {record['target_loss']} after {record['time_to_target_s']:.1f} s "
                  f"(step {record['step_to_target']}).", ""]
    return lines


def evaluation_section(evaluation: dict) -> list[str]:
    if evaluation["kind"] == "probe":
        split = f", split {evaluation['split']}" if evaluation.get("split") else ""
        results = evaluation["results"]
        lines = [f"## Probe: {evaluation['task']}{split}", "",
                 f"Frozen embeddings, {results[0]['metric']} on test (plm-speedrun `probe.py`):", "",
                 "| features | score (%) |", "|---|---|"]
        lines += [f"| {r['features']} | {_num(r.get('score') and 100 * r['score'], '.1f')} |" for r in results]
        published = evaluation.get("published_frozen_percent") or {}
        lines += [f"| published {k} (%) | {v['mean']} ± {v['error']} |" for k, v in published.items()]
        notes = sorted({n for r in results for n in r.get("notes", [])})
        return lines + [""] + [f"- {n}" for n in notes] + ([""] if notes else [])
    assays = evaluation["assays"]
    means = evaluation.get("mean") or {  # evaluate.py zeroshot writes the means; nan Spearmans are written as null
        key: sum(values) / len(values) for key in ("spearman", "unigram_spearman")
        if (values := [a[key] for a in assays if a.get(key) is not None])}
    labels = {"spearman": "**this model**", "unigram_spearman": "unigram control"}
    lines = ["## Zero-shot fitness prediction", "",
             f"Spearman with measured fitness, mean over {len(assays)} DMS assays "
             f"({evaluation.get('method', 'masked_marginal')} scoring; plm-speedrun `evaluate.py zeroshot`):", "",
             "| predictor | mean Spearman |", "|---|---|"]
    lines += [f"| {labels.get(k, f'published {k}')} | {_num(v, '.3f')} |" for k, v in means.items()]
    return lines + [""]


# ----------------------------------------------------------------------------------------------------------------
# The Hub


def push_folder(folder: Path, repo_id: str, token: str, commit_message: str) -> str:
    """Upload `folder` to the model repository `repo_id` (created if missing) -> its URL. Raises on failure: the
    caller decides whether that is fatal (export.py) or only reported (train.py)."""
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    api.create_repo(repo_id=repo_id, exist_ok=True)
    api.upload_folder(folder_path=str(folder), repo_id=repo_id, commit_message=commit_message)
    return f"https://huggingface.co/{repo_id}"


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", help="checkpoint directory, e.g. checkpoints/RUN/step_000500")
    parser.add_argument("--output_dir", required=True, help="folder to write (must be empty unless --overwrite)")
    parser.add_argument("--run_json", help="the run's JSON summary (default: found from the checkpoint's train_state)")
    parser.add_argument("--eval_json", action="append", default=[],
                        help="a `probe.py` or `evaluate.py zeroshot` --output file to report in the model card (repeatable)")
    parser.add_argument("--data_license", help="licence of the training data, when no SOURCE.md states it")
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty --output_dir")
    parser.add_argument("--push_to_hub", metavar="REPO_ID", help="upload the folder to this Hub model repository "
                        "(token from the environment variable HF_TOKEN)")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    token = os.environ.get("HF_TOKEN")
    if args.push_to_hub and not token:  # before any work
        print("export.py: error: --push_to_hub needs the environment variable HF_TOKEN (a write token)",
              file=sys.stderr)
        return 1
    try:
        folder, notes = export_checkpoint(args.checkpoint, args.output_dir, run_json=args.run_json,
                                          eval_jsons=args.eval_json, data_license=args.data_license,
                                          overwrite=args.overwrite)
    except ExportError as e:
        print(f"export.py: error: {e}", file=sys.stderr)
        return 1
    for note in notes:
        print(f"export.py: note: {note}", file=sys.stderr)
    remote = (folder / TEMPLATE.name).is_file()
    print(f"exported {args.checkpoint} to {folder}: AutoModelForMaskedLM.from_pretrained({str(folder)!r}"
          f"{', trust_remote_code=True' if remote else ''})")
    if args.push_to_hub:
        try:
            url = push_folder(folder, args.push_to_hub, token, f"plm-speedrun export of {Path(args.checkpoint).name}")
        except Exception as e:  # noqa: BLE001 - any upload failure is reported the same way; the export stays on disk
            message = f"{type(e).__name__}: {e}".replace(token, "<redacted>")
            print(f"export.py: error: push to {args.push_to_hub} failed ({message}); the export is in {folder}",
                  file=sys.stderr)
            return 1
        print(f"pushed to {url}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
