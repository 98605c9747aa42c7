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
