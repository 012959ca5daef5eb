#!/usr/bin/env bash
# cmake/openblas-kernels.sh, the kernel choice the demo, benchmark and test scripts make before OpenBLAS
# loads: on a CPU OpenBLAS knows, pretend it fell back to its generic Prescott kernels
# (ORTHOPT_OPENBLAS_SIMULATE_CORE) and check that a faster set the CPU supports is chosen, checked and
# exported; that an OPENBLAS_CORETYPE of the user's is kept; that a CPU's own choice is left alone.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../cmake/openblas-kernels.sh"
export ORTHOPT_PROBE_DIR="${TMPDIR:-/tmp}/orthopt-openblas-kernels-test-$$"
trap 'rm -rf "$ORTHOPT_PROBE_DIR"' EXIT
fail() { echo "FAILED: $*" >&2; exit 1; }

flags=" $( (grep -m1 '^flags' /proc/cpuinfo || true) | cut -d: -f2) "
if ! _orthopt_has_flags "$flags" avx; then
  echo "no AVX on this CPU: no set faster than the generic one to choose; skipped"
  exit 0
fi

# 1. A generic fallback is replaced by a faster set, exported for what the script starts.
out=$(unset OPENBLAS_CORETYPE; ORTHOPT_OPENBLAS_SIMULATE_CORE=Prescott orthopt_openblas_kernels test; echo "chosen=${OPENBLAS_CORETYPE:-}")
echo "$out"
chosen=$(sed -n 's/^chosen=//p' <<<"$out")
case "$chosen" in
  Cooperlake | SkylakeX | Zen | Haswell | Sandybridge) ;;
  *) fail "a generic Prescott choice was not replaced (OPENBLAS_CORETYPE='$chosen')" ;;
esac
grep -q "OpenBLAS chose its generic Prescott kernels" <<<"$out" || fail "the message does not say why"
grep -q "using $chosen (OPENBLAS_CORETYPE=$chosen: sgemm" <<<"$out" || fail "the message does not say what was chosen"

# 2. The user's own setting is kept, unchecked and unchanged.
out=$(export OPENBLAS_CORETYPE=Prescott; orthopt_openblas_kernels test; echo "chosen=${OPENBLAS_CORETYPE:-}")
echo "$out"
grep -q "OPENBLAS_CORETYPE=Prescott is set; kept as it is" <<<"$out" || fail "the user's OPENBLAS_CORETYPE was not kept"
grep -q "^chosen=Prescott$" <<<"$out" || fail "the user's OPENBLAS_CORETYPE changed"

# 3. OpenBLAS's own choice, when not a generic fallback, is reported and left alone.
out=$(unset OPENBLAS_CORETYPE; orthopt_openblas_kernels test; echo "chosen=${OPENBLAS_CORETYPE:-}")
echo "$out"
if ! grep -q "OpenBLAS chose its generic" <<<"$out"; then
  grep -q "^chosen=$" <<<"$out" || fail "a non-generic choice was overridden"
fi
echo "openblas_kernels_test: passed"
