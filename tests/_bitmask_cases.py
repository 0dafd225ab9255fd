"""Bool masks of many shapes and layouts for the bitmask tests (CPU and CUDA)."""
import torch

SIZES = [0, 1, 5, 7, 8, 9, 31, 32, 33, 63, 64, 65, 255, 1000, 4099, 70001]


def masks(seed=0):
    """(label, bool mask) pairs: flat sizes around byte/word edges, N-D,
    channels_last, transposed, sliced (non-dense), expanded (stride 0), empty."""
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape, p=0.5):
        return torch.rand(shape, generator=g) < p

    out = [(f"flat{n}", rnd(n)) for n in SIZES]
    out += [("all_true", torch.ones(77, dtype=torch.bool)), ("all_false", torch.zeros(77, dtype=torch.bool)),
            ("sparse", rnd(3001, p=0.02)), ("dense", rnd(3001, p=0.98))]
    out += [("conv", rnd(16, 8, 3, 3)), ("conv_odd", rnd(5, 3, 7, 7)),
            ("channels_last", rnd(6, 5, 3, 3).contiguous(memory_format=torch.channels_last)),
            ("transposed", rnd(37, 11).t()), ("sliced", rnd(20, 30)[:, 3:27:2]),
            ("expanded", rnd(1, 13).expand(9, 13)), ("empty_nd", rnd(0, 4, 3)),
            ("scalar", torch.tensor(True)), ("big3d", rnd(64, 33, 17))]
    return out
