"""The build: what was compiled, and the CMake build for C++ users."""
import glob
import os
import re
import shutil
import subprocess
import sys

import pytest
import torch

import lthfast

OPS = ["global_threshold", "global_magnitude_masks", "threshold_mask"]


def test_build_info_and_ops_registered():
    info = lthfast.build_info()
    assert info["compiled"], info
    assert info["version"] == lthfast.__version__
    if sys.platform.startswith("linux"):  # setup.py builds with OpenMP wherever torch has it
        assert info["openmp"] == torch._C.has_openmp, info
    for op in OPS:
        assert torch._C._dispatch_has_kernel_for_dispatch_key(f"lthfast::{op}", "CPU"), op


@pytest.mark.skipif(shutil.which("ldd") is None, reason="needs ldd")
def test_extension_uses_the_shared_libstdcxx():
    """A static copy of libstdc++ inside lthfast._C crashes the first C++ error message
    that formats a number (seen with a g++ that links libstdc++.a; setup.py names the
    shared one). Checked on the ELF and by raising such an error in a fresh process."""
    import lthfast._C as ext
    out = subprocess.run(["ldd", ext.__file__], capture_output=True, text=True).stdout
    assert "libstdc++.so.6" in out, out
    code = ("import torch, lthfast\n"
            "try:\n"
            "    torch.ops.lthfast.mask_counts([torch.ones(3), torch.ones(3, dtype=torch.int64)])\n"
            "except RuntimeError as e:\n"
            "    print('raised', e)\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "masks[1] has dtype Long" in r.stdout, (r.returncode, r.stderr[-2000:])


@pytest.mark.skipif(not os.environ.get("LTHFAST_EXPECT_CUDA_BUILD"),
                    reason="set LTHFAST_EXPECT_CUDA_BUILD=1 where the CUDA kernels must be built (CI)")
def test_cuda_kernels_were_compiled():
    info = lthfast.build_info()
    assert info["cuda"], "CUDA kernels were expected in this build (LTHFAST_EXPECT_CUDA_BUILD=1)"
    assert info["cuda_archs"]
    for op in OPS:
        assert torch._C._dispatch_has_kernel_for_dispatch_key(f"lthfast::{op}", "CUDA"), op


def _nvcc_release(nvcc):
    """'13.0' from `nvcc --version`, or None."""
    out = subprocess.run([nvcc, "--version"], capture_output=True, text=True).stdout
    m = re.search(r"release (\d+\.\d+)", out)
    return m.group(1) if m else None


def _cuda_h_release(include):
    """'13.2' from CUDA_VERSION (13020) in include/cuda.h, or None."""
    try:
        with open(os.path.join(include, "cuda.h")) as f:
            m = re.search(r"#define\s+CUDA_VERSION\s+(\d+)", f.read())
    except OSError:
        return None
    return f"{int(m.group(1)) // 1000}.{int(m.group(1)) % 1000 // 10}" if m else None


def _cuda_root_shim(tmp_path):
    """libtorch's CMake config of a CUDA build of torch insists on finding a CUDA
    toolkit (nvcc, headers, cudart) even for a CPU-only consumer. Where the toolkit
    is only nvcc, assemble one from nvcc and the nvidia-* wheels' headers and libs."""
    nvcc = shutil.which("nvcc")
    wheel = glob.glob(os.path.join(os.path.dirname(torch.__file__), "..", "nvidia", "cu[0-9]*"))
    if torch.version.cuda is None or not nvcc or not wheel:
        return []
    include = os.path.join(wheel[0], "include")
    release = _nvcc_release(nvcc)
    if _cuda_h_release(include) != release:
        # e.g. torch 2.15's wheels carry CUDA 13.2 headers, the machine's nvcc is 13.0:
        # torch's cuda.cmake refuses the pair. Use a toolkit's headers that match nvcc.
        toolkits = ["/usr/local/cuda", *sorted(glob.glob("/usr/local/cuda-*"), reverse=True)]
        include = next((os.path.join(t, "include") for t in toolkits
                        if _cuda_h_release(os.path.join(t, "include")) == release), None)
        if include is None:
            pytest.skip(f"nvcc is CUDA {release} but torch's CUDA headers are "
                        f"{_cuda_h_release(os.path.join(wheel[0], 'include'))}, and no toolkit "
                        "under /usr/local has headers that match nvcc")
    root = tmp_path / "cuda"
    (root / "lib64").mkdir(parents=True)
    os.symlink(os.path.dirname(nvcc), root / "bin")
    os.symlink(include, root / "include")
    for lib in glob.glob(os.path.join(wheel[0], "lib", "*.so.*")):
        name = os.path.basename(lib)
        os.symlink(lib, root / "lib64" / name)
        unversioned = root / "lib64" / (name.split(".so.")[0] + ".so")
        if not unversioned.exists():
            os.symlink(lib, unversioned)
    return [f"-DCUDA_TOOLKIT_ROOT_DIR={root}"]


@pytest.mark.skipif(shutil.which("cmake") is None, reason="cmake not installed")
def test_cmake_build_for_cpp_users(tmp_path):
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    build = tmp_path / "build"
    env = dict(os.environ, MAKEFLAGS="", TORCH_CUDA_ARCH_LIST=os.environ.get("TORCH_CUDA_ARCH_LIST", "9.0"))
    r = subprocess.run(["cmake", "-S", root, "-B", str(build), "-DCMAKE_BUILD_TYPE=Release",
                        f"-DCMAKE_PREFIX_PATH={torch.utils.cmake_prefix_path}"]
                       + _cuda_root_shim(tmp_path), capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    r = subprocess.run(["cmake", "--build", str(build), "-j", os.environ.get("MAX_JOBS", "2")],
                       capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    r = subprocess.run([str(build / "lthfast_cpp_smoke")], capture_output=True, text=True)
    assert r.returncode == 0 and "ok" in r.stdout, r.stdout + r.stderr


@pytest.mark.skipif(not torch._C.has_openmp or torch.get_num_threads() < 2,
                    reason="needs torch's OpenMP backend and >= 2 threads")
def test_kernels_run_on_more_than_one_thread():
    """ATen's OpenMP backend inlines `#pragma omp parallel` into the extension: built
    without -fopenmp, every at::parallel_for runs on the calling thread alone (it
    did until stop 11). In a fresh process, a large threshold and a fused optimizer
    step must spend CPU time on threads other than the caller's. (CPU time, not
    wall time: this holds however loaded the machine is.)"""
    code = (
        "import time, torch, lthfast\n"
        "x = torch.randn(1 << 23)\n"
        "p, g = torch.randn(1 << 23), torch.randn(1 << 23)\n"
        "keep = torch.rand(1 << 23) > 0.5\n"
        "def other_cpu(f):\n"
        "    time.sleep(0.3)  # idle OpenMP workers stop spinning\n"
        "    c0, t0 = time.process_time(), time.thread_time()\n"
        "    for _ in range(3): f()\n"
        "    c, t = time.process_time() - c0, time.thread_time() - t0\n"
        "    return (c - t) / max(t, 1e-9)\n"
        "print(other_cpu(lambda: torch.ops.lthfast.global_threshold([x], [], 1 << 21)))\n"
        "print(other_cpu(lambda: torch.ops.lthfast.masked_sgd_([p], [g], [], [keep], 0.1, None, "
        "0.0, 0.0, 0.0, False, False, False, None, None)))\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                       env={**os.environ, "OMP_NUM_THREADS": "2"})
    assert r.returncode == 0, r.stderr[-2000:]
    shares = [float(v) for v in r.stdout.split()]
    # one thread alone: ~0; two threads splitting the work: ~1
    assert all(s > 0.3 for s in shares), shares


def test_the_larger_parts_load_on_first_use():
    # stop 30: `import lthfast; lthfast.imp` was an AttributeError until imported explicitly
    import lthfast
    assert lthfast.prune.global_unstructured and lthfast.imp.run_imp and lthfast.analysis
    assert {"prune", "imp", "detection", "analysis"} <= set(dir(lthfast))
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        lthfast.nope
