import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
SHARED = ROOT.parent / "shared"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """../shared/data, which CI and every developer have beside the checkout."""
    path = SHARED / "data"
    if not path.is_dir():
        pytest.fail(f"{path} is missing: the tests need ../shared beside the checkout")
    return path


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
