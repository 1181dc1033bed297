#!/usr/bin/env bash
# The GPU run in one call: on a machine with a CUDA GPU (offline is fine), install
# zfcore on the torch found there, build the CUDA extension, run the tests of the
# GPU backends (pytest -m gpu, both backends), then the GPU benchmarks; everything
# lands in $OUT. TEST_LIMIT_S and BENCH_LIMIT_S cap the two long stages (a short
# device lease); the benchmark writes its tables after every case.
#
#   OUT=/tmp/gpu-run bash benchmarks/gpu.sh            # all stages
#   OUT=/tmp/gpu-run bash benchmarks/gpu.sh build test # some stages: build, test, bench
#
# Without a GPU it runs what it can (the build, the tests with the Triton
# kernels in the CPU interpreter, the benchmark's --smoke plumbing), so the
# script itself is checked on any machine.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/build/gpu-run}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
PYTHON=${PYTHON:-python3}
STAGES=${*:-build test bench}
status=0
HAS_GPU=$($PYTHON -c "import torch; print(int(torch.cuda.is_available()))")

stage() { echo; echo "=== $1 ($(date -u +%H:%M:%S))"; }

for s in $STAGES; do
  case $s in
    build)
      stage "environment"
      {
        $PYTHON -c "import sys, torch; print('python', sys.version.split()[0], '| torch', torch.__version__, \
'| cuda', torch.version.cuda, '| gpu', torch.cuda.get_device_name() if torch.cuda.is_available() else None)"
        $PYTHON -c "import triton; print('triton', triton.__version__)" || true
        command -v nvcc >/dev/null && nvcc --version | tail -1
        command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm --format=csv
        for cxx in c++ /usr/bin/g++; do command -v $cxx >/dev/null && echo "$cxx: $(command -v $cxx) $($cxx --version | head -1)"; done
        $PYTHON -c "import torch; print('torch built with:', [l.strip() for l in torch.__config__.show().splitlines() if 'C++ Version' in l or 'GCC' in l][:2])"
      } 2>&1 | tee "$OUT/environment.txt"
      stage "build (pip install -e, no network, the torch that is here)"
      start=$(date +%s)
      MAX_JOBS=${MAX_JOBS:-16} $PYTHON -m pip install -v --no-build-isolation --no-deps --no-index -e . \
        >"$OUT/build.log" 2>&1 || { echo "build failed: see build.log"; tail -30 "$OUT/build.log"; exit 1; }
      grep "zfcore: building" "$OUT/build.log" | head -3
      echo "built in $(( $(date +%s) - start )) s"
      $PYTHON -c "import zfcore; [print(f'{n:9s} {i.available!s:5s} {i.device:4s} {i.reason}') for n, i in zfcore.backends().items()]" \
        | tee -a "$OUT/environment.txt"
      # An error raised in zfcore._C must reach Python as an exception. The first
      # H200 run's build (c++ = /opt/gcc's GCC) segfaulted on every such error:
      # on a crash, rebuild with the system compiler and probe again.
      if ! $PYTHON tools/native_error_probe.py 2>&1 | tee -a "$OUT/environment.txt"; then
        if [ -x /usr/bin/g++ ] && [ "$(command -v c++)" != /usr/bin/g++ ]; then
          echo "native errors crash this build: rebuilding with CC=/usr/bin/gcc CXX=/usr/bin/g++" | tee -a "$OUT/environment.txt"
          CC=/usr/bin/gcc CXX=/usr/bin/g++ MAX_JOBS=${MAX_JOBS:-16} $PYTHON -m pip install -v --no-build-isolation \
            --no-deps --no-index -e . >"$OUT/rebuild.log" 2>&1 || { echo "rebuild failed: see rebuild.log"; exit 1; }
          $PYTHON tools/native_error_probe.py 2>&1 | tee -a "$OUT/environment.txt" || status=1
        else
          status=1
        fi
      fi
      ;;
    test)
      # On a GPU: the tests marked gpu (tests/conftest.py: every test of a GPU
      # backend), in parallel where pytest-xdist is there; the rest of the suite
      # runs on the CPU (make test). Without a GPU: the same tests, interpreted.
      stage "tests (-m gpu)"
      extra=()
      $PYTHON -c "import xdist" 2>/dev/null && [ "$HAS_GPU" = 1 ] && extra+=(-n "${TEST_WORKERS:-6}")
      $PYTHON -c "import pytest_timeout" 2>/dev/null && extra+=(--timeout 240)
      timeout "${TEST_LIMIT_S:-900}" $PYTHON -m pytest tests -m gpu -q -rs --durations=15 -p no:cacheprovider \
        ${extra[@]+"${extra[@]}"} >"$OUT/tests.log" 2>&1 || status=1
      tail -25 "$OUT/tests.log"
      ;;
    bench)
      stage "benchmarks"
      if [ "$HAS_GPU" = 1 ]; then
        (cd benchmarks && timeout "${BENCH_LIMIT_S:-1200}" $PYTHON bench_gpu.py --results-dir "$OUT") \
          >"$OUT/bench.log" 2>&1 || status=1
      else
        (cd benchmarks && TRITON_INTERPRET=1 $PYTHON bench_gpu.py --smoke --dtypes float32 --results-dir "$OUT") \
          >"$OUT/bench.log" 2>&1 || status=1
      fi
      tail -45 "$OUT/bench.log"
      ;;
    *) echo "unknown stage $s (build, test, bench)"; exit 2 ;;
  esac
done
echo; echo "results in $OUT: $(ls "$OUT" | tr '\n' ' ')"
exit $status
