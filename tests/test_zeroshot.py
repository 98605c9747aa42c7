"""Zero-shot fitness scoring (zeroshot.py, `evaluate.py zeroshot`) with toy models whose preferences are known."""
import json

import numpy as np
import pytest
import torch

import checkpoint
import evaluate
import vocab
import zeroshot
from model import PLM, ModelConfig
from zeroshot import MutationError, parse_mutant, score_mutations, window

T = vocab.TOKEN_TO_ID

pytestmark = pytest.mark.usefixtures("one_torch_thread")


class PrefersResidue(torch.nn.Module):
    """Logits that favour one residue everywhere, whatever the input: mutations to it should score higher."""

    def __init__(self, favourite: str, strength: float = 3.0):
        super().__init__()
        self.bias = torch.nn.Parameter(torch.zeros(vocab.VOCAB_SIZE))
        with torch.no_grad():
            self.bias[T[favourite]] = strength

    def logits(self, input_ids, seq_ids):
        return self.bias.expand(*input_ids.shape, -1).clone()


class CopiesInput(torch.nn.Module):
    """Predicts the input token at each position (a model that has only learned to copy): the wild-type marginal
    then prefers the wild type everywhere, while a masked position carries no information (uniform)."""

    def __init__(self):
        super().__init__()
        self.scale = torch.nn.Parameter(torch.tensor(5.0))

    def logits(self, input_ids, seq_ids):
        out = self.scale * torch.nn.functional.one_hot(input_ids, vocab.VOCAB_SIZE).float()
        out[..., vocab.MASK] = 0.0
        return out


class RecordsInputs(PrefersResidue):
    def __init__(self):
        super().__init__("A")
        self.seen = []

    def logits(self, input_ids, seq_ids):
        self.seen.append(input_ids.clone())
        return super().logits(input_ids, seq_ids)


WT = "MKTAYIAKQRQISFVKSHFSRQ"


def test_known_preference_gives_the_expected_spearman_sign():
    mutants = [f"{WT[i]}{i + 1}{aa}" for i in range(len(WT)) for aa in "AGW" if aa != WT[i]]
    to_a = np.array([1.0 if m.endswith("A") else 0.0 for m in mutants])
    scores = score_mutations(PrefersResidue("A"), WT, mutants)
    assert zeroshot.spearman(scores, to_a) > 0.9
    assert zeroshot.spearman(scores, -to_a) < -0.9
    # the value itself: log p(A) - log p(wt) with p = softmax(bias)
    logp = torch.log_softmax(PrefersResidue("A").bias.detach(), 0)
    assert scores[mutants.index("K2A")] == pytest.approx(float(logp[T["A"]] - logp[T["K"]]), abs=1e-6)


def test_masked_marginal_masks_and_wt_marginal_does_not():
    mutants = ["K2A", "T3W", "Y5G"]
    masked = score_mutations(CopiesInput(), WT, mutants, method="masked_marginal")
    wt = score_mutations(CopiesInput(), WT, mutants, method="wt_marginal")
    np.testing.assert_allclose(masked, 0.0, atol=1e-6)  # the masked position shows nothing to copy
    assert np.all(wt < -4)  # the unmasked wild type is copied: every substitution is "unfit"


def test_multi_substitutions_are_summed_and_batching_does_not_matter():
    model = PLM(ModelConfig(vocab_size=vocab.VOCAB_SIZE, hidden_size=32, num_attention_heads=2,
                            num_hidden_layers=2, value_embeddings=1))
    torch.manual_seed(0)
    model.init_weights()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.3 * torch.randn_like(p))
    singles = score_mutations(model, WT, ["K2A", "Q9R", "S13G"], batch_size=1)
    double = score_mutations(model, WT, ["K2A:Q9R:S13G"], batch_size=32)
    assert double[0] == pytest.approx(singles.sum(), abs=1e-5)
    np.testing.assert_allclose(score_mutations(model, WT, ["K2A", "Q9R", "S13G"], batch_size=32), singles,
                               atol=1e-5)


@pytest.mark.parametrize("position, expected", [(1, (0, 10)), (6, (0, 10)), (7, (1, 11)), (14, (8, 18)),
                                                (15, (9, 19)), (16, (10, 20)), (20, (10, 20))])
def test_window_rule(position, expected):
    # ProteinGym's get_optimal_window for a 20-residue protein and a 10-residue window
    assert window(position, 20, 10) == expected
    start, stop = window(position, 20, 10)
    assert start < position <= stop and stop - start == 10


def test_long_proteins_are_scored_in_windows_around_the_position():
    model = RecordsInputs()
    score_mutations(model, WT, ["F19A"], max_length=12)  # 10 residues per window, WT has 22
    (inputs,) = model.seen
    start, stop = window(19, len(WT), 10)
    expected = [vocab.CLS] + list(vocab.encode(WT[start:stop])[0]) + [vocab.EOS]
    expected[19 - start] = vocab.MASK
    assert inputs.tolist() == [expected]


@pytest.mark.parametrize("mutant, message", [("K2X:Q9", "not of the form"), ("A2G", "has 'K' at position 2"),
                                             ("K99A", "outside the wild type"), ("K2J", "unknown residue 'J'")])
def test_bad_mutants_are_named(mutant, message):
    with pytest.raises(MutationError, match=message):
        parse_mutant(mutant, WT, "assay x: ")


def write_dms(folder, assays: dict):
    (folder / "fasta").mkdir(parents=True)
    (folder / "mutants").mkdir()
    for name, (wt, rows) in assays.items():
        (folder / "fasta" / f"{name}.fasta").write_text(f">{name}\n{wt}\n")
        (folder / "mutants" / f"{name}.csv").write_text("mutant,score\n" + "".join(f"{m},{s}\n" for m, s in rows))
    (folder / "reference_spearman.csv").write_text(
        "DMS_id,ESM2_8M,ESM2_35M\n" + "".join(f"{name},0.1,0.2\n" for name in assays))


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory):
    model = PLM(ModelConfig(vocab_size=vocab.VOCAB_SIZE, hidden_size=32, num_attention_heads=2,
                            num_hidden_layers=2, value_embeddings=1))
    model.init_weights()
    folder = tmp_path_factory.mktemp("ckpt")
    checkpoint.save_model(model, folder)
    return folder


def test_cli_writes_one_entry_per_assay(tmp_path, tiny_ckpt, capsys):
    rng = np.random.default_rng(0)
    assays = {}
    for name in ("ASSAY_ONE", "ASSAY_TWO"):
        mutants = sorted({f"{WT[i]}{i + 1}{aa}" for i in rng.integers(0, len(WT), 12) for aa in "AGW"
                          if aa != WT[i]})
        assays[name] = (WT, [(m, float(rng.normal())) for m in mutants] + [(mutants[0] + ":" + mutants[-1], 0.5)])
    write_dms(tmp_path / "dms", assays)
    out = tmp_path / "zs.json"
    assert evaluate.main(["zeroshot", "--checkpoint", str(tiny_ckpt), "--dms_dir", str(tmp_path / "dms"),
                          "--device", "cpu", "--output", str(out)]) == 0
    result = json.loads(out.read_text())
    assert [r["assay"] for r in result["assays"]] == ["ASSAY_ONE", "ASSAY_TWO"]
    for r, (name, (_, rows)) in zip(result["assays"], assays.items()):
        assert r["n_mutants"] == len(rows)
        assert -1 <= r["spearman"] <= 1 and -1 <= r["unigram_spearman"] <= 1
        assert r["reference"] == {"ESM2_8M": 0.1, "ESM2_35M": 0.2}
    assert result["mean"]["ESM2_8M"] == pytest.approx(0.1)
    assert result["unigram_data"]["name"] == "demo"  # the default; the JSON says whose frequencies the control used
    assert "mean over 2 assays" in capsys.readouterr().out


@pytest.mark.parametrize("row, message", [("A2G,1.0", "line 3: mutant 'A2G': the wild type has 'K'"),
                                          ("K99A,1.0", "line 3: mutant 'K99A': position 99 is outside"),
                                          ("K2B2,1.0", "line 3: mutant 'K2B2'"),
                                          ("K2A,high", "line 3: score 'high' is not a number")])
def test_cli_names_the_assay_and_row_of_a_bad_mutant(tmp_path, tiny_ckpt, capsys, row, message):
    write_dms(tmp_path / "dms", {"BAD_ASSAY": (WT, [("T3A", 0.1)])})
    with open(tmp_path / "dms" / "mutants" / "BAD_ASSAY.csv", "a") as f:
        f.write(row + "\n")
    assert evaluate.main(["zeroshot", "--checkpoint", str(tiny_ckpt), "--dms_dir", str(tmp_path / "dms"),
                          "--device", "cpu"]) == 1
    err = capsys.readouterr().err
    assert "assay BAD_ASSAY" in err and message in err


def test_unigram_control_scores_frequent_residues_up():
    freq = np.full(vocab.VOCAB_SIZE, 0.01)
    freq[T["L"]] = 0.5
    parsed = [parse_mutant(m, WT, "") for m in ("K2L", "K2W")]
    to_l, to_w = zeroshot.unigram_scores(freq, parsed)
    assert to_l > 0 and to_w == pytest.approx(0.0)
