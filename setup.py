"""Builds lthfast._C: CPU kernels always, CUDA kernels when nvcc and a CUDA build
of torch are present (also on a machine without a GPU).

Environment variables:
  LTHFAST_CUDA=0          build the CPU kernels only (quick local iteration)
  FORCE_CUDA=1            build the CUDA kernels even if detection says no
  TORCH_CUDA_ARCH_LIST    CUDA archs to build for, e.g. "9.0" or "8.0;9.0"
                          (default: the visible GPU's, else "9.0")
  MAX_JOBS                parallel compile jobs (each .cu with torch headers needs
                          ~1.5 min and a few GB of RAM)
  LTHFAST_DEBUG=1         -O0 -g, no NDEBUG

Sources come from csrc/SOURCES, the one list CMakeLists.txt reads too.
"""
import glob
import os
import shutil
import sys

from setuptools import setup

ROOT = os.path.dirname(os.path.abspath(__file__))


def _point_cuda_home_at_the_toolkit():
    """torch takes CUDA_HOME from `which nvcc`. Where nvcc is installed apart from
    its toolkit (e.g. /usr/local/bin/nvcc beside /usr/local/cuda), that gives a
    directory without the CUDA headers; use the toolkit directory instead."""
    if os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH"):
        return
    nvcc = shutil.which("nvcc")
    if nvcc:
        root = os.path.dirname(os.path.dirname(os.path.realpath(nvcc)))
        if os.path.exists(os.path.join(root, "include", "cuda_runtime_api.h")):
            return
    for cand in ["/usr/local/cuda"] + sorted(glob.glob("/usr/local/cuda-*"), reverse=True):
        if (os.path.exists(os.path.join(cand, "bin", "nvcc"))
                and os.path.exists(os.path.join(cand, "include", "cuda_runtime_api.h"))):
            os.environ["CUDA_HOME"] = cand
            return


_point_cuda_home_at_the_toolkit()

import torch  # noqa: E402  (after CUDA_HOME is settled: cpp_extension reads it on import)
from torch.utils import cpp_extension  # noqa: E402


def _flag(name):
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


# Only in the Python module (CMakeLists.txt builds the ops without Python).
PYTHON_SOURCES = ["csrc/python_module.cpp", "csrc/ops/masked_optim/masked_optim_python.cpp"]


def _sources():
    with open(os.path.join(ROOT, "csrc", "SOURCES")) as f:
        lines = [ln.strip() for ln in f if ln.strip() and not ln.startswith("#")]
    cpp = [s for s in lines if not s.endswith(".cu")]
    cu = [s for s in lines if s.endswith(".cu")]
    return cpp, cu


def _want_cuda():
    if os.environ.get("LTHFAST_CUDA", "").strip() == "0":
        return False
    if _flag("FORCE_CUDA"):
        return True
    return torch.version.cuda is not None and cpp_extension.CUDA_HOME is not None


def _nvidia_wheel_includes():
    # The CUDA toolkit on some build machines lacks headers torch's CUDA headers
    # include (cusparse.h, cublas_v2.h); the nvidia-* wheels that come with the
    # CUDA build of torch ship them.
    dirs = []
    for site in sys.path:
        dirs += glob.glob(os.path.join(site, "nvidia", "cu*", "include"))
        dirs += glob.glob(os.path.join(site, "nvidia", "*", "include"))
    seen, out = set(), []
    for d in dirs:
        if os.path.isdir(d) and d not in seen:
            seen.add(d)
            out.append(d)
    return out


def _shared_libstdcxx():
    """Link the shared libstdc++ that torch itself uses, by name.

    A g++ that cannot find libstdc++.so (seen: a CXX wrapper in a CUDA image whose
    `-print-file-name=libstdc++.so` answers the bare name) links libstdc++.a into the
    extension instead. Its private copy of the iostream / locale code then meets the
    locale that the shared copy set up, and the first error message that formats a
    number (`TORCH_CHECK(..., "masks[", i, "] ...")`) segfaults. Naming libstdc++.so.6
    before g++'s implicit -lstdc++ resolves every libstdc++ symbol from the shared
    library, so no archive member is pulled in; with a normal g++ this changes nothing."""
    if not sys.platform.startswith("linux"):
        return []
    return ["-Wl,--push-state,--no-as-needed", "-l:libstdc++.so.6", "-Wl,--pop-state"]


def _openmp():
    """(compile flags, link flags) that make at::parallel_for run on torch's threads.

    ATen's OpenMP backend inlines `#pragma omp parallel` into the extension's own
    code: compiled without -fopenmp, every at::parallel_for silently runs on one
    thread. The extension links the OpenMP runtime that torch itself loaded
    (torch/lib/libgomp*.so*, by file name), so there is one runtime and one thread
    pool in the process; only where torch has no copy of its own does -fopenmp pick
    the compiler's (the same soname torch's libtorch_cpu asks for)."""
    if not torch._C.has_openmp or not sys.platform.startswith("linux"):
        return [], []
    lib = os.path.join(os.path.dirname(torch.__file__), "lib")
    bundled = sorted(glob.glob(os.path.join(lib, "libgomp*.so*")))
    if bundled:
        return ["-fopenmp"], ["-Wl,--push-state,--no-as-needed",
                              "-L" + lib, "-l:" + os.path.basename(bundled[0]),
                              "-Wl,--pop-state"]
    return ["-fopenmp"], ["-fopenmp"]


def _version():
    ns = {}
    with open(os.path.join(ROOT, "lthfast", "_version.py")) as f:
        exec(f.read(), ns)
    return ns["__version__"]


def extensions():
    cpp, cu = _sources()
    with_cuda = _want_cuda()
    debug = _flag("LTHFAST_DEBUG")
    opt = ["-O0", "-g"] if debug else ["-O3"]
    defines = [
        ("LTHFAST_VERSION", '"%s"' % _version()),
        ("LTHFAST_TORCH_VERSION", '"%s"' % torch.__version__),
    ]
    # No -std flag: torch's BuildExtension picks the standard its headers need
    # (C++17 or C++20; torch 2.12 to 2.15 all ask for C++20).
    # -fno-math-errno: sqrt never sets errno, so loops with sqrt vectorise (the CPU
    # Adam step runs ~20% faster); no lthfast code reads errno after math calls.
    omp_cxx, omp_link = _openmp()
    cxx = ["-fvisibility=hidden", "-fno-math-errno"] + omp_cxx + opt
    include_dirs = [os.path.join(ROOT, "csrc")]
    sources = cpp + PYTHON_SOURCES
    link = _shared_libstdcxx() + omp_link
    if not with_cuda:
        return [cpp_extension.CppExtension(
            "lthfast._C", sources, include_dirs=include_dirs, define_macros=defines,
            extra_compile_args={"cxx": cxx}, extra_link_args=link)]
    if not os.environ.get("TORCH_CUDA_ARCH_LIST") and not torch.cuda.is_available():
        os.environ["TORCH_CUDA_ARCH_LIST"] = "9.0"
    archs = os.environ.get("TORCH_CUDA_ARCH_LIST", "")
    if not archs:
        cap = torch.cuda.get_device_capability()
        archs = "%d.%d" % cap
    defines += [("LTHFAST_WITH_CUDA", None), ("LTHFAST_CUDA_ARCHS", '"%s"' % archs)]
    include_dirs += _nvidia_wheel_includes()
    nvcc = opt + ["--expt-relaxed-constexpr", "-lineinfo"]
    return [cpp_extension.CUDAExtension(
        "lthfast._C", sources + cu, include_dirs=include_dirs, define_macros=defines,
        extra_compile_args={"cxx": cxx, "nvcc": nvcc}, extra_link_args=link)]


setup(
    ext_modules=extensions(),
    cmdclass={"build_ext": cpp_extension.BuildExtension.with_options(use_ninja=True)},
)
