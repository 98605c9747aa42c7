"""probe.py (frozen-embedding probes and their CLI) against independent references: the FLIP file counts in
../shared/data/flip/SOURCE.md, one-hot composition, the model's own hidden states, a shuffled-label control.
Tiny model (hidden 32, 2 layers), small task slices, CPU."""
import json
import subprocess
import sys

import numpy as np
import pytest
import torch

import probe
import vocab
from evaluate import EvalError, _json_safe
from model import PLM

from conftest import TINY, random_proteins, scrambled_model


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def flip(shared_data):
    return shared_data / "flip"


# ---------------------------------------------------------------------------------------------------------------
# Tasks and the probe recipe


def test_task_readers_match_the_documented_counts(flip):
    # ../shared/data/flip/SOURCE.md: train (excl. val) / val / test
    expected = {"gb1": (2691, 299, 5743), "secondary_structure": (9712, 1080, 364),
                "conservation": (9392, 555, 519)}
    for name, counts in expected.items():
        task = probe.load_task(name, flip)
        assert (len(task.train.sequences), len(task.valid.sequences), len(task.test.sequences)) == counts, name
    melt = probe.load_task("meltome_draft", flip)
    assert len(melt.train.sequences) + len(melt.valid.sequences) == 2940 and len(melt.test.sequences) == 1504
    assert len(melt.valid.sequences) == 294 and any("DRAFT" in note for note in melt.notes)
    ss = probe.load_task("secondary_structure", flip)
    resolved = sum(int((t >= 0).sum()) for p in (ss.train, ss.valid, ss.test) for t in p.targets)
    assert resolved == 2_658_218  # the 1s of mask.fasta


def test_chunking_keeps_every_residue_and_pools_over_all_of_them():
    sequence = random_proteins(1, seed=4, low=2500, high=2501)[0]
    pieces = probe.chunk_sequence(sequence, 1022)
    assert "".join(pieces) == sequence and len(pieces) == 3 and max(map(len, pieces)) <= 1022
    assert max(map(len, pieces)) - min(map(len, pieces)) <= 1
    per_residue = probe.embed_sequences(probe.onehot_embedder, [sequence], per_residue=True,
                                           max_length=1024, batch_tokens=4096)
    np.testing.assert_array_equal(per_residue[0], probe.onehot_embedder([sequence])[0])
    pooled = probe.embed_sequences(probe.onehot_embedder, [sequence], per_residue=False,
                                      max_length=1024, batch_tokens=4096)
    composition = np.array([sequence.count(c) for c in vocab.RESIDUES]) / len(sequence)
    np.testing.assert_allclose(pooled[0], composition, atol=1e-6)


def test_model_features_are_the_models_embeddings(model):
    sequences = random_proteins(5, seed=5)
    embedder = probe.model_embedder(model, None, 256, "cpu")
    got = probe.embed_sequences(embedder, sequences, per_residue=True, max_length=1024, batch_tokens=256)
    for s, features in zip(sequences, got):
        ids = torch.tensor(vocab.encode_with_specials(s), dtype=torch.int64)[None]
        with torch.no_grad():
            expected = model.hidden_states(ids, torch.zeros_like(ids, dtype=torch.int32))[0, 1:-1]
        np.testing.assert_allclose(features, expected.numpy(), atol=1e-5)


@pytest.mark.parametrize("task", list(probe.TASKS))
def test_every_probe_runs_end_to_end(model, flip, task):
    n = 6 if task in ("secondary_structure", "conservation") else 40
    result = probe.run_probe(model, task, flip, max_train=n, max_test=n)
    assert (result["n_train"], result["n_valid"], result["n_test"]) == (n, n, n)
    assert result["subsampled"] and any("SUBSAMPLED" in note for note in result["notes"])
    assert result["lambda"] in probe.REGULARISATION_GRID and result["dim"] == TINY["hidden_size"]
    assert np.isfinite(result["score"]) and -1 <= result["score"] <= 1
    json.dumps(_json_safe(result))
    if task in ("secondary_structure", "conservation"):
        assert result["n_test_residues"] > 100


def test_onehot_control_on_gb1_has_positive_spearman(flip):
    # Mean-pooled one-hot = amino-acid composition; across GB1 variants it changes only through the 4 mutated
    # sites, which still carries a real signal (which residues appear, not where): Spearman ~0.5 on this slice.
    task = probe.load_task("gb1", flip)
    result = probe.run_probe(None, task, control="onehot", max_train=300, max_test=300)
    assert result["score"] > 0.3
    # The same pipeline with the training targets shuffled must lose the signal: the labels are wired correctly.
    rng = np.random.default_rng(0)
    shuffled = probe.Task(**{**vars(task), "train": probe.Partition(
        task.train.sequences, list(rng.permutation(task.train.targets)))})
    assert abs(probe.run_probe(None, shuffled, control="onehot", max_train=300, max_test=300)["score"]) < 0.2


def test_embedding_cache_avoids_re_embedding(model, flip, tmp_path, monkeypatch):
    calls = []
    original = PLM.embed
    monkeypatch.setattr(PLM, "embed", lambda self, *a, **k: calls.append(len(a[0])) or original(self, *a, **k))
    options = dict(max_train=20, max_test=20, cache_dir=tmp_path, model_id="abc")
    first = probe.run_probe(model, "gb1", flip, **options)
    assert calls and len(list(tmp_path.glob("gb1_*.npz"))) == 3
    calls.clear()
    second = probe.run_probe(model, "gb1", flip, **options)
    assert calls == [] and second == first
    probe.run_probe(model, "gb1", flip, **{**options, "max_test": 21})  # different sequences: miss for test only
    assert sum(calls) == 21
    calls.clear()
    probe.run_probe(model, "gb1", flip, **{**options, "model_id": "other weights"})
    assert sum(calls) == 60


def test_random_init_twin_ignores_the_trained_weights(flip):
    options = dict(control="random_init", max_train=30, max_test=30)
    first, second = scrambled_model(seed=1), scrambled_model(seed=2)
    state = torch.random.get_rng_state()
    a = probe.run_probe(first, "gb1", flip, **options)
    b = probe.run_probe(second, "gb1", flip, **options)
    assert a["score"] == b["score"] and a["features"] == "random_init"
    assert torch.equal(state, torch.random.get_rng_state())  # the caller's RNG stream is untouched


def test_probe_cli_with_controls(ckpt, flip, tmp_path, capsys):
    out = tmp_path / "probe.json"
    assert probe.main(["--checkpoint", str(ckpt), "--task", "gb1", "--data_dir", str(flip),
                          "--with_controls", "--max_train", "20", "--max_test", "20", "--cache_dir", "",
                          "--device", "cpu", "--output", str(out)]) == 0
    table = capsys.readouterr().out
    assert all(word in table for word in ("model", "onehot", "random_init", "ESM2-8M 81.8"))
    payload = json.loads(out.read_text())
    assert [r["features"] for r in payload["results"]] == ["model", "onehot", "random_init"]
    assert payload["published_frozen_percent"]["ESM2-35M"] == {"mean": 82.7, "error": 0.3}


def test_probe_every_layer_and_pick_the_best_on_validation(ckpt, flip, tmp_path, capsys):
    out = tmp_path / "layers.json"
    assert probe.main(["--checkpoint", str(ckpt), "--task", "gb1", "--data_dir", str(flip), "--layers", "all",
                       "--max_train", "60", "--max_test", "40", "--cache_dir", "", "--device", "cpu",
                       "--output", str(out)]) == 0
    result = json.loads(out.read_text())
    assert [r["layer"] for r in result["layers"]] == [0, 1, 2, None]  # embeddings, both blocks, the normed output
    best = max(result["layers"], key=lambda r: r["valid_score"])
    assert result["chosen_layer"] == best["layer"] and result["results"][0]["score"] == best["score"]
    assert "by layer" in capsys.readouterr().out
    with pytest.raises(EvalError, match="not a layer"):
        probe.probe_layers("1,7", 2)


# ---------------------------------------------------------------------------------------------------------------
# Bad input: one clear line naming the thing, non-zero exit


def cli_error(capsys, argv) -> str:
    assert probe.main(argv) == 1
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) >= 1 and lines[-1].startswith("probe.py: error: ")
    return lines[-1]


def test_bad_inputs_give_one_clear_error(ckpt, flip, tmp_path, capsys):
    args = ["--checkpoint", str(ckpt), "--data_dir", str(flip)]
    assert "'nonsense'" in cli_error(capsys, args + ["--task", "nonsense"])
    assert "gb1_splits.zip" in cli_error(capsys, ["--control", "onehot", "--task", "gb1", "--data_dir", str(tmp_path)])
    assert "'five_vs_rest'" in cli_error(capsys, args + ["--task", "gb1", "--split", "five_vs_rest"])
    assert "--split" in cli_error(capsys, args + ["--task", "conservation", "--split", "three_vs_rest"])
    assert "--layer 9" in cli_error(capsys, args + ["--task", "gb1", "--layer", "9"])
    if not torch.cuda.is_available():
        assert "CUDA" in cli_error(capsys, args + ["--task", "gb1", "--device", "cuda"])
    with pytest.raises(EvalError, match="model_id"):  # a cache keyed by nothing would serve stale features
        probe.run_probe(scrambled_model(), "gb1", flip, cache_dir=tmp_path)
    with pytest.raises(EvalError, match="--layer"):
        probe.run_probe(None, "gb1", flip, control="onehot", layer=1)


def test_cli_error_is_one_line_and_nonzero_exit(flip):
    run = subprocess.run([sys.executable, str(probe.REPO / "probe.py"), "--control", "onehot", "--task", "nonsense",
                          "--data_dir", str(flip)], capture_output=True, text=True, timeout=60)
    assert run.returncode == 1
    assert run.stderr.strip().splitlines() == [
        "probe.py: error: unknown task 'nonsense'; choose from gb1, secondary_structure, conservation, meltome_draft"]
