"""Turn pytest-benchmark JSON from bench/test_stack.py into bench/STACKS.md.

    python bench/stack_report.py bench/stack.json [more.json ...] > bench/STACKS.md

With several files, each cell is the median of the runs' values.
"""
import argparse
import json
import os
import statistics
import sys
from collections import defaultdict

sys.path.insert(0, os.path.dirname(__file__))
from peers import CONFIGS  # noqa: E402

COMMAND = ("PYTHONPATH=src env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python -m pytest "
           "bench/test_stack.py -p no:cacheprovider --benchmark-json={path}")
TARGET = 1.1
SETTINGS = ("1", "default")
LABELS = {"1": "pinned to one thread (`threadpool_limits(1)`)", "default": "nothing pinned"}

INTRO = """\
# What a stack costs

cyrnn's training step (`loss_and_grad(x, target, input_grad=False)`: forward, loss on every
step, every parameter's gradient; float32, compiled backend) of `RNN(..., num_layers=L,
bidirectional=D == 2)` against `L x D` times the one-layer step of the same sizes
(`bench/test_stack.py`, this page from `bench/stack_report.py`). Sizes as in COMPARE.md:

| size | B | T | input | H | O |
|---|---|---|---|---|---|
{sizes}

Columns:

- **step**: median time of the stack's step (pytest-benchmark);
- **1-layer step**: median one-layer step, measured in the same rounds as the ratio;
- **step / (L x D x 1-layer)**: the target's ratio, measured side by side: rounds of a block of
  one-layer steps then a block of stack steps (order alternating; each block starts with an
  untimed call), median over rounds of the ratio of the blocks' medians. For L = D = 1 both blocks
  run the same model, so that row shows the noise of the method;
- **fastest calls**: the same ratio from the fastest stack call and the fastest one-layer call
  of those rounds: the machine is shared, and the fastest calls are the least slowed by other
  processes, so on a loaded machine this is the better estimate;
- **separate medians**: the same ratio from the step column and the L = D = 1 row's step (two
  benchmarks run one after the other, so more exposed to the machine's drift);
- **FLOPs / (L x D x 1-layer)**: the matrix-product FLOPs of the stack's step over `L x D` times
  the one-layer step's (counted as in COMPARE.md). Above layer 0 a layer reads `D*H` inputs,
  not `I` (and token inputs make layer 0's input projection a row gather): the stack does more
  work per layer than the one-layer model, so this is the ratio that a step running at the
  one-layer step's FLOP rate would reach;
- **per FLOP**: the time ratio over the FLOP ratio (1.00 = the stack's FLOPs run as fast as the
  one-layer step's);
- **target**: step / (L x D x 1-layer) <= {target}, judged on the side-by-side median ratio and,
  after the slash, on the fastest calls' ratio.
"""


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("json", nargs="+")
    parser.add_argument("--note", default="", help="a paragraph put under the introduction (which build, why)")
    args = parser.parse_args(argv)
    runs = defaultdict(lambda: defaultdict(list))
    info, threads_used, builds, foreign, dates, versions, machine = {}, {}, {}, [], [], None, None
    for path in args.json:
        with open(path) as fh:
            data = json.load(fh)
        dates.append(data.get("datetime"))
        machine = machine or data.get("machine_info")
        for bench in data["benchmarks"]:
            e = bench["extra_info"]
            if e.get("kind") != "stack":
                continue
            key = e["size"], e["layers"], e["directions"], e["setting"]
            cell = runs[key]
            cell["step"].append(bench["stats"]["median"])
            for name in ("paired_ratio", "paired_single_s", "paired_stack_s", "fastest_ratio", "foreign_cores"):
                cell[name].append(e.get(name, float("nan")))
            cell["flops"], cell["single_flops"] = [e["flops"]], [e["single_flops"]]
            foreign.append(e.get("foreign_cores", float("nan")))
            threads_used[e["setting"]] = e.get("cyrnn_threads_used")
            if len(e.get("threadpool_info") or []) >= len(info.get(e["setting"], [])):
                info[e["setting"]] = e.get("threadpool_info")
            versions = versions or e.get("versions")
            build = (e.get("versions") or {}).get("cyrnn_build")
            if build:
                builds.setdefault(json.dumps(build, sort_keys=True), set()).add(path)
    med = {k: {n: statistics.median(v) for n, v in cell.items()} for k, cell in runs.items()}

    sizes = [s for s in CONFIGS if any(k[0] == s for k in med)]
    out = [INTRO.format(target=TARGET, sizes="\n".join(
        f"| {s} | {c.B} | {c.T} | {f'{c.I} tokens' if c.tokens else c.I} | {c.H} | {c.O} |"
        for s, c in CONFIGS.items() if s in sizes))]
    if args.note:
        out += [f"**Note.** {args.note}", ""]
    verdicts = []
    for setting in SETTINGS:
        if not any(k[3] == setting for k in med):
            continue
        out += [f"## {LABELS[setting]} (cyrnn used {threads_used.get(setting)} thread(s))", "",
                "| size | L | D | step (ms) | 1-layer step (ms) | step / (L x D x 1-layer) | "
                "fastest calls | separate medians | FLOPs / (L x D x 1-layer) | per FLOP | target <= 1.1 | "
                "foreign cores |",
                "|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for size in sizes:
            for key in sorted((k for k in med if k[0] == size and k[3] == setting), key=lambda k: (k[2], k[1])):
                _, L, D, _ = key
                m, n = med[key], L * D
                ratio = m["paired_ratio"] / n
                base = med.get((size, 1, 1, setting))
                separate = "-" if base is None else f"{m['step'] / (n * base['step']):.2f}"
                flop_ratio = m["flops"] / (n * m["single_flops"])
                fastest = m["fastest_ratio"] / n
                met = ratio <= TARGET, fastest <= TARGET
                if (L, D) != (1, 1):
                    verdicts.append(met)
                out.append(
                    f"| {size} | {L} | {D} | {m['step'] * 1e3:.2f} | {m['paired_single_s'] * 1e3:.2f} | "
                    f"{ratio:.2f} | {fastest:.2f} | {separate} | {flop_ratio:.2f} | {ratio / flop_ratio:.2f} | "
                    f"{'-' if (L, D) == (1, 1) else ' / '.join('yes' if v else 'no' for v in met)} | "
                    f"{m['foreign_cores']:.2f} |")
        out.append("")
    foreign = sorted(f for f in foreign if f == f)
    versions = versions or {}
    out += [
        f"Target met in {sum(v[0] for v in verdicts)} of {len(verdicts)} stack rows on the median "
        f"ratio, {sum(v[1] for v in verdicts)} on the fastest calls' ratio.", "",
        "## Run", "",
        f"- Runs: {len(args.json)} ({', '.join(str(d) for d in dates)}). Foreign load (cores kept busy "
        f"by other processes while a test ran, from /proc/stat): median "
        f"{statistics.median(foreign) if foreign else float('nan'):.2f}, max "
        f"{foreign[-1] if foreign else float('nan'):.2f} of {versions.get('cpu_count', '?')} CPUs.",
        f"- Machine: {(machine or {}).get('cpu', {}).get('brand_raw', '?')}; Python "
        f"{versions.get('python')}, numpy {versions.get('numpy')}, cyrnn {versions.get('cyrnn')} "
        f"({(versions.get('cyrnn_backend_info') or {}).get('blas')}).",
        "- cyrnn build(s) measured: " + "; ".join(
            f"{', '.join(f'{k}={v}' for k, v in json.loads(b).items())} ({', '.join(sorted(p))})"
            for b, p in builds.items()) + ".",
        "",
        "BLAS libraries (`threadpoolctl.threadpool_info()` inside the limit):", "",
        "| setting | library | version | threading | architecture | num_threads |",
        "|---|---|---|---|---|---|",
    ]
    for setting, libs in sorted(info.items()):
        for lib in libs or []:
            out.append(f"| {setting} | {lib.get('filepath', '').rsplit('/', 1)[-1]} | {lib.get('version') or '-'} | "
                       f"{lib.get('threading_layer', '')} | {lib.get('architecture', '')} | {lib.get('num_threads')} |")
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    paths = [os.path.relpath(p, repo) if os.path.abspath(p).startswith(repo + os.sep) else os.path.abspath(p)
             for p in args.json]
    out += ["", "Reproduce (from the repository root, with the extension built in place):", "", "```bash",
            *(COMMAND.format(path=p) for p in paths),
            f"python bench/stack_report.py {' '.join(paths)} > bench/STACKS.md", "```"]
    print("\n".join(out))


if __name__ == "__main__":
    main()
