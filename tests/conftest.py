import sys
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
SHARED = ROOT.parent / "shared"
TINY = dict(hidden_size=32, num_attention_heads=2, num_hidden_layers=2, value_embeddings=1)  # a tiny ModelConfig
STANDARD = "LAGVSERTIDPKQNFYMHWC"  # the 20 standard amino acids


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """../shared/data, which CI and every developer have beside the checkout."""
    path = SHARED / "data"
    if not path.is_dir():
        pytest.fail(f"{path} is missing: the tests need ../shared beside the checkout")
    return path


def demo_proteins(n: int, low: int = 30, high: int = 200) -> list[str]:
    """The first n sequences of data/demo's train shard with low..high residues, as residue strings: real Swiss-Prot
    proteins (CC BY 4.0, data/demo/SOURCE.md) without depending on ../shared."""
    import validation
    from vocab import decode_residues
    found = [decode_residues(t[1:-1]) for t in validation.shard_sequences(ROOT / "data" / "demo", "demo", "train")
             if low <= t.size - 2 <= high]
    if len(found) < n:
        raise ValueError(f"data/demo has {len(found)} train sequences of {low}..{high} residues, {n} asked for")
    return found[:n]


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny tensors: one thread is faster, and immune to the spinning of OpenMP threads on a busy 2-core box
    (a tiny forward took 0.008 s with one thread, 0.06 s with two, on this machine under load). Test modules opt in
    with `pytestmark = pytest.mark.usefixtures("one_torch_thread")`."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free now (for a gloo rendezvous)."""
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_processes(target, args_of_rank: list[tuple], timeout: float) -> None:
    """Start `target(*args)` in one spawned process per entry of args_of_rank, wait, and require exit code 0 from
    every one (a hung process is killed and fails the test)."""
    import torch.multiprocessing as mp
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=target, args=args) for args in args_of_rank]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(timeout=timeout)
    for proc in procs:
        if proc.is_alive():
            proc.kill()
            proc.join()
    assert [proc.exitcode for proc in procs] == [0] * len(procs)


def scrambled_model(seed: int = 0):
    """A tiny model with every parameter non-trivial: init_weights zeroes the head and the output projections, so
    an untrained model would predict one class everywhere and ignore context, making most checks vacuous."""
    from model import PLM, ModelConfig
    torch.manual_seed(seed)
    model = PLM(ModelConfig(**TINY))
    model.init_weights()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.5 * torch.randn_like(p))
    return model.eval()


def random_proteins(n: int, seed: int = 0, low: int = 5, high: int = 120) -> list[str]:
    rng = np.random.default_rng(seed)
    return ["".join(rng.choice(list(STANDARD), size=rng.integers(low, high))) for _ in range(n)]


@pytest.fixture(scope="module")
def model():
    """A scrambled tiny model (evaluate and probe tests)."""
    return scrambled_model()


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory, model):
    """The scrambled tiny model saved as a checkpoint directory."""
    import checkpoint
    directory = tmp_path_factory.mktemp("ckpt")
    checkpoint.save_model(model, directory)
    return directory
