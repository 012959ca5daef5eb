# SPDX-License-Identifier: Apache-2.0
#
# Sourced by the scripts that run work on OpenBLAS (the demo, the benchmarks, the tests):
#
#   source cmake/openblas-kernels.sh
#   orthopt_openblas_kernels "run_demo.sh"
#
# OpenBLAS picks its kernels from the CPU's model number. On a CPU its table does not know (a recent
# Xeon that a hypervisor reports as a generic "Intel(R) Xeon(R) Processor", with Debian's OpenBLAS
# 0.3.21) it falls back to the generic Prescott kernels, 4–9× slower than the ones the CPU's flags
# allow, and so does everything built on it: libtorch's CPU matmuls, numpy, orthopt's BLAS backend.
# This builds a small probe (cmake/openblas_probe.c), asks OpenBLAS which core it chose, and when that
# is a generic fallback on a CPU whose flags support a better set, tries the better sets (AVX-512:
# Cooperlake, SkylakeX; AVX2: Zen on AMD, Haswell; AVX: Sandybridge), each in its own process: a set
# is taken only if OpenBLAS reports it, its sgemm matches a float64 reference and it is faster. It then
# exports OPENBLAS_CORETYPE (which OpenBLAS reads when it loads) for the programs the script starts,
# and prints what it chose and why. An OPENBLAS_CORETYPE of your own is kept as it is.
#
# ORTHOPT_OPENBLAS_SIMULATE_CORE=Prescott runs the first probe on that core, to exercise the choice on
# a CPU OpenBLAS knows (tests/openblas_kernels_test.sh).

# _orthopt_has_flags " FLAGS " NAME...: every NAME is among the space-separated FLAGS.
_orthopt_has_flags() {
  local flags="$1" f
  shift
  for f in "$@"; do [[ "$flags" == *" $f "* ]] || return 1; done
}

# _orthopt_probe_field KEY "PROBE OUTPUT": the value of KEY=value in the probe's line.
_orthopt_probe_field() { sed -n "s/.*$1=\([^ ]*\).*/\1/p" <<<"$2"; }

orthopt_openblas_kernels() {
  local who="${1:-orthopt}"
  if [[ -n "${OPENBLAS_CORETYPE:-}" ]]; then
    echo "[$who] OpenBLAS kernels: OPENBLAS_CORETYPE=$OPENBLAS_CORETYPE is set; kept as it is"
    return 0
  fi
  local here
  here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
  local dir="${ORTHOPT_PROBE_DIR:-${TMPDIR:-/tmp}/orthopt-openblas-probe-$(id -u)}"
  local probe="$dir/openblas_probe"
  mkdir -p "$dir"
  if [[ ! -x "$probe" || "$here/openblas_probe.c" -nt "$probe" ]]; then
    if ! cc -O2 "$here/openblas_probe.c" -o "$probe" -lopenblas -lm >"$dir/build.log" 2>&1; then
      echo "[$who] OpenBLAS kernels: not checked (the probe did not build: $dir/build.log)"
      return 0
    fi
  fi
  local first
  if [[ -n "${ORTHOPT_OPENBLAS_SIMULATE_CORE:-}" ]]; then
    first=$(OPENBLAS_CORETYPE="$ORTHOPT_OPENBLAS_SIMULATE_CORE" "$probe" 2>/dev/null) || first=""
  else
    first=$("$probe" 2>/dev/null) || first=""
  fi
  if [[ -z "$first" ]]; then
    echo "[$who] OpenBLAS kernels: not checked (the probe failed)"
    return 0
  fi
  local core gflops
  core=$(_orthopt_probe_field core "$first")
  gflops=$(_orthopt_probe_field gflops "$first")
  case "${core,,}" in
    prescott | katmai | coppermine | northwood | banias | core2 | penryn | dunnington | nehalem | atom | athlon | opteron | barcelona | bobcat) ;;
    *)
      echo "[$who] OpenBLAS kernels: $core (sgemm ${gflops} GFLOP/s, 1024³)"
      return 0
      ;;
  esac
  local flags vendor
  flags=" $( (grep -m1 '^flags' /proc/cpuinfo || true) | cut -d: -f2) "
  vendor=$( (grep -m1 '^vendor_id' /proc/cpuinfo || true) | cut -d: -f2 | tr -d ' ')
  local candidates=()
  if _orthopt_has_flags "$flags" avx512f avx512bw avx512vl avx512dq avx512cd; then
    if _orthopt_has_flags "$flags" avx512_bf16; then candidates+=(Cooperlake); fi
    candidates+=(SkylakeX)
  fi
  if _orthopt_has_flags "$flags" avx2 fma; then
    if [[ "$vendor" == AuthenticAMD || "$vendor" == HygonGenuine ]]; then candidates+=(Zen); fi
    candidates+=(Haswell)
  fi
  if _orthopt_has_flags "$flags" avx; then candidates+=(Sandybridge); fi
  local c out got error faster
  for c in "${candidates[@]}"; do
    out=$(OPENBLAS_CORETYPE="$c" "$probe" 2>/dev/null) || continue  # an unsupported set may crash
    got=$(_orthopt_probe_field core "$out")
    error=$(_orthopt_probe_field error "$out")
    faster=$(_orthopt_probe_field gflops "$out")
    [[ "${got,,}" == "${c,,}" ]] || continue
    awk -v e="$error" -v f="$faster" -v g="$gflops" 'BEGIN { exit !(e + 0 < 1e-5 && f + 0 > g + 0) }' || continue
    export OPENBLAS_CORETYPE="$c"
    echo "[$who] OpenBLAS kernels: OpenBLAS chose its generic $core kernels (sgemm $gflops GFLOP/s) on a CPU" \
      "whose flags allow faster ones (${candidates[*]}); using $c (OPENBLAS_CORETYPE=$c: sgemm $faster GFLOP/s," \
      "largest relative error against float64 $error). Set OPENBLAS_CORETYPE yourself to choose otherwise."
    return 0
  done
  echo "[$who] OpenBLAS kernels: OpenBLAS chose its generic $core kernels (sgemm $gflops GFLOP/s) and no faster" \
    "set passed the check (tried: ${candidates[*]:-none}); kept"
}
