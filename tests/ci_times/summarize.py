"""Where a CI run's minutes went, from what `ORTHOPT_TIMES_DIR=DIR bash tests/run.sh [mode]` recorded:

    python3 tests/ci_times/summarize.py DIR [--top N]

DIR/steps.tsv     mode, step (install, configure, build, test, fuzz runs), seconds
DIR/compile.tsv   start, seconds, output, folder: every compile and link (tests/ci_times/launcher.sh)
DIR/ctest-<mode>.xml   ctest's JUnit report: every test's time

Prints Markdown: the steps; per build, the summed compile and link time against the build's wall time
(how busy the cores were); the N costliest translation units and links; per test program, its summed
test time, and the N slowest tests.
"""
import collections
import os
import sys
import xml.etree.ElementTree as ET

BUILD_DIRS = {"build-sanitize": "sanitize", "build-tsan": "tsan", "build-fuzz": "fuzz", "build-cuda": "cuda", "build": "plain"}


def mode_of(folder):
    parts = folder.split(os.sep)
    for p in parts:
        if p in BUILD_DIRS:
            return BUILD_DIRS[p]
    return "?"


def target_of(folder, output):
    path = os.path.join(folder, output)
    for p in path.split(os.sep):
        if p.endswith(".dir"):
            return p[:-4]
    return os.path.basename(output)  # a link: the executable


def main():
    if len(sys.argv) < 2:
        print(__doc__)
        return 2
    d = sys.argv[1]
    top = int(sys.argv[sys.argv.index("--top") + 1]) if "--top" in sys.argv else 15

    steps = []
    if os.path.exists(os.path.join(d, "steps.tsv")):
        with open(os.path.join(d, "steps.tsv")) as f:
            for line in f:
                mode, step, sec = line.rstrip("\n").split("\t")
                steps.append((mode, step, float(sec)))
    print("## Steps (seconds)\n")
    print("| mode | step | seconds |")
    print("|---|---|---:|")
    totals = collections.OrderedDict()
    for mode, step, sec in steps:
        print(f"| {mode} | {step} | {sec:.0f} |")
        totals[mode] = totals.get(mode, 0.0) + sec
    for mode, sec in totals.items():
        print(f"| {mode} | **total** | **{sec:.0f}** |")

    units = []
    if os.path.exists(os.path.join(d, "compile.tsv")):
        with open(os.path.join(d, "compile.tsv")) as f:
            for line in f:
                fields = line.rstrip("\n").split("\t")
                if len(fields) != 4:
                    continue
                start, sec, out, folder = fields
                units.append((float(start), float(sec), out, folder))
    if units:
        print("\n## Builds: compile and link seconds, summed, against the build step's wall time\n")
        print("| build | units | summed seconds | build wall seconds | cores busy |")
        print("|---|---:|---:|---:|---:|")
        by_mode = collections.defaultdict(list)
        for u in units:
            by_mode[mode_of(u[3])].append(u)
        wall = {m: s for m, st, s in steps if st == "build"}
        for mode, us in by_mode.items():
            summed = sum(u[1] for u in us)
            w = wall.get(mode)
            busy = f"{summed / w:.2f}" if w else ""
            print(f"| {mode} | {len(us)} | {summed:.0f} | {w:.0f} | {busy} |" if w else f"| {mode} | {len(us)} | {summed:.0f} | | |")
        print(f"\n## The {top} costliest compiles and links\n")
        print("| build | target | output | seconds |")
        print("|---|---|---|---:|")
        for start, sec, out, folder in sorted(units, key=lambda u: -u[1])[:top]:
            print(f"| {mode_of(folder)} | {target_of(folder, out)} | {os.path.basename(out)} | {sec:.1f} |")
        print("\n## Per target (compile and link, summed)\n")
        print("| build | target | seconds |")
        print("|---|---|---:|")
        per_target = collections.Counter()
        for start, sec, out, folder in units:
            per_target[(mode_of(folder), target_of(folder, out))] += sec
        for (mode, target), sec in per_target.most_common(top * 2):
            print(f"| {mode} | {target} | {sec:.0f} |")

    tests = []
    for name in sorted(os.listdir(d)):
        if not (name.startswith("ctest-") and name.endswith(".xml")):
            continue
        mode = name[len("ctest-"):-len(".xml")]
        try:
            root = ET.parse(os.path.join(d, name)).getroot()
        except ET.ParseError:
            continue
        for case in root.iter("testcase"):
            tests.append((mode, case.get("name", "?"), float(case.get("time", "0") or 0)))
    if tests:
        print("\n## Tests: summed time per program (seconds; ctest runs two at once)\n")
        print("| mode | program | tests | seconds |")
        print("|---|---|---:|---:|")
        per_program = collections.defaultdict(lambda: [0, 0.0])
        for mode, name, sec in tests:
            # Catch2 cases are registered as "<program>: <case>"; other tests by their own names
            # (mpi.<program>.np<ranks>, example.*, package.*, header.*): grouped by the part before a
            # colon, else by the name up to its last dot.
            program = name.split(":")[0].strip() if ":" in name else name.rsplit(".", 1)[0]
            per_program[(mode, program)][0] += 1
            per_program[(mode, program)][1] += sec
        for (mode, program), (n, sec) in sorted(per_program.items(), key=lambda kv: -kv[1][1]):
            print(f"| {mode} | {program} | {n} | {sec:.0f} |")
        print(f"\n## The {top} slowest tests\n")
        print("| mode | test | seconds |")
        print("|---|---|---:|")
        for mode, name, sec in sorted(tests, key=lambda t: -t[2])[:top]:
            print(f"| {mode} | {name[:100]} | {sec:.1f} |")
        print("\n| mode | tests |\n|---|---:|")
        for mode, n in collections.Counter(t[0] for t in tests).items():
            print(f"| {mode} | {n} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
