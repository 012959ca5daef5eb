#!/usr/bin/env bash
# A compiler and linker launcher (CMAKE_<LANG>_COMPILER_LAUNCHER, CMAKE_<LANG>_LINKER_LAUNCHER) that
# runs the command unchanged and appends one line to $ORTHOPT_TIMES_DIR/compile.tsv:
# start (s), seconds, the output file (-o), the build folder. tests/run.sh sets it when
# ORTHOPT_TIMES_DIR is set; tests/ci_times/summarize.py reads it.
start=$(date +%s.%N)
"$@"
rc=$?
end=$(date +%s.%N)
out=""
prev=""
for a in "$@"; do
  if [[ "$prev" == "-o" ]]; then out="$a"; fi
  prev="$a"
done
if [[ -n "${ORTHOPT_TIMES_DIR:-}" ]]; then
  printf '%s\t%s\t%s\t%s\n' "$start" "$(awk -v a="$start" -v b="$end" 'BEGIN { printf "%.3f", b - a }')" "${out:-?}" \
    "$PWD" >> "$ORTHOPT_TIMES_DIR/compile.tsv"
fi
exit $rc
