"""Turn pytest-benchmark JSON from bench/test_threads.py into bench/THREADS.md.

    python bench/threads_report.py bench/threads.json [more.json ...] > bench/THREADS.md

Each cell is the median of the runs' medians.
"""
import argparse
import json
import statistics
from collections import defaultdict

COMMAND = ("PYTHONPATH=src env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python -m pytest "
           "bench/test_threads.py -p no:cacheprovider --benchmark-json={path}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("json", nargs="+")
    args = parser.parse_args(argv)
    cells, info, threads_used = defaultdict(list), None, {}
    for path in args.json:
        with open(path) as fh:
            data = json.load(fh)
        for bench in data["benchmarks"]:
            e = bench["extra_info"]
            key = e["kind"], e["config"], e["setting"], e["load"]
            cells[key].append(bench["stats"]["median"])
            threads_used[e["setting"]] = e.get("cyrnn_threads_used")
            if e["setting"] == "default":
                info = info or e.get("threadpool_info")
    med = {k: statistics.median(v) for k, v in cells.items()}

    def ms(key):
        t = med.get(key)
        return "-" if t is None else (f"{t * 1e3:.3f}" if t < 1e-3 else f"{t * 1e3:.2f}")

    def ratio(a, b):
        return "-" if a not in med or b not in med else f"{med[a] / med[b]:.2f}x"

    out = ["# Fast by default: nothing pinned against one pinned thread", "",
           "cyrnn's compiled backend, float32. **pinned**: `threadpoolctl.threadpool_limits(1)` "
           "(cyrnn follows a BLAS limit of one thread; for the demo, `OPENBLAS_NUM_THREADS=1`); "
           "**default**: nothing set, as a new user runs it. **busy**: another process spins on "
           "the CPU (`while True: pass`) while the step is timed, on this 2-core machine. "
           f"Threads cyrnn chose: pinned {threads_used.get('1')}, default "
           f"{threads_used.get('default')}.", "",
           "## Training step (forward+backward, the configurations of COMPARE.md)", "",
           "| config | pinned (ms) | default (ms) | default / pinned | pinned, busy (ms) | "
           "default, busy (ms) | default busy / pinned busy |", "|---|---|---|---|---|---|---|"]
    configs = sorted({k[1] for k in med if k[0] == "step"},
                     key=lambda c: ["charlm", "charlm_batched", "small", "medium", "large", "long"].index(c))
    for c in configs:
        p, d = ("step", c, "1", "idle"), ("step", c, "default", "idle")
        pb, db = ("step", c, "1", "busy"), ("step", c, "default", "busy")
        out.append(f"| {c} | {ms(p)} | {ms(d)} | {ratio(d, p)} | {ms(pb)} | {ms(db)} | {ratio(db, pb)} |")
    out += ["", "## Composed path (medium's sizes: B=32, T=100, I=128, H=256, O=128)", "",
            "| case | pinned (ms) | default (ms) | default / pinned |", "|---|---|---|---|"]
    for c in ("padded", "bce", "last"):
        p, d = ("composed", c, "1", "idle"), ("composed", c, "default", "idle")
        out.append(f"| {c} | {ms(p)} | {ms(d)} | {ratio(d, p)} |")
    p, d = ("demo", "demo", "1", "idle"), ("demo", "demo", "default", "idle")
    out += ["", "## `cyrnn demo` (whole process, 3 runs)", "",
            "| pinned (s) | default (s) | default / pinned |", "|---|---|---|",
            f"| {med.get(p, float('nan')):.2f} | {med.get(d, float('nan')):.2f} | {ratio(d, p)} |", "",
            "BLAS libraries with nothing pinned (`threadpoolctl.threadpool_info()`):", "",
            "| library | version | architecture | num_threads |", "|---|---|---|---|"]
    for lib in info or []:
        out.append(f"| {lib.get('filepath', '').rsplit('/', 1)[-1]} | {lib.get('version')} | "
                   f"{lib.get('architecture')} | {lib.get('num_threads')} |")
    out += ["", "Reproduce:", "", "```bash", *(COMMAND.format(path=p) for p in args.json),
            f"python bench/threads_report.py {' '.join(args.json)} > bench/THREADS.md", "```"]
    print("\n".join(out))


if __name__ == "__main__":
    main()
