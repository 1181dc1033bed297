# zfcore: set-up, tests and benchmarks. `make bench` and `make test` each do all
# set-up on a fresh machine (torch==2.13.0 is installed only when no torch is
# there; an existing torch is reused, offline).
PYTHON ?= python3
PIP := $(PYTHON) -m pip
NATIVE_SOURCES := $(wildcard csrc/*.h csrc/*.cpp csrc/cpu/*.h csrc/cpu/*.cpp csrc/cuda/*.cuh csrc/cuda/*.h csrc/cuda/*.cu) setup.py
STAMP := build/.zfcore-installed

.PHONY: setup test bench native-check cuda-launcher-check clean

setup: $(STAMP)

$(STAMP): $(NATIVE_SOURCES)
	@$(PYTHON) -c "import torch" 2>/dev/null || $(PIP) install torch==2.13.0
	@$(PYTHON) -c "import numpy, pytest, tqdm, PIL, setuptools" 2>/dev/null || \
		$(PIP) install numpy pytest pytest-benchmark tqdm pillow setuptools
	@$(PYTHON) -c "import triton" 2>/dev/null || $(PIP) install triton==3.6.0
	$(PIP) install --no-build-isolation --no-deps -e .
	@mkdir -p build && touch $@

# The standalone CMake build of csrc and its C++ unit test (ctest).
native-check: setup
	cmake -S . -B build-cmake -DCMAKE_PREFIX_PATH="$$($(PYTHON) -c 'import torch; print(torch.utils.cmake_prefix_path)')"
	cmake --build build-cmake -j2
	ctest --test-dir build-cmake -V

# Compiles csrc/cuda's launchers against torch's headers (object files only, no
# link), which also works with a CPU build of torch: CPU wheels lack one generated
# header, written here. Slow (minutes): a developer's check, not part of `test`.
cuda-launcher-check: setup
	@mkdir -p build/cuda-check/c10/cuda/impl
	@printf '#pragma once\n#define C10_CUDA_BUILD_SHARED_LIBS\n' > build/cuda-check/c10/cuda/impl/cuda_cmake_macros.h
	for f in csrc/cuda/*.cu; do \
		nvcc -std=c++17 -arch=sm_90 --expt-relaxed-constexpr -D__CUDA_NO_HALF_OPERATORS__ -D__CUDA_NO_HALF_CONVERSIONS__ \
			-D__CUDA_NO_BFLOAT16_CONVERSIONS__ -D__CUDA_NO_HALF2_OPERATORS__ -Ibuild/cuda-check \
			$$($(PYTHON) -c "import sysconfig, torch.utils.cpp_extension as c; print(' '.join('-I' + p for p in c.include_paths() + [sysconfig.get_paths()['include']]))") \
			-c $$f -o build/cuda-check/$$(basename $$f).o || exit 1; \
	done

test: setup native-check
	$(PYTHON) -m pytest tests -q

bench: setup
	$(PYTHON) benchmarks/bench_ops.py

clean:
	rm -rf build build-cmake zfcore/_C*.so *.egg-info
