"""export.py: checkpoints of both architectures, exported and loaded back through `transformers` from disk.

The reference is `checkpoint.load_model` of the same checkpoint: logits and every layer's hidden states must agree to
1e-5 in fp32 on padded batches (each row also against its sequence run alone, unpadded), the exported tokenizer
must encode as vocab.py does, and the folder must load in a fresh interpreter that cannot see this repository.
The Hub is never contacted (HF_HUB_OFFLINE); the push is tested against a stand-in for `HfApi`.
"""
import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

import checkpoint
import export
from model import PLM, REMOVED_FIELDS, ModelConfig, esm2_config
from vocab import CLS, EOS, MASK, PAD, RESIDUES, UNK, encode_with_specials

transformers = pytest.importorskip("transformers")
from transformers import AutoModel, AutoModelForMaskedLM, AutoTokenizer  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = {
    "speedrun": ModelConfig(hidden_size=32, num_attention_heads=2, num_hidden_layers=4, value_embeddings=1),
    # every other option the HF wrapper passes through: tied head, token dropout, both caps, odd depth
    "speedrun-options": ModelConfig(hidden_size=32, num_attention_heads=2, num_hidden_layers=3, value_embeddings=1,
                                    tie_embeddings=True, token_dropout=True, attention_soft_cap=8.0),
    "esm2": esm2_config(32, 2, 2),
}
TOLERANCE = dict(atol=1e-5, rtol=1e-5)
ESM_PADDING_BUG = ("transformers' own EsmForMaskedLM gives a padded row other logits than its sequence alone: a "
                   "version without huggingface/transformers#44163 (token dropout ignores attention_mask), e.g. 4.57.6")


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    """No Hub access: the environment for subprocesses, the constant for this process (read from it at import)."""
    import huggingface_hub.constants
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def build(config: ModelConfig, seed: int = 0) -> PLM:
    """Initialised, then every parameter perturbed (init_weights zeroes output projections, which would make the
    comparison of most layers vacuous)."""
    torch.manual_seed(seed)
    model = PLM(config)
    model.init_weights()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return model


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> dict[str, tuple[Path, Path]]:
    """name -> (checkpoint directory, export folder), one per config."""
    out = {}
    for i, (name, config) in enumerate(CONFIGS.items()):
        base = tmp_path_factory.mktemp(name)
        ckpt = base / "run" / "step_000010"
        ckpt.mkdir(parents=True)
        checkpoint.save_model(build(config, seed=i), ckpt)
        folder, _ = export.export_checkpoint(ckpt, base / f"hf_{name.replace('-', '_')}")
        out[name] = (ckpt, folder)
    return out


def padded_batch(lengths: list[int], seed: int, left: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows of <cls> residues <eos> with ~20% <mask>, padded with <pad> to the longest (on the right as ESM's
    tokenizer does, or on the left) -> (input_ids, attention_mask), both (B, T)."""
    g = torch.Generator().manual_seed(seed)
    T = max(lengths)
    input_ids = torch.full((len(lengths), T), PAD)
    attention_mask = torch.zeros(len(lengths), T, dtype=torch.int64)
    for row, n in enumerate(lengths):
        tokens = torch.randint(4, 24, (n,), generator=g)
        tokens = torch.where(torch.rand(n, generator=g) < 0.2, MASK, tokens)
        tokens[0], tokens[-1] = CLS, EOS
        span = slice(T - n, T) if left else slice(0, n)
        input_ids[row, span], attention_mask[row, span] = tokens, 1
    return input_ids, attention_mask


def reference(model: PLM, input_ids, attention_mask) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """load_model's logits and HF-ordered hidden states (stream after i blocks, i < L; then the final normed output)
    for a padded batch given as model.py's seq_ids."""
    seq_ids = torch.where(attention_mask.bool(), 0, -1).to(torch.int32)
    L = model.config.num_hidden_layers
    with torch.no_grad():
        hidden = [model.hidden_states(input_ids, seq_ids, layer=i) for i in range(L)]
        return model.logits(input_ids, seq_ids), hidden + [model.hidden_states(input_ids, seq_ids)]


def assert_matches_reference(ref: PLM, got_logits, got_hidden, input_ids, attention_mask):
    """Real (unpadded) positions against the padded reference, and each row against its sequence alone."""
    want_logits, want_hidden = reference(ref, input_ids, attention_mask)
    real = attention_mask.bool()
    assert len(got_hidden) == len(want_hidden) == ref.config.num_hidden_layers + 1
    torch.testing.assert_close(got_logits[real], want_logits[real], **TOLERANCE)
    for got, want in zip(got_hidden, want_hidden):
        torch.testing.assert_close(got[real], want[real], **TOLERANCE)
    for row in range(input_ids.size(0)):
        alone = input_ids[row, real[row]][None]
        want_logits, want_hidden = reference(ref, alone, torch.ones_like(alone))
        torch.testing.assert_close(got_logits[row, real[row]], want_logits[0], **TOLERANCE)
        torch.testing.assert_close(got_hidden[-1][row, real[row]], want_hidden[-1][0], **TOLERANCE)


# ---- Parity --------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["speedrun", "speedrun-options"])
@pytest.mark.parametrize("left", [False, True], ids=["right-padded", "left-padded"])
def test_speedrun_export_matches_load_model(exported, name, left):
    ckpt, folder = exported[name]
    ref = checkpoint.load_model(ckpt)
    mlm, info = AutoModelForMaskedLM.from_pretrained(folder, trust_remote_code=True, output_loading_info=True)
    base = AutoModel.from_pretrained(folder, trust_remote_code=True)
    assert type(mlm).__name__ == "PLMSpeedrunForMaskedLM" and type(base).__name__ == "PLMSpeedrunModel"
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    assert not mlm.training and not base.training  # from_pretrained returns eval mode
    assert not set(REMOVED_FIELDS) & set(json.loads((folder / "config.json").read_text()))
    input_ids, attention_mask = padded_batch([17, 9, 30, 3], seed=1, left=left)
    with torch.no_grad():
        out = mlm(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True)
        emb = base(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True)
    assert_matches_reference(ref, out.logits, out.hidden_states, input_ids, attention_mask)
    assert_matches_reference(ref, out.logits, emb.hidden_states, input_ids, attention_mask)
    torch.testing.assert_close(emb.last_hidden_state, emb.hidden_states[-1], atol=0, rtol=0)


def test_speedrun_loss_is_the_training_loss(exported):
    """labels -> the mean cross-entropy over scored tokens = PLM.forward's sum / count."""
    ckpt, folder = exported["speedrun"]
    ref = checkpoint.load_model(ckpt)
    mlm = AutoModelForMaskedLM.from_pretrained(folder, trust_remote_code=True)
    input_ids, attention_mask = padded_batch([12, 20], seed=2)
    labels = torch.where((input_ids == MASK) & attention_mask.bool(), 7, -100)
    with torch.no_grad():
        loss = mlm(input_ids=input_ids, attention_mask=attention_mask, labels=labels).loss
        total, count = ref(input_ids, torch.where(attention_mask.bool(), 0, -1).to(torch.int32), labels)
    torch.testing.assert_close(loss, total / count, **TOLERANCE)


def test_speedrun_wrapper_refuses_holes_in_the_attention_mask(exported):
    mlm = AutoModelForMaskedLM.from_pretrained(exported["speedrun"][1], trust_remote_code=True)
    input_ids = torch.full((1, 6), 5)
    with pytest.raises(ValueError, match="one run of real tokens"):
        mlm(input_ids=input_ids, attention_mask=torch.tensor([[1, 1, 0, 1, 1, 0]]))


def test_speedrun_model_from_config_gets_model_py_init(exported):
    """A model built from the config (not loaded) is initialised by PLM.init_weights, not left empty."""
    config = transformers.AutoConfig.from_pretrained(exported["speedrun"][1], trust_remote_code=True)
    torch.manual_seed(5)
    hf = AutoModelForMaskedLM.from_config(config, trust_remote_code=True)
    torch.manual_seed(5)
    ref = PLM(CONFIGS["speedrun"])
    ref.init_weights()
    for name, p in ref.state_dict().items():
        torch.testing.assert_close(hf.plm.state_dict()[name], p, atol=0, rtol=0)


def test_speedrun_export_saves_and_reloads(exported, tmp_path):
    """A user's save_pretrained (e.g. after fine-tuning) keeps the code and the tied head."""
    folder = exported["speedrun-options"][1]
    mlm = AutoModelForMaskedLM.from_pretrained(folder, trust_remote_code=True)
    mlm.save_pretrained(tmp_path / "resaved")
    again = AutoModelForMaskedLM.from_pretrained(tmp_path / "resaved", trust_remote_code=True)
    input_ids, attention_mask = padded_batch([10, 6], seed=3)
    with torch.no_grad():
        torch.testing.assert_close(again(input_ids=input_ids, attention_mask=attention_mask).logits,
                                   mlm(input_ids=input_ids, attention_mask=attention_mask).logits, atol=0, rtol=0)
    assert again.plm.head.weight is again.plm.token_embedding.weight


def test_esm2_export_is_native_esm(exported):
    """No remote code: the folder is a plain EsmForMaskedLM (and EsmModel) with ESM's names, token dropout on."""
    ckpt, folder = exported["esm2"]
    assert not list(folder.glob("*.py"))
    assert "auto_map" not in json.loads((folder / "config.json").read_text())
    ref = checkpoint.load_model(ckpt)
    mlm, info = AutoModelForMaskedLM.from_pretrained(folder, output_loading_info=True)
    base = AutoModel.from_pretrained(folder, add_pooling_layer=False)
    assert type(mlm) is transformers.EsmForMaskedLM and type(base) is transformers.EsmModel
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    input_ids, attention_mask = padded_batch([17, 9, 30, 3], seed=1)
    assert (input_ids[0] == MASK).any()  # token dropout's rescaling is exercised
    with torch.no_grad():
        out = mlm(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True)
        emb = base(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True)
        alone = mlm(input_ids=input_ids[:1, :17]).logits
    assert torch.allclose(out.logits[0, :17], alone[0], **TOLERANCE), ESM_PADDING_BUG
    assert_matches_reference(ref, out.logits, out.hidden_states, input_ids, attention_mask)
    assert_matches_reference(ref, out.logits, emb.hidden_states, input_ids, attention_mask)


def test_tokenizer_encodes_as_vocab_py(exported):
    sequences = [RESIDUES + ".-", "MKTAYIAKQRQISFVKSHFSRQ", "M", "MJK*"]  # J and * are not amino-acid codes: <unk>
    for name in ("speedrun", "esm2"):
        tokenizer = AutoTokenizer.from_pretrained(exported[name][1], trust_remote_code=True)
        assert type(tokenizer).__name__ == "EsmTokenizer"
        assert [tokenizer(s)["input_ids"] for s in sequences] == [encode_with_specials(s).tolist() for s in sequences]
        ids = (tokenizer.cls_token_id, tokenizer.pad_token_id, tokenizer.eos_token_id, tokenizer.unk_token_id,
               tokenizer.mask_token_id)
        assert ids == (CLS, PAD, EOS, UNK, MASK)
        batch = tokenizer(["MKT", "MK<mask>TAY"], padding=True)  # "<mask>" in text is the mask token, as in ESM
        assert batch["input_ids"] == [[CLS, 20, 15, 11, EOS, PAD, PAD, PAD], [CLS, 20, 15, MASK, 11, 5, 19, EOS]]
        assert batch["attention_mask"] == [[1] * 5 + [0] * 3, [1] * 8]


# ---- Self-contained ------------------------------------------------------------------------------------------------

FRESH_PYTHON = r"""
import importlib.util, sys
from pathlib import Path
import torch
from transformers import AutoModelForMaskedLM, AutoTokenizer

repo, output = Path(sys.argv[1]).resolve(), sys.argv[2]
assert all(Path(p or ".").resolve() != repo for p in sys.path), sys.path
assert importlib.util.find_spec("model") is None and importlib.util.find_spec("checkpoint") is None
results = {}
for folder, remote in zip(sys.argv[3::2], sys.argv[4::2]):
    remote = remote == "remote"
    tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=remote)
    model = AutoModelForMaskedLM.from_pretrained(folder, trust_remote_code=remote)
    batch = tokenizer(["MKTAYIAKQRQISFVKSHFSRQ", "MVLS<mask>ADKTNV"], padding=True, return_tensors="pt")
    with torch.no_grad():
        logits = model(**batch).logits
    results[folder] = dict(batch, logits=logits, cls=type(model).__name__)
assert "model" not in sys.modules and "vocab" not in sys.modules  # the folder's copies live under transformers_modules
torch.save(results, output)
"""


def test_export_loads_in_a_fresh_python_without_the_repo(exported, tmp_path):
    """`python -I` (no PYTHONPATH, no script directory on sys.path) in a directory outside the repository, with
    an empty Hugging Face cache: only transformers and torch, and the folder."""
    speedrun, esm2 = exported["speedrun"][1], exported["esm2"][1]
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "HF_HOME": str(tmp_path / "hf_home"),
           "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    output = tmp_path / "results.pt"
    run = subprocess.run([sys.executable, "-I", "-c", FRESH_PYTHON, str(ROOT), str(output),
                          str(speedrun), "remote", str(esm2), "native"],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    results = torch.load(output)
    for name, folder, cls in (("speedrun", speedrun, "PLMSpeedrunForMaskedLM"), ("esm2", esm2, "EsmForMaskedLM")):
        got = results[str(folder)]
        assert got["cls"] == cls
        ref = checkpoint.load_model(exported[name][0])
        want, _ = reference(ref, got["input_ids"], got["attention_mask"])
        real = got["attention_mask"].bool()
        torch.testing.assert_close(got["logits"][real], want[real], **TOLERANCE,
                                   msg=lambda m: f"{name}: {m}\n(esm2: {ESM_PADDING_BUG}?)")


def test_shipped_code_is_the_repository_code(exported):
    """model.py differs from the repository's only in its vocab import; vocab.py and the template are copies."""
    folder = exported["speedrun"][1]
    ours, shipped = (ROOT / "model.py").read_text().splitlines(), (folder / "model.py").read_text().splitlines()
    changed = [(a, b) for a, b in zip(ours, shipped) if a != b]
    assert len(ours) == len(shipped) and changed == [(a, a.replace("from vocab", "from .vocab")) for a, _ in changed]
    assert len(changed) == 1
    assert (folder / "vocab.py").read_text() == (ROOT / "vocab.py").read_text()
    assert (folder / "modeling_plm_speedrun.py").read_text() == (ROOT / "hf" / "modeling_plm_speedrun.py").read_text()


def test_unshipped_repository_import_stops_the_export():
    with pytest.raises(export.ExportError, match="'optim'.*CODE_FILES"):
        export.relative_imports("import torch\nfrom optim import Muon\n", "model.py")
    with pytest.raises(export.ExportError, match="only `from vocab import"):
        export.relative_imports("import vocab\n", "model.py")
    assert export.relative_imports("import math\nfrom vocab import MASK\n", "model.py") == \
        "import math\nfrom .vocab import MASK\n"


# ---- The model card ------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> tuple[Path, dict]:
    """A real 2-step train.py run on the embedded demo data, controls on: (its checkpoint, its JSON summary)."""
    import train
    tmp = tmp_path_factory.mktemp("tiny_run")
    values = dict(data_dir=ROOT / "data" / "demo", data_name="demo", log_dir=tmp / "logs", save_dir=tmp / "ckpt",
                  log_name="tiny", hidden_size=32, num_attention_heads=2, num_hidden_layers=2, value_embeddings=1,
                  batch_size=2048, row_length=256, max_length=256, grad_accum=1, num_workers=0, num_steps=2,
                  eval_every=2, log_every=1, untimed_warmup_steps=0, lr_warmup_steps=0, muon_momentum_warmup_steps=2,
                  controls_max_train_tokens=20000)
    summary = train.main([arg for key, value in values.items() for arg in (f"--{key}", str(value))])
    assert summary["status"] == "ok"
    return Path(summary["checkpoints"][-1]), summary


def test_model_card_from_the_run_record(tiny_run, tmp_path, capsys):
    """The JSON summary is found through train_state.pt; the card reports the checkpoint's step, tokens, time,
    loss, controls and gain, the data licence from data/demo/SOURCE.md, and a config that train.py accepts."""
    import train
    ckpt, summary = tiny_run
    assert export.main([str(ckpt), "--output_dir", str(tmp_path / "out")]) == 0
    folder = tmp_path / "out"
    card = (folder / "README.md").read_text()
    val = summary["val"][-1]
    assert val["step"] == 2 and "gain" in val and summary["controls"]
    for expected in ("step 2 of the run's 2", f"{val['tokens']:,}", f"{val['train_time_s']:,.1f} s",
                     f"**{val['loss']:.4f} nats**", f"{summary['controls']['best']:.4f}",
                     f"({summary['controls']['best_name']}): **{val['gain']:+.4f} nats**", "CC BY 4.0",
                     "python train.py --yaml_path training_config.yaml", summary["git"]["commit"],
                     "trust_remote_code=True"):
        assert expected in card, expected
    cfg, _ = train.parse_config(["--yaml_path", str(folder / "training_config.yaml")])
    as_json = json.loads(json.dumps(summary["config"]))  # tuples become lists, as in the JSON summary
    assert cfg.flat() == {**as_json, "push_to_hub": False}
    assert json.loads((folder / "training_run.json").read_text())["run_id"] == "tiny"
    assert "trust_remote_code=True" in capsys.readouterr().out


def test_model_card_without_the_json_uses_train_state(tiny_run, tmp_path):
    """The summary is gone (another machine): the card still has the step's loss and tokens, and says what it
    lacks."""
    import shutil
    ckpt, summary = tiny_run
    copy = tmp_path / "tiny" / ckpt.name
    shutil.copytree(ckpt, copy)
    state = checkpoint.load_train_state(copy)
    state["config"]["log_dir"] = str(tmp_path / "no_logs_here")
    torch.save(state, copy / checkpoint.STATE_FILE)
    folder, notes = export.export_checkpoint(copy, tmp_path / "out")
    card = (folder / "README.md").read_text()
    assert any("no_logs_here/tiny.json not found" in n for n in notes)
    assert f"**{summary['val'][-1]['loss']:.4f} nats**" in card and f"{summary['val'][-1]['tokens']:,}" in card
    assert "has no no-learning controls" in card and not (folder / "training_run.json").exists()


def test_model_card_from_an_older_record_without_controls(tmp_path):
    """logs_to_keep/cpu_demo_v1/cpu_demo.json (the demo before its retune) predates the controls: the card says so
    instead of failing."""
    run_json = ROOT / "logs_to_keep" / "cpu_demo_v1" / "cpu_demo.json"
    record = json.loads(run_json.read_text())
    names = {f.name for f in dataclasses.fields(ModelConfig)}
    ckpt = tmp_path / "cpu_demo" / "step_000077"  # the checkpoint that JSON lists
    ckpt.mkdir(parents=True)
    checkpoint.save_model(build(ModelConfig(**{k: v for k, v in record["config"].items() if k in names})), ckpt)
    folder, notes = export.export_checkpoint(ckpt, tmp_path / "out", run_json=run_json)
    card = (folder / "README.md").read_text()
    assert "has no no-learning controls" in card and f"**{record['final_val_loss']:.4f} nats**" in card
    assert yaml.safe_load((folder / "training_config.yaml").read_text())["hidden_size"] == 128


def test_overwrite_replaces_an_earlier_export(exported, tmp_path):
    ckpt, _ = exported["speedrun"]
    first, _ = export.export_checkpoint(ckpt, tmp_path / "out")
    (first / "stale.txt").write_text("from an older export")
    again, _ = export.export_checkpoint(ckpt, tmp_path / "out", overwrite=True)
    assert again == first and not (again / "stale.txt").exists() and (again / "config.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_model_card_reports_probe_and_zeroshot_of_this_checkpoint(exported, tmp_path):
    ckpt, _ = exported["esm2"]
    probe = {"checkpoint": str(ckpt), "checkpoint_sha256": export.sha256_file(ckpt / checkpoint.MODEL_FILE),
             "task": "gb1", "split": "three_vs_rest", "published_frozen_percent": {"ESM2-8M": {"mean": 49.0,
                                                                                            "error": 2.0}},
             "results": [{"features": "model", "metric": "spearman", "score": 0.4321, "notes": []},
                         {"features": "onehot", "metric": "spearman", "score": 0.125, "notes": []}]}
    path = tmp_path / "probe.json"
    path.write_text(json.dumps(probe))
    folder, _ = export.export_checkpoint(ckpt, tmp_path / "out", eval_jsons=[path])
    card = (folder / "README.md").read_text()
    assert "## Probe: gb1, split three_vs_rest" in card and "| model | 43.2 |" in card and "| onehot | 12.5 |" in card
    zeroshot = {"checkpoint": str(ckpt), "checkpoint_sha256": probe["checkpoint_sha256"], "method": "masked_marginal",
                "assays": [{"assay": "A", "n_mutants": 10, "spearman": 0.3, "unigram_spearman": 0.1, "reference": {}},
                           {"assay": "B", "n_mutants": 12, "spearman": None, "unigram_spearman": 0.0, "reference": {}}]}
    path_zs = tmp_path / "zeroshot.json"  # evaluate.py zeroshot --output, written before its `mean` field existed
    path_zs.write_text(json.dumps(zeroshot))
    folder, _ = export.export_checkpoint(ckpt, tmp_path / "out", eval_jsons=[path_zs], overwrite=True)
    card = (folder / "README.md").read_text()
    assert "mean over 2 DMS assays" in card and "| **this model** | 0.300 |" in card
    assert "| unigram control | 0.050 |" in card
    zeroshot["mean"] = {"spearman": 0.3, "unigram_spearman": 0.05, "ESM2_8M": 0.182}
    path_zs.write_text(json.dumps(zeroshot))
    folder, _ = export.export_checkpoint(ckpt, tmp_path / "out", eval_jsons=[path_zs], overwrite=True)
    assert "| published ESM2_8M | 0.182 |" in (folder / "README.md").read_text()
    probe["checkpoint_sha256"] = "0" * 64
    path.write_text(json.dumps(probe))
    with pytest.raises(export.ExportError, match="scores another checkpoint"):
        export.export_checkpoint(ckpt, tmp_path / "other", eval_jsons=[path])


# ---- Errors --------------------------------------------------------------------------------------------------------

def test_errors_name_the_problem(exported, tmp_path, capsys):
    ckpt, folder = exported["speedrun"]
    assert export.main([str(ckpt.parent), "--output_dir", str(tmp_path / "a")]) == 1
    assert "is not a checkpoint directory" in capsys.readouterr().err and not (tmp_path / "a").exists()
    with pytest.raises(export.ExportError, match="latest step is .*step_000010"):
        export.export_checkpoint(ckpt.parent, tmp_path / "a")
    with pytest.raises(export.ExportError, match="not empty .*--overwrite"):
        export.export_checkpoint(ckpt, folder)
    with pytest.raises(export.ExportError, match="holds the checkpoint"):
        export.export_checkpoint(ckpt, ckpt.parent, overwrite=True)
    (tmp_path / "precious").mkdir()
    (tmp_path / "precious" / "notes.txt").write_text("keep me")
    with pytest.raises(export.ExportError, match="not an earlier export"):
        export.export_checkpoint(ckpt, tmp_path / "precious", overwrite=True)
    assert (tmp_path / "precious" / "notes.txt").is_file()
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"run_id": "x", "config": {}, "checkpoints": ["checkpoints/x/step_000010"]}))
    with pytest.raises(export.ExportError, match="does not list the checkpoint run/step_000010"):
        export.export_checkpoint(ckpt, tmp_path / "b", run_json=other)
    other.write_text(json.dumps({"run_id": "x", "config": {"hidden_size": 64}, "checkpoints": ["x/run/step_000010"]}))
    with pytest.raises(export.ExportError, match=r"other \['hidden_size'\]"):
        export.export_checkpoint(ckpt, tmp_path / "b", run_json=other)
    assert not (tmp_path / "b").exists()
    assert not list(tmp_path.glob("*.tmp-*"))


def test_checkpoint_of_an_earlier_version_exports(exported, tmp_path):
    """A model_config.json written before sliding_window, rope_base and logit_cap_type were removed exports when they
    hold the values the model computes with (same logits, keys gone from config.json), and is refused, naming the
    key, when they do not."""
    import shutil
    ckpt, _ = exported["speedrun"]
    old = tmp_path / "old" / ckpt.name
    shutil.copytree(ckpt, old)
    config_file = old / checkpoint.CONFIG_FILE
    saved = json.loads(config_file.read_text())
    config_file.write_text(json.dumps({**saved, "sliding_window": 0, "rope_base": 10000.0, "logit_cap_type": "tanh"}))
    folder, _ = export.export_checkpoint(old, tmp_path / "out")
    assert not set(REMOVED_FIELDS) & set(json.loads((folder / "config.json").read_text()))
    mlm = AutoModelForMaskedLM.from_pretrained(folder, trust_remote_code=True)
    input_ids, attention_mask = padded_batch([12, 7], seed=4)
    with torch.no_grad():
        got = mlm(input_ids=input_ids, attention_mask=attention_mask).logits
    want, _ = reference(checkpoint.load_model(ckpt), input_ids, attention_mask)
    real = attention_mask.bool()
    torch.testing.assert_close(got[real], want[real], **TOLERANCE)
    config_file.write_text(json.dumps({**saved, "sliding_window": 8}))
    with pytest.raises(export.ExportError, match="sliding_window=8"):
        export.export_checkpoint(old, tmp_path / "refused")
    assert not (tmp_path / "refused").exists()


# ---- The Hub -------------------------------------------------------------------------------------------------------

TOKEN = "hf_FAKEexportTOKEN0123456789"


def test_push_uploads_the_exported_folder(exported, tmp_path, monkeypatch, capsys):
    import huggingface_hub
    ckpt, _ = exported["esm2"]
    pushed = {}

    class Api:
        def __init__(self, token):
            pushed["token"] = token

        def create_repo(self, repo_id, exist_ok):
            pushed["repo"] = repo_id

        def upload_folder(self, folder_path, repo_id, commit_message):
            pushed["files"] = sorted(p.name for p in Path(folder_path).iterdir())

    monkeypatch.setattr(huggingface_hub, "HfApi", Api)
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    out = tmp_path / "out"
    assert export.main([str(ckpt), "--output_dir", str(out), "--push_to_hub", "someone/tiny"]) == 0
    assert pushed == {"token": TOKEN, "repo": "someone/tiny", "files": sorted(p.name for p in out.iterdir())}
    assert {"config.json", "model.safetensors", "README.md", "vocab.txt", "tokenizer_config.json"} \
        <= set(pushed["files"])
    assert "pushed to https://huggingface.co/someone/tiny" in capsys.readouterr().out


def test_failed_push_is_reported_without_the_token(exported, tmp_path, monkeypatch, capsys):
    import huggingface_hub

    class FailingApi:
        def __init__(self, token):
            self.token = token

        def create_repo(self, repo_id, exist_ok):
            raise RuntimeError(f"401 Unauthorized for token {self.token}")

    monkeypatch.setattr(huggingface_hub, "HfApi", FailingApi)
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    out = tmp_path / "out"
    assert export.main([str(exported["esm2"][0]), "--output_dir", str(out), "--push_to_hub", "someone/tiny"]) == 1
    err = capsys.readouterr().err
    assert "push to someone/tiny failed (RuntimeError: 401 Unauthorized for token <redacted>)" in err
    assert TOKEN not in err and f"the export is in {out}" in err and (out / "config.json").is_file()
    monkeypatch.delenv("HF_TOKEN")
    assert export.main([str(exported["esm2"][0]), "--output_dir", str(tmp_path / "x"), "--push_to_hub", "a/b"]) == 1
    assert "HF_TOKEN" in capsys.readouterr().err and not (tmp_path / "x").exists()
