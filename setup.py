"""Build of zfcore's native library (zfcore._C).

The C++ CPU kernels in csrc/cpu are always built; the CUDA kernels in csrc/cuda
too when the installed torch is a CUDA build and nvcc is found (CUDA_HOME), unless
ZFCORE_CUDA=0. Set ZFCORE_NATIVE=0 to skip the native build (zfcore then runs on
its pure-PyTorch reference backend, and on Triton for CUDA tensors).
Install without build isolation so the extension compiles against the torch
already installed:  pip install --no-build-isolation -e .
"""

import glob
import os

from setuptools import find_packages, setup

ROOT = os.path.dirname(os.path.abspath(__file__))


def native_extensions():
    if os.environ.get("ZFCORE_NATIVE", "1") == "0":
        print("zfcore: ZFCORE_NATIVE=0, building no native extension")
        return [], {}
    import torch
    from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension

    sources = ["csrc/registration.cpp"] + sorted(glob.glob("csrc/cpu/*.cpp"))
    # The extension is compiled where it runs, so by default it targets this
    # machine's vector units (AVX2/AVX-512); ZFCORE_MARCH=x86-64 gives a portable build.
    march = os.environ.get("ZFCORE_MARCH", "native")
    compile_args = {"cxx": ["-O3", f"-march={march}", "-fopenmp", "-DZFCORE_PYTHON_MODULE"]}
    with_cuda = os.environ.get("ZFCORE_CUDA", "1") != "0" and torch.version.cuda is not None and CUDA_HOME is not None
    if with_cuda:
        sources += sorted(glob.glob("csrc/cuda/*.cu"))
        compile_args["nvcc"] = ["-O3", "--expt-relaxed-constexpr", "-lineinfo"]
        # Unless TORCH_CUDA_ARCH_LIST says otherwise, torch builds for the GPUs it sees.
        print(f"zfcore: building zfcore._C with CPU and CUDA kernels (nvcc in {CUDA_HOME}) from {len(sources)} files")
    else:
        why = ("ZFCORE_CUDA=0" if os.environ.get("ZFCORE_CUDA") == "0"
               else "torch is a CPU build" if torch.version.cuda is None else "no nvcc (CUDA_HOME) found")
        print(f"zfcore: building zfcore._C (CPU kernels, -march={march}) from {len(sources)} files; "
              f"no CUDA kernels: {why}")
    extension = CUDAExtension if with_cuda else CppExtension
    ext = extension(
        "zfcore._C",
        sources,
        include_dirs=[os.path.join(ROOT, "csrc")],
        extra_compile_args=compile_args,
        extra_link_args=["-fopenmp"],
    )
    return [ext], {"build_ext": BuildExtension}


ext_modules, cmdclass = native_extensions()

setup(
    name="zfcore",
    version="0.1.0",
    description="Fast, exact deconvnet visualization of convolutional networks (Zeiler & Fergus)",
    packages=find_packages(include=["zfcore", "zfcore.*"]),
    python_requires=">=3.10",
    # torch is deliberately not listed: the install reuses the torch that is
    # there (the Makefile installs torch==2.13.0 first when there is none).
    install_requires=["numpy", "tqdm", "pillow"],
    entry_points={"console_scripts": ["zfcore = zfcore.cli:main"]},
    ext_modules=ext_modules,
    cmdclass=cmdclass,
)
