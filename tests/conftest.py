"""Shared test setup: CUDA float32 math at full float32 precision.

torch lets cuDNN convolutions (and, where enabled, matmuls) run float32 inputs as
TF32 on Ampere and newer GPUs: ~1e-3 relative error. The CUDA tests compare with
float32 / float64 references at float32 tolerances, so they turn TF32 off."""
import pytest
import torch


def pytest_configure(config):
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False


@pytest.fixture
def one_thread():
    """Tiny tensors and models on a shared 2-core machine: a second intra-op thread only
    adds OpenMP start-up and spin-waiting."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
