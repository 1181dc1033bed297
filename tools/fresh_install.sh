#!/usr/bin/env bash
# Fresh-machine install check: a clone of this repository's HEAD (committed
# state only), a fresh venv with the pip that venv bundles (never upgraded), the
# README's set-up (`make setup PYTHON=venv/bin/python`), then zfcore imported,
# `python -m zfcore info` and one op call. One clone and one venv per case:
#
#   3.11                 python3.11 -m venv; torch==2.13.0 (CPU) from the local disk
#   3.11-setuptools84    the same with setuptools==84.* and wheel installed first
#                        (pip 23.2 + wheel used to take the `setup.py develop` path)
#   3.12                 PYENV_VERSION=3.12.1 python3.12 -m venv; torch==2.13.0 is
#                        its CUDA build from PyPI (several GB), built without a GPU
#
#   bash tools/fresh_install.sh                      # all three cases
#   bash tools/fresh_install.sh 3.11 3.12            # some of them
#   FRESH_INSTALL_DIR=/tmp/fresh KEEP=1 bash tools/fresh_install.sh 3.12   # keep the clones and venvs
#
# Each case also checks that pip made a PEP 660 editable install (never
# `setup.py develop`). Logs: <dir>/<case>/setup.log. Exit status: the number of
# failed cases.
set -uo pipefail
REPO=$(git -C "$(dirname "$0")/.." rev-parse --show-toplevel)
CASES=${*:-3.11 3.11-setuptools84 3.12}
WORK=${FRESH_INSTALL_DIR:-$(mktemp -d "${TMPDIR:-/tmp}/zfcore-fresh.XXXXXX")}
mkdir -p "$WORK"
echo "fresh install check of $(git -C "$REPO" rev-parse --short HEAD) in $WORK: $CASES"

now() { date +%s; }

run_case() {
  local name=$1 dir=$WORK/$1 start step
  local -a venv
  case $name in
    3.11|3.11-setuptools84) venv=(python3.11 -m venv) ;;
    3.12) venv=(env PYENV_VERSION=3.12.1 python3.12 -m venv) ;;
    *) echo "unknown case $name (3.11, 3.11-setuptools84, 3.12)"; return 1 ;;
  esac
  rm -rf "$dir"
  start=$(now)
  git clone -q "$REPO" "$dir" || return 1
  cd "$dir" || return 1
  "${venv[@]}" venv || return 1
  local py=$dir/venv/bin/python
  echo "[$name] $($py --version), $($py -m pip --version | cut -d' ' -f1,2)"
  if [ "$name" = 3.11-setuptools84 ]; then
    $py -m pip install -q "setuptools==84.*" wheel >pre.log 2>&1 || { cat pre.log; return 1; }
    echo "[$name] $($py -c 'import setuptools, wheel; print("setuptools", setuptools.__version__, "+ wheel", wheel.__version__)')"
  fi
  step=$(now)
  if ! make setup PYTHON="$py" >setup.log 2>&1; then
    echo "[$name] make setup FAILED after $(( $(now) - step )) s; the end of $dir/setup.log:"
    tail -40 setup.log
    return 1
  fi
  echo "[$name] make setup: $(( $(now) - step )) s"
  grep "^zfcore: built" setup.log | sed "s/^/[$name] /"
  if grep -q "setup.py develop" setup.log; then
    echo "[$name] FAILED: pip ran 'setup.py develop' instead of a PEP 660 editable install"
    return 1
  fi
  grep -q "Building editable for zfcore (pyproject.toml)" setup.log \
    || { echo "[$name] FAILED: no PEP 660 editable build in setup.log"; return 1; }
  # Outside the clone, so that zfcore comes from the editable install.
  (cd / && $py -m zfcore info) 2>&1 | grep -v -i "warn" | sed "s/^/[$name] /"
  (cd / && $py - <<'EOF'
import torch, zfcore
from zfcore.ops import max_pool2d_switches, unpool2d
x = torch.randn(2, 3, 9, 9)
out, switches = max_pool2d_switches(x, 3, 2, ceil_mode=True)
assert torch.equal(out, torch.nn.functional.max_pool2d(x, 3, 2, ceil_mode=True))
back = unpool2d(out, switches, 3, 2, output_size=x.shape)
assert zfcore.backends()["cpu"].available, zfcore.backends()["cpu"].reason
print("op call: max_pool2d_switches + unpool2d on the cpu backend:", tuple(back.shape))
EOF
  ) 2>&1 | grep -v -i "warn" | sed "s/^/[$name] /"
  [ "${PIPESTATUS[0]}" = 0 ] || { echo "[$name] FAILED: the op call"; return 1; }
  echo "[$name] ok in $(( $(now) - start )) s"
}

failed=0
for c in $CASES; do
  ( run_case "$c" ) || { failed=$((failed + 1)); echo "[$c] FAILED"; }
  [ -n "${KEEP:-}" ] || rm -rf "${WORK:?}/$c/venv"
done
[ -n "${KEEP:-}" ] || [ -n "${FRESH_INSTALL_DIR:-}" ] || rm -rf "$WORK"
echo "fresh install check: $failed of $(wc -w <<<"$CASES") cases failed"
exit "$failed"
