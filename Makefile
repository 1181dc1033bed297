# zfcore: set-up, tests, demo and benchmarks. `make test`, `make demo` and
# `make bench` each do all set-up on a fresh machine: torch==2.13.0 is installed
# only when no torch is there (an existing torch is reused, offline), the other
# Python dependencies when missing, and zfcore is built in place.
PYTHON ?= python3
PIP := $(PYTHON) -m pip
NATIVE_SOURCES := $(wildcard csrc/*.h csrc/*.cpp csrc/cpu/*.h csrc/cpu/*.cpp csrc/cuda/*.cuh csrc/cuda/*.h csrc/cuda/*.cu) \
	setup.py pyproject.toml
STAMP := build/.zfcore-installed
# Benchmarks write here; the committed tables in benchmarks/results are refreshed
# on purpose only: make bench BENCH_RESULTS=benchmarks/results
BENCH_RESULTS ?= build/bench-results
# The browser tests drive Debian's chromium through Playwright, which must never
# download a browser of its own.
CHROMIUM := /usr/bin/chromium
export PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD := 1

# import name:pip name of what zfcore, its tests and its build need besides torch
PY_DEPS := numpy:numpy tqdm:tqdm PIL:pillow jinja2:jinja2 matplotlib:matplotlib sklearn:scikit-learn safetensors:safetensors setuptools:setuptools \
	pytest:pytest pytest_benchmark:pytest-benchmark xdist:pytest-xdist hypothesis:hypothesis playwright:playwright \
	importlinter:import-linter

.PHONY: setup test demo bench lint-imports native-check cuda-launcher-check browser fresh-install-check clean

setup: $(STAMP)

$(STAMP): $(NATIVE_SOURCES)
	@$(PYTHON) -c "import torch" 2>/dev/null || $(PIP) install torch==2.13.0
	@missing=$$($(PYTHON) -c "import importlib.util as u; print(' '.join(p.split(':')[1] for p in '$(PY_DEPS)'.split() \
		if u.find_spec(p.split(':')[0]) is None))"); \
		[ -z "$$missing" ] || $(PIP) install $$missing
	@$(PYTHON) -c "import triton" 2>/dev/null || $(PIP) install triton==3.6.0
	$(PIP) install --no-build-isolation --no-deps -e .
	@$(PYTHON) -c "import json; i = json.load(open('zfcore/_build_info.json')); \
		print('zfcore: built zfcore._C with', i['cpu'], 'and CUDA kernels (' + i['cuda'] + ')' if i['cuda_kernels'] \
		else 'only; no CUDA kernels: ' + i['cuda'])" 2>/dev/null || true
	@mkdir -p build && touch $@

# Debian's chromium for the browser tests (they skip themselves without it).
browser:
	@if [ -x $(CHROMIUM) ]; then :; \
	elif ! command -v apt-get >/dev/null 2>&1; then \
		echo "zfcore: no $(CHROMIUM) and no apt-get to install it: the browser tests will skip themselves"; \
	else \
		if [ "$$(id -u)" = 0 ]; then sudo=; elif command -v sudo >/dev/null 2>&1; then sudo=sudo; else sudo=none; fi; \
		if [ "$$sudo" = none ]; then echo "zfcore: no $(CHROMIUM), and apt-get needs root (no sudo): the browser tests will skip themselves"; \
		else mkdir -p build; echo "zfcore: installing Debian's chromium for the browser tests (apt-get install -y chromium)"; \
			$$sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >build/chromium-install.log 2>&1 || \
			{ $$sudo apt-get update -q >>build/chromium-install.log 2>&1 && \
			  $$sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >>build/chromium-install.log 2>&1; } || \
			echo "zfcore: apt-get install chromium failed (see build/chromium-install.log): the browser tests will skip themselves"; \
			[ -x $(CHROMIUM) ] && rm -f build/chromium-install.log; true; \
		fi; \
	fi

# The standalone CMake build of csrc and its C++ unit test (ctest), against the
# torch of $(PYTHON); a build folder configured for another torch is started over.
native-check: setup
	@prefix=$$($(PYTHON) -c 'import torch; print(torch.utils.cmake_prefix_path)'); \
		if [ -f build-cmake/CMakeCache.txt ] && ! grep -qF "Torch_DIR:PATH=$$prefix/Torch" build-cmake/CMakeCache.txt; then \
			echo "zfcore: build-cmake was configured for another torch: starting it over"; rm -rf build-cmake; fi; \
		cmake -S . -B build-cmake -DCMAKE_PREFIX_PATH="$$prefix"
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

# The house (docs/architecture.md): the import-linter contracts of pyproject.toml
# (layers, no cycles, private modules kept private), checked before any test runs.
lint-imports: setup
	$(PYTHON) -c "import sys; from importlinter.cli import lint_imports; sys.exit(lint_imports(no_logo=True))"

# The tests run on TEST_WORKERS pytest-xdist workers (one per core of a CI
# machine); the tests of the trained demo model stay together on one worker.
TEST_WORKERS ?= 2
test: setup lint-imports browser native-check
	@$(PYTHON) -c "import xdist" 2>/dev/null || $(PIP) install pytest-xdist
	$(PYTHON) -m pytest tests -q -n $(TEST_WORKERS) --dist loadgroup

demo: setup
	$(PYTHON) -m zfcore demo

bench: setup
	$(PYTHON) benchmarks/bench_ops.py --results-dir $(BENCH_RESULTS)

# A fresh clone of HEAD installed by the README's set-up in fresh venvs (their
# bundled pip): Python 3.11 with its own setuptools, 3.11 with setuptools 84 +
# wheel, 3.12 (torch's CUDA build from PyPI: several GB). A developer's command.
FRESH_CASES ?= 3.11 3.11-setuptools84 3.12
fresh-install-check:
	bash tools/fresh_install.sh $(FRESH_CASES)

clean:
	rm -rf build build-cmake zfcore/_C*.so zfcore/_build_info.json *.egg-info .import_linter_cache
