"""Build of zfcore's native library, zfcore._C (the package's metadata is in
pyproject.toml; this file only builds the extension).

The C++ CPU kernels in csrc/cpu are always built. The CUDA kernels in csrc/cuda
are added when the installed torch is a CUDA build and an nvcc of the same CUDA
major version is found (CUDA_HOME, or nvcc on PATH), unless ZFCORE_CUDA=0. With
no GPU visible they are compiled for TORCH_CUDA_ARCH_LIST, "9.0" (sm_90) when it
is unset. A CUDA build that cannot be made, for whatever reason, is skipped with
one printed line and the CPU-only extension is built instead: the install never
fails because of CUDA. The outcome and its reason are recorded in
zfcore/_build_info.json, which zfcore.backends() reports.

Set ZFCORE_NATIVE=0 to skip the native build (zfcore then runs on its pure-PyTorch
reference backend, and on Triton for CUDA tensors). Install without build
isolation, so that the extension compiles against the torch already installed:

    pip install --no-build-isolation --no-deps -e .
"""

import glob
import json
import os
import re
import shutil
import subprocess

from setuptools import setup

ROOT = os.path.dirname(os.path.abspath(__file__))
BUILD_INFO = "_build_info.json"  # beside zfcore/_C*.so; read by zfcore/ops/backend_choice.py
DEFAULT_ARCH_LIST = "9.0"


def say(message: str) -> None:
    print(f"zfcore: {message}", flush=True)


def one_line(error: BaseException) -> str:
    if isinstance(error, subprocess.CalledProcessError):
        command = error.cmd if isinstance(error.cmd, str) else " ".join(map(str, error.cmd))
        what = "linking" if " -shared " in f" {command} " else os.path.basename(command.split()[0])
        return f"{what} failed with exit status {error.returncode} (its errors are printed above)"
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    text = lines[0] if lines else type(error).__name__
    if text.startswith("Error compiling objects"):
        text += " (the compiler's errors are printed above)"
    return text if len(text) <= 200 else text[:197] + "..."


def nvcc_toolkit() -> str | None:
    """The CUDA toolkit that the nvcc on PATH belongs to. torch guesses it as the
    parent of nvcc's directory, which is wrong when nvcc is a wrapper script
    (/usr/local/bin/nvcc -> /usr/local/cuda-13.0); nvcc itself says where it is."""
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        return None
    try:
        probe = subprocess.run([nvcc, "-dryrun", "-E", "-x", "cu", os.devnull],
                               capture_output=True, text=True, timeout=120)
    except (OSError, subprocess.SubprocessError):
        return None
    found = re.search(r"^#\$ TOP=(.+)$", probe.stdout + probe.stderr, re.M)
    return os.path.realpath(found.group(1).strip()) if found else None


def nvcc_release(cuda_home: str) -> str | None:
    try:
        text = subprocess.run([os.path.join(cuda_home, "bin", "nvcc"), "--version"],
                              capture_output=True, text=True, timeout=120).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    found = re.search(r"release (\d+)\.(\d+)", text)
    return f"{found.group(1)}.{found.group(2)}" if found else None


def cuda_plan(torch) -> tuple[str | None, str]:
    """(the CUDA toolkit to build with, or None; what is built or why not)."""
    if os.environ.get("ZFCORE_CUDA", "1") == "0":
        return None, "ZFCORE_CUDA=0 at build"
    if torch.version.cuda is None:
        return None, f"torch {torch.__version__} is a CPU build"
    if not (os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")):
        toolkit = nvcc_toolkit()
        if toolkit and os.path.exists(os.path.join(toolkit, "include", "cuda_runtime.h")):
            os.environ["CUDA_HOME"] = toolkit  # read by torch.utils.cpp_extension at import
    from torch.utils.cpp_extension import CUDA_HOME

    if CUDA_HOME is None or not os.path.exists(os.path.join(CUDA_HOME, "bin", "nvcc")):
        return None, f"no nvcc found at build (torch {torch.__version__} is built with CUDA {torch.version.cuda}; " \
                     "set CUDA_HOME or put nvcc on PATH)"
    release = nvcc_release(CUDA_HOME)
    if release is None:
        return None, f"{CUDA_HOME}/bin/nvcc --version gives no CUDA release"
    if release.split(".")[0] != torch.version.cuda.split(".")[0]:
        return None, (f"nvcc in {CUDA_HOME} is CUDA {release} but torch {torch.__version__} is built with CUDA "
                      f"{torch.version.cuda} (the major versions must match)")
    if not os.environ.get("TORCH_CUDA_ARCH_LIST") and torch.cuda.device_count() == 0:
        # torch derives the arch list from the visible GPUs; with none it has an
        # empty list and fails. Build for a fixed one instead.
        os.environ["TORCH_CUDA_ARCH_LIST"] = DEFAULT_ARCH_LIST
        arches = f"TORCH_CUDA_ARCH_LIST={DEFAULT_ARCH_LIST} (no GPU visible; set TORCH_CUDA_ARCH_LIST to change it)"
    elif os.environ.get("TORCH_CUDA_ARCH_LIST"):
        arches = f"TORCH_CUDA_ARCH_LIST={os.environ['TORCH_CUDA_ARCH_LIST']}"
    else:
        arches = "the visible GPUs' architectures"
    return CUDA_HOME, f"nvcc CUDA {release} in {CUDA_HOME}, for {arches}"


def native_build():
    """(ext_modules, cmdclass) for setup()."""
    if os.environ.get("ZFCORE_NATIVE", "1") == "0":
        say("ZFCORE_NATIVE=0, building no native extension")
        return [], {}
    try:
        import torch
    except ImportError:
        say("torch is not importable where the build runs, so no native extension is built "
            "(install torch first and build with pip install --no-build-isolation)")
        return [], {}
    # First: it may set CUDA_HOME, which torch.utils.cpp_extension reads at import.
    toolkit, cuda_note = cuda_plan(torch)
    from torch.utils.cpp_extension import BuildExtension, CppExtension

    cpu_sources = ["csrc/registration.cpp"] + sorted(glob.glob("csrc/cpu/*.cpp"))
    cuda_sources = sorted(glob.glob("csrc/cuda/*.cu"))
    # The extension is compiled where it runs, so by default it targets this
    # machine's vector units (AVX2/AVX-512); ZFCORE_MARCH=x86-64 gives a portable build.
    march = os.environ.get("ZFCORE_MARCH", "native")
    cxx_args = ["-O3", f"-march={march}", "-fopenmp", "-DZFCORE_PYTHON_MODULE"]

    def extension(with_cuda: bool):
        common = dict(include_dirs=[os.path.join(ROOT, "csrc")], extra_link_args=["-fopenmp"])
        if not with_cuda:
            return CppExtension("zfcore._C", list(cpu_sources), extra_compile_args={"cxx": list(cxx_args)}, **common)
        from torch.utils.cpp_extension import CUDAExtension

        return CUDAExtension("zfcore._C", cpu_sources + cuda_sources, **common, extra_compile_args={
            "cxx": list(cxx_args), "nvcc": ["-O3", "--expt-relaxed-constexpr", "-lineinfo"]})

    cpu_note = f"CPU kernels (-march={march})"
    if toolkit:
        say(f"building zfcore._C with {cpu_note} and CUDA kernels ({cuda_note}) "
            f"from {len(cpu_sources) + len(cuda_sources)} files")
    else:
        say(f"building zfcore._C with {cpu_note} from {len(cpu_sources)} files; no CUDA kernels: {cuda_note}")

    class BuildNative(BuildExtension):
        """torch's BuildExtension; when the CUDA build fails, the CPU-only one."""

        def run(self):
            if not toolkit:
                super().run()
                self.record(False, cuda_note)
                return
            inplace = self.inplace  # setuptools' run() clears it while it builds
            try:
                super().run()
            except Exception as error:  # noqa: BLE001  (any failure of the CUDA build: fall back)
                reason = f"the CUDA build failed: {one_line(error)}"
                say(f"CUDA kernels skipped ({reason}); building zfcore._C with {cpu_note} only")
                cpu = extension(False)
                for ext in self.extensions:  # the same Extension object: setuptools keeps state on it
                    if ext.name == "zfcore._C":
                        for attr in ("sources", "include_dirs", "library_dirs", "libraries", "runtime_library_dirs",
                                     "extra_compile_args", "extra_link_args", "define_macros", "language"):
                            setattr(ext, attr, getattr(cpu, attr))
                self.compiler = None  # a fresh compiler, without the wrappers of the failed build
                self.inplace = inplace
                super().run()
                self.record(False, reason)
            else:
                self.record(True, cuda_note)

        def record(self, cuda: bool, note: str) -> None:
            info = {"cuda_kernels": cuda, "cuda": note, "cpu": cpu_note, "torch": torch.__version__,
                    "torch_cuda": torch.version.cuda}
            built = os.path.dirname(self.get_ext_fullpath("zfcore._C"))
            targets = {built, os.path.join(self.build_lib, "zfcore")}
            if self.inplace:
                targets.add(os.path.join(ROOT, "zfcore"))
            for directory in targets:
                os.makedirs(directory, exist_ok=True)
                with open(os.path.join(directory, BUILD_INFO), "w") as f:
                    json.dump(info, f, indent=1)
                    f.write("\n")

    return [extension(bool(toolkit))], {"build_ext": BuildNative}


ext_modules, cmdclass = native_build()
setup(ext_modules=ext_modules, cmdclass=cmdclass)
