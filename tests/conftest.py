"""Shared test setup: CUDA float32 math at full float32 precision.

torch lets cuDNN convolutions (and, where enabled, matmuls) run float32 inputs as
TF32 on Ampere and newer GPUs: ~1e-3 relative error. The CUDA tests compare with
float32 / float64 references at float32 tolerances, so they turn TF32 off."""
import torch


def pytest_configure(config):
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
