"""Turn pytest-benchmark JSON from bench/test_compare.py into the markdown tables of COMPARE.md.

    python bench/compare_report.py bench/compare.json [more.json ...] > bench/COMPARE.md

The LSTM / GRU rows (``test_compare_gated``, ``test_gemm_limit_gated``) get a "Gated cells"
section with its own targets; ``--gated-only`` renders that section alone (with the checks and
the run details), for a run of ``-k gated``:

    python bench/compare_report.py --gated-only bench/compare_gated.json > bench/GATED.md

With several files (repeated runs on a noisy machine), each cell is the median of the runs'
medians, taken over the runs in which other processes kept less than ``--max-foreign`` cores busy
(``extra_info["foreign_cores"]``); a cell measured only under load is marked with ``*``.
"""
import argparse
import json
import os
import statistics
import sys
from collections import defaultdict

sys.path.insert(0, os.path.dirname(__file__))
from peers import (CELLS, CONFIGS, GATED_CONFIGS, GATED_PEERS, OPS, PEERS, STACK_CONFIGS,  # noqa: E402
                   STACK_PEERS, flops, machine_limit_shape, shape_of, stack_of)

RUN_COMMAND = (
    "PYTHONPATH=src env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE "
    "python -m pytest bench/test_compare.py -p no:cacheprovider --benchmark-json={path}"
)
GATED_RUN_COMMAND = (
    "PYTHONPATH=src env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE "
    "python -m pytest bench/test_compare.py -k gated -p no:cacheprovider --benchmark-json={path}"
)

INTRO = """\
# cyrnn against PyTorch, JAX and NumPy loops

One Elman RNN step (tanh, output layer, loss on every step: softmax cross-entropy for token
configs, MSE for dense ones), float32, `forward` (outputs of every step) and `forward+backward`
(loss and the gradient of every parameter), timed with pytest-benchmark (`bench/test_compare.py`,
peers in `bench/peers.py`, this page from `bench/compare_report.py`). All peers start from the
same weights (cyrnn's `seed=0` initialisation) and are checked against cyrnn before timing.

| config | B | T | input | H | O |
|---|---|---|---|---|---|
{configs}

Peers: **cyrnn-cython** and **cyrnn-numpy** (the compiled backend and its pure-NumPy twin,
through `RNN.forward` / `RNN.loss_and_grad`); **naive-numpy** (a Python loop over time in the
style of min-char-rnn: column vectors, one-hot token columns built per step, every product per
step, BPTT with `dhnext`); **torch** (`nn.Embedding` + `nn.RNN` + `nn.Linear`, `F.cross_entropy` /
`F.mse_loss`, `loss.backward()`, no `torch.compile`; the token embedding is `nn.Embedding(V, V)`
frozen at the identity, a one-hot lookup, so that `weight_ih_l0` is exactly cyrnn's `Wxh`;
`forward` runs under `torch.no_grad()`); **jax** (`lax.scan` over the recurrence under `jax.jit`,
input projection and output layer as whole-sequence products, `jax.value_and_grad`,
`block_until_ready`, compiled by a warm-up call before timing).

FLOPs counted (matrix products only; the same count for every peer, so GFLOP/s ratios are time
ratios): forward `F = 2*T*B*(I*H + H*H + H*O)` for dense inputs and `2*T*B*(H*H + H*O)` for
tokens (the input projection is a row gather); forward+backward `3*F - 2*T*B*I*H` (dense) or
`3*F` (tokens): the products carrying the error back (`dz Why`, `da Whh`) and the weight
gradients (`dWhy = dz^T h`, `dWhh = da^T h_prev`, and for dense inputs `dWxh = da^T x`). Every
peer computes parameter gradients only (cyrnn with `input_grad=False`), so the input gradient
`dx = da Wxh` is neither computed nor counted. The **machine limit**
is one NumPy float32 matmul `(T*B, H) x (H, H)` timed in the same run at the same thread count.

Threads: `threadpoolctl.threadpool_limits(n)` for NumPy's and SciPy's OpenBLAS (and torch's
OpenMP), `torch.set_num_threads(n)`. XLA ignores both; for JAX at one thread the whole process is
pinned to one CPU (`os.sched_setaffinity` on every thread) while JAX is timed; at two threads JAX
runs with its default thread pool. cyrnn chooses its own thread count and follows a limit of one
thread. **default** pins nothing: no threadpool limit, torch's and XLA's default pools, cyrnn's
own choice; it is what a user who sets nothing runs.
"""
THREAD_SETTINGS = (1, 2, "default")


def thread_label(threads):
    return "nothing pinned (default)" if threads == "default" else (
        f"{threads} thread{'s' if threads != 1 else ''}")
BEST_PEERS = ("torch", "jax")

# the team's targets, forward+backward at one thread: cyrnn (cython) / best peer speed ratio
SPEED_TARGETS = {"charlm": 3.0, "small": 3.0, "long": 3.0, "charlm_batched": 1.3, "medium": 1.3,
                 "large": 1.2}
MACHINE_TARGETS = {"medium": 0.80, "large": 0.80}
TWIN_TARGETS = {"charlm": 5.0}


def load(paths, max_foreign):
    runs = defaultdict(list)  # key -> [(median s, foreign cores, file)]
    meta = {"machine_info": None, "datetime": [], "threadpool_info": {}, "versions": None,
            "threads_note": {}, "checks": {}, "builds": {}, "foreign": []}
    for path in paths:
        with open(path) as fh:
            data = json.load(fh)
        meta["machine_info"] = meta["machine_info"] or data.get("machine_info")
        meta["datetime"].append(data.get("datetime"))
        for bench in data["benchmarks"]:
            extra = bench["extra_info"]
            if "peer" not in extra:
                continue
            key = extra["config"], extra["op"], extra["peer"], extra["threads"]
            runs[key].append((bench["stats"]["median"], extra.get("foreign_cores", 0.0), path))
            meta["foreign"].append(extra.get("foreign_cores", 0.0))
            info = extra.get("threadpool_info")
            if info and len(info) > len(meta["threadpool_info"].get(extra["threads"], [])):
                meta["threadpool_info"][extra["threads"]] = info  # the fullest (torch's OpenMP too)
            build = (extra.get("versions") or {}).get("cyrnn_build")
            if build:
                meta["builds"].setdefault(json.dumps(build, sort_keys=True), set()).add(path)
            meta["versions"] = meta["versions"] or extra.get("versions")
            if "threads_note" in extra:
                meta["threads_note"][extra["peer"], extra["threads"]] = extra["threads_note"]
            if "check" in extra:
                meta["checks"][extra["config"], extra["peer"]] = extra["check"]
    cells = {}
    for key, found in runs.items():
        clean = [r for r in found if r[1] < max_foreign]
        used = clean or found
        cells[key] = {
            "median": statistics.median(r[0] for r in used),
            "loaded": not clean,
            "runs": len(used),
            "all_runs": len(found),
            "foreign": max(r[1] for r in used),
        }
    return cells, meta


def fmt_ms(cell):
    if cell is None:
        return "-"
    t = cell["median"] * 1e3
    text = f"{t:.3f}" if t < 1 else f"{t:.2f}" if t < 100 else f"{t:.0f}"
    return text + ("*" if cell["loaded"] else "")


def ratio(a, b):
    """b / a: how many times faster a is than b."""
    if a is None or b is None:
        return None
    return b["median"] / a["median"]


def fmt_ratio(r):
    return "-" if r is None else f"{r:.2f}x"


def best_peer(cells, config, op, threads):
    found = [(cells[config, op, p, threads], p) for p in BEST_PEERS if (config, op, p, threads) in cells]
    if not found:
        return None, None
    return min(found, key=lambda cp: cp[0]["median"])


def gflops(cells, config, op, peer, threads):
    cell = cells.get((config, op, peer, threads))
    return None if cell is None else flops(config, op) / cell["median"] / 1e9


def machine_gflops(cells, config, threads):
    cell = cells.get((config, "matmul", "numpy-matmul", threads))
    if cell is None:
        return None
    c = CONFIGS[config]
    return 2 * c.T * c.B * c.H * c.H / cell["median"] / 1e9


def main_table(cells, threads):
    head = ["config", "op", *[f"{p} (ms)" for p in PEERS], "cython / best peer",
            "cython / numpy twin", "cyrnn GFLOP/s", "machine limit GFLOP/s", "cyrnn % of limit"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for config in CONFIGS:
        for op in OPS:
            row = [config, op]
            row += [fmt_ms(cells.get((config, op, p, threads))) for p in PEERS]
            cy = cells.get((config, op, "cyrnn-cython", threads))
            best, name = best_peer(cells, config, op, threads)
            row.append(f"{fmt_ratio(ratio(cy, best))} ({name})" if best else "-")
            row.append(fmt_ratio(ratio(cy, cells.get((config, op, "cyrnn-numpy", threads)))))
            g = gflops(cells, config, op, "cyrnn-cython", threads)
            m = machine_gflops(cells, config, threads)
            row.append("-" if g is None else f"{g:.1f}")
            row.append("-" if m is None else f"{m:.1f}")
            row.append("-" if g is None or m is None else f"{100 * g / m:.0f}%")
            lines.append("| " + " | ".join(row) + " |")
    return lines


def gflops_table(cells, threads):
    op = "forward+backward"
    head = ["config", "GFLOP counted", *[f"{p}" for p in PEERS], "machine limit"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for config in CONFIGS:
        m = machine_gflops(cells, config, threads)
        row = [config, f"{flops(config, op) / 1e9:.4f}"]
        for p in PEERS:
            g = gflops(cells, config, op, p, threads)
            row.append("-" if g is None else f"{g:.1f}" + (f" ({100 * g / m:.0f}%)" if m else ""))
        row.append("-" if m is None else f"{m:.1f}")
        lines.append("| " + " | ".join(row) + " |")
    return lines


def targets(cells):
    fb = "forward+backward"
    lines = ["| target | measured | met |", "|---|---|---|"]

    def add(text, value, ok):
        lines.append(f"| {text} | {value} | {'yes' if ok else 'no'} |")

    for config, goal in SPEED_TARGETS.items():
        cy = cells.get((config, fb, "cyrnn-cython", 1))
        best, name = best_peer(cells, config, fb, 1)
        r = ratio(cy, best)
        if r is not None:
            add(f"{config}: >= {goal}x best peer (1 thread)", f"{r:.2f}x ({name})", r >= goal)
    for config, goal in MACHINE_TARGETS.items():
        g, m = gflops(cells, config, fb, "cyrnn-cython", 1), machine_gflops(cells, config, 1)
        if g is not None and m is not None:
            add(f"{config}: >= {goal:.0%} of the machine limit (1 thread)",
                f"{g / m:.0%} ({g:.1f} of {m:.1f} GFLOP/s)", g / m >= goal)
    for config, goal in TWIN_TARGETS.items():
        r = ratio(cells.get((config, fb, "cyrnn-cython", 1)), cells.get((config, fb, "cyrnn-numpy", 1)))
        if r is not None:
            add(f"{config}: >= {goal}x the NumPy twin (1 thread)", f"{r:.2f}x", r >= goal)
    slower = []
    for threads in THREAD_SETTINGS:
        for config in CONFIGS:
            for op in OPS:
                r = ratio(cells.get((config, op, "cyrnn-cython", threads)),
                          cells.get((config, op, "cyrnn-numpy", threads)))
                if r is not None and r < 1:
                    slower.append(f"{config} {op} {threads}t ({r:.2f}x)")
    add("never slower than the NumPy twin (every config, op, thread count)",
        "slower in: " + ", ".join(slower) if slower else "never slower", not slower)
    behind = []
    for config in CONFIGS:
        cy = cells.get((config, fb, "cyrnn-cython", 2))
        best, name = best_peer(cells, config, fb, 2)
        r = ratio(cy, best)
        if r is not None and r < 1:
            behind.append(f"{config} ({r:.2f}x vs {name})")
    add("no config slower than the best peer at 2 threads (forward+backward)",
        "slower in: " + ", ".join(behind) if behind else "none slower", not behind)
    # fast by default: nothing pinned against pinned to one thread
    worse, gains = [], []
    for config in CONFIGS:
        one = cells.get((config, fb, "cyrnn-cython", 1))
        default = cells.get((config, fb, "cyrnn-cython", "default"))
        r = ratio(default, one)  # speed-up of the default over one thread
        if r is None:
            continue
        gains.append(f"{config} {r:.2f}x")
        if 1 / r > 1.05:
            worse.append(f"{config} ({1 / r:.2f}x the 1-thread time)")
    if gains:
        add("default (nothing pinned) within 1.05x of pinned 1-thread time, every config",
            "speed-up over 1 thread: " + ", ".join(gains), not worse)
    for config in ("charlm_batched", "medium", "large"):
        r = ratio(cells.get((config, fb, "cyrnn-cython", "default")),
                  cells.get((config, fb, "cyrnn-cython", 1)))
        if r is not None:
            add(f"{config}: default >= 1.5x faster than pinned 1-thread", f"{r:.2f}x", r >= 1.5)
    return lines


STACKS_INTRO = """\
Stacked and bidirectional models of the sizes above (`bench/test_compare.py::test_compare_stack`,
same timing and thread control as the tables above, in the same run): cyrnn's
`RNN(..., num_layers=L, bidirectional=D == 2)`; torch's `nn.RNN(I, H, num_layers=L,
bidirectional=D == 2)` + `nn.Linear(D*H, O)` (same embedding and losses as above); JAX one
`lax.scan` per layer and direction (`reverse=True` for the reverse one) under `jax.jit`, with
`jax.value_and_grad`. Layer `l > 0` reads the `D*H` outputs of the layer below (forward and
reverse concatenated) and the head reads the last layer's `D*H`. cyrnn is checked against torch
(loss, outputs, every gradient) and torch and JAX against cyrnn before timing. FLOPs: per layer
and direction `2*T*B*(I_l*H + H*H)` with `I_0 = I` (0 for tokens) and `I_l = D*H` above, plus the
head `2*T*B*D*H*O`; forward+backward `3*F` less layer 0's input gradient `2*T*B*I*H*D` (dense).
**cyrnn / 1-layer** is cyrnn's time over its own time for the one-layer config of the same sizes
(same run, same thread setting; `-` when that row was not run): what the stack costs against
one layer.
"""


def stacks_table(cells, threads):
    head = ["config", "layers", "directions", "op", *[f"{p} (ms)" for p in STACK_PEERS],
            "cython / best peer", "cyrnn / 1-layer", "cyrnn GFLOP/s", "GFLOP counted"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for config in STACK_CONFIGS:
        stack = stack_of(config)
        for op in OPS:
            row = [config, str(stack.layers), str(stack.directions), op]
            row += [fmt_ms(cells.get((config, op, p, threads))) for p in STACK_PEERS]
            cy = cells.get((config, op, "cyrnn-cython", threads))
            best, name = best_peer(cells, config, op, threads)
            row.append(f"{fmt_ratio(ratio(cy, best))} ({name})" if best else "-")
            single = cells.get((stack.base, op, "cyrnn-cython", threads))
            row.append("-" if cy is None or single is None else f"{cy['median'] / single['median']:.2f}x")
            g = gflops(cells, config, op, "cyrnn-cython", threads)
            row.append("-" if g is None else f"{g:.1f}")
            row.append(f"{flops(config, op) / 1e9:.3f}")
            lines.append("| " + " | ".join(row) + " |")
    return lines


GATED_INTRO = """\
LSTM and GRU at the six configurations above (`bench/test_compare.py::test_compare_gated`, same
timing, thread control and checks as the Elman tables): **cyrnn-cython** / **cyrnn-numpy**
(`cyrnn.LSTM` / `cyrnn.GRU`, compiled and NumPy twin, `forward` and `loss_and_grad(...,
input_grad=False)`); **torch** (`nn.LSTM` / `nn.GRU` + `nn.Linear`, the same identity embedding
for tokens and the same losses as the Elman peer, `loss.backward()`, no `torch.compile`; on the
CPU torch runs `nn.LSTM` through oneDNN's fused RNN primitive, forward and backward
(`aten::mkldnn_rnn_layer` / `mkldnn_rnn_layer_backward` in torch's profiler), but `nn.GRU`
through ATen's per-step cell ops, differentiated by autograd op by op: torch has no fused CPU GRU,
so its GRU rows are the slower peer by construction); **jax** (one `lax.scan` over PyTorch's cell
equations: LSTM gates `i, f, g, o`, `c = f*c + i*g`, `h = o*tanh(c)`; GRU gates `r, z, n`, linear
before reset, `n = tanh(x W_in^T + b_in + r*(h W_hn^T + b_hn))`, `h = (1-z)*n + z*h`; input
projection and head outside the scan, `jax.jit(jax.value_and_grad(...))`). All start from cyrnn's
`seed=0` weights (`Wxh (G, I)`, `Whh (G, H)`, `bh (G,)`, GRU's `bhn (H,)`; torch's `bias_ih`
carries `bh`, `bias_hh` is zero but for GRU's n-part, `bhn`); before timing, cyrnn is checked
against torch and torch, JAX and the twin against cyrnn (loss 1e-4, every gradient 1e-3,
outputs 1e-4, relative).

FLOPs counted (matrix products only, the gates' elementwise work is not counted), with
`G = 4H` (LSTM) or `3H` (GRU): forward `F = 2*T*B*(I*G + H*G + H*O)` (tokens: no `I*G`, a row
gather), training step (forward+backward) `3*F - 2*T*B*I*G` (dense) or `3*F` (tokens), the same
accounting as the Elman rows with `H` gate rows replaced by `G`. The **GEMM limit** is one NumPy
float32 matmul `(T*B, H) x (H, G)` (`2*T*B*H*G` FLOPs) timed in the same run at the same thread
count; **% of GEMM** is cyrnn's counted GFLOP/s (for the op of the row) over that matmul's
GFLOP/s.
"""

# the gated targets (cyrnn-cython, training step = forward+backward, median)
GATED_SPEED_TARGETS = {"charlm": 2.0, "small": 2.0, "long": 2.0, "charlm_batched": 1.3,
                       "medium": 1.3, "large": 1.15}  # x the best peer at 1 thread
GATED_GEMM_TARGETS = {"medium": 0.75, "large": 0.75}  # fraction of the GEMM limit at 1 thread
GATED_TWIN_TARGETS = {"charlm": 4.0}  # x the NumPy twin at 1 thread


def gemm_cell(cells, gconfig, threads):
    return cells.get((gconfig, "matmul", "numpy-matmul", threads))


def gemm_gflops(cells, gconfig, threads):
    cell = gemm_cell(cells, gconfig, threads)
    if cell is None:
        return None
    M, K, N = machine_limit_shape(gconfig)
    return 2 * M * K * N / cell["median"] / 1e9


def gated_table(cells, threads):
    head = ["config", "cell", "op", *[f"{p} (ms)" for p in GATED_PEERS], "cython / best peer",
            "cython / numpy twin", "cyrnn GFLOP/s", "GEMM (ms)", "GEMM GFLOP/s", "cyrnn % of GEMM"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for config in CONFIGS:
        for cell_name in CELLS:
            g_config = f"{config}_{cell_name}"
            for op in OPS:
                row = [config, cell_name.upper(), "training step" if op != "forward" else op]
                row += [fmt_ms(cells.get((g_config, op, p, threads))) for p in GATED_PEERS]
                cy = cells.get((g_config, op, "cyrnn-cython", threads))
                best, name = best_peer(cells, g_config, op, threads)
                row.append(f"{fmt_ratio(ratio(cy, best))} ({name})" if best else "-")
                row.append(fmt_ratio(ratio(cy, cells.get((g_config, op, "cyrnn-numpy", threads)))))
                g = gflops(cells, g_config, op, "cyrnn-cython", threads)
                m = gemm_gflops(cells, g_config, threads)
                row.append("-" if g is None else f"{g:.1f}")
                row.append(fmt_ms(gemm_cell(cells, g_config, threads)))
                row.append("-" if m is None else f"{m:.1f}")
                row.append("-" if g is None or m is None else f"{100 * g / m:.0f}%")
                lines.append("| " + " | ".join(row) + " |")
    return lines


def gated_twin_table(cells):
    lines = ["| cell | op | threads | cyrnn-cython (ms) | cyrnn-numpy (ms) | cython / numpy twin |",
             "|---|---|---|---|---|---|"]
    for cell_name in CELLS:
        g_config = f"charlm_{cell_name}"
        for op in OPS:
            for threads in THREAD_SETTINGS:
                cy = cells.get((g_config, op, "cyrnn-cython", threads))
                tw = cells.get((g_config, op, "cyrnn-numpy", threads))
                if cy is None and tw is None:
                    continue
                lines.append(f"| {cell_name.upper()} | {op} | {threads} | {fmt_ms(cy)} | {fmt_ms(tw)} | "
                             f"{fmt_ratio(ratio(cy, tw))} |")
    return lines


def gated_targets(cells):
    fb = "forward+backward"
    lines = ["| cell | target | measured | met |", "|---|---|---|---|"]
    for cell_name in CELLS:
        def add(text, value, ok):
            lines.append(f"| {cell_name.upper()} | {text} | {value} | {'yes' if ok else 'no'} |")

        for config, goal in GATED_SPEED_TARGETS.items():
            g_config = f"{config}_{cell_name}"
            cy = cells.get((g_config, fb, "cyrnn-cython", 1))
            best, name = best_peer(cells, g_config, fb, 1)
            r = ratio(cy, best)
            if r is None:
                add(f"{config}: >= {goal}x best peer (1 thread)", "not measured", False)
            else:
                add(f"{config}: >= {goal}x best peer (1 thread)", f"{r:.2f}x ({name})", r >= goal)
        for config, goal in GATED_GEMM_TARGETS.items():
            g_config = f"{config}_{cell_name}"
            g, m = gflops(cells, g_config, fb, "cyrnn-cython", 1), gemm_gflops(cells, g_config, 1)
            if g is None or m is None:
                add(f"{config}: >= {goal:.0%} of the GEMM limit (1 thread)", "not measured", False)
            else:
                add(f"{config}: >= {goal:.0%} of the GEMM limit (1 thread)",
                    f"{g / m:.0%} ({g:.1f} of {m:.1f} GFLOP/s)", g / m >= goal)
        for op, what in ((fb, "training step"), ("forward", "forward (not a target, shown)")):
            behind, seen = [], 0
            for config in CONFIGS:
                g_config = f"{config}_{cell_name}"
                cy = cells.get((g_config, op, "cyrnn-cython", 2))
                best, name = best_peer(cells, g_config, op, 2)
                r = ratio(cy, best)
                if r is None:
                    continue
                seen += 1
                if r < 1:
                    behind.append(f"{config} ({r:.2f}x vs {name})")
            if not seen:
                continue
            text = "slower in: " + ", ".join(behind) if behind else f"none slower ({seen} configs)"
            if op == fb:
                add("never slower than the best peer at 2 threads (training step)", text, not behind)
            else:
                lines.append(f"| {cell_name.upper()} | {what}: never slower than the best peer at 2 threads "
                             f"| {text} | {'(yes)' if not behind else '(no)'} |")
        for config, goal in GATED_TWIN_TARGETS.items():
            g_config = f"{config}_{cell_name}"
            r = ratio(cells.get((g_config, fb, "cyrnn-cython", 1)), cells.get((g_config, fb, "cyrnn-numpy", 1)))
            if r is None:
                add(f"{config}: >= {goal}x the NumPy twin (1 thread)", "not measured", False)
            else:
                add(f"{config}: >= {goal}x the NumPy twin (1 thread)", f"{r:.2f}x", r >= goal)
    return lines


def gated_section(cells):
    out = ["## Gated cells", "", GATED_INTRO]
    for threads in THREAD_SETTINGS:
        out += [f"### Gated cells, {thread_label(threads)}: median time (ms), cyrnn's ratios and "
                "the GEMM limit", ""]
        out += gated_table(cells, threads)
        out.append("")
    out += ["### Gated cells: cyrnn against its NumPy twin at charlm (B=1)", ""]
    out += gated_twin_table(cells)
    out += ["", "### Gated cells: targets (cyrnn-cython, training step = forward+backward, median; "
            "best peer = faster of torch and jax)", ""]
    out += gated_targets(cells)
    out.append("")
    return out


def checks_table(meta):
    lines = ["| config | peer | loss rel. err. | worst gradient rel. err. | output rel. err. |",
             "|---|---|---|---|---|"]
    for config in (*CONFIGS, *STACK_CONFIGS, *GATED_CONFIGS):
        for peer in PEERS:
            check = meta["checks"].get((config, peer))
            if check is None:
                continue
            worst = max(check["grad_rel_err"].items(), key=lambda kv: kv[1])
            lines.append(f"| {config} | {peer} | {check['loss_rel_err']:.1e} | "
                         f"{worst[1]:.1e} ({worst[0]}) | {check['output_rel_err']:.1e} |")
    return lines


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("json", nargs="+")
    parser.add_argument("--max-foreign", type=float, default=0.3,
                        help="runs with more cores busy elsewhere are used only when no other run exists")
    parser.add_argument("--gated-only", action="store_true",
                        help="only the LSTM / GRU section (for a run of pytest -k gated)")
    parser.add_argument("--title", default="cyrnn's LSTM and GRU against PyTorch and JAX",
                        help="heading of the --gated-only page")
    parser.add_argument("--note", default="", help="a paragraph put under the --gated-only heading")
    args = parser.parse_args(argv)
    cells, meta = load(args.json, args.max_foreign)
    machine = meta["machine_info"] or {}
    versions = meta["versions"] or {}
    configs = "\n".join(
        f"| {name} | {c.B} | {c.T} | {f'{c.I} tokens' if c.tokens else c.I} | {c.H} | {c.O} |"
        for name, c in CONFIGS.items())
    has_gated = any(key[0] in GATED_CONFIGS for key in cells)
    if args.gated_only:
        out = [f"# {args.title}", ""]
        if args.note:
            out += [args.note, ""]
        out += ["| config | B | T | input | H | O |", "|---|---|---|---|---|---|", configs, ""]
        out += gated_section(cells)
        out += ["## Agreement with cyrnn (same weights, checked before timing)", "",
                "Relative errors (Frobenius norm for arrays) against cyrnn's cython backend; cyrnn's own "
                "row is against torch. A peer outside loss 1e-4, gradients 1e-3 or outputs 1e-4 "
                "fails its test and is not timed.", ""]
        out += checks_table(meta)
        out += run_section(args, cells, meta, machine, versions, GATED_RUN_COMMAND, "--gated-only ")
        print("\n".join(out))
        return
    out = [INTRO.format(configs=configs), "## Results", ""]
    for threads in THREAD_SETTINGS:
        out += [f"### {thread_label(threads)}: median time (ms) and cyrnn's ratios", ""]
        out += main_table(cells, threads)
        out += ["", f"### {thread_label(threads)}: forward+backward GFLOP/s "
                    "(and % of the machine limit)", ""]
        out += gflops_table(cells, threads)
        out.append("")
    if any(key[0] in STACK_CONFIGS for key in cells):
        out += ["## Stacks", "", STACKS_INTRO]
        for threads in THREAD_SETTINGS:
            out += [f"### Stacks, {thread_label(threads)}: median time (ms) and cyrnn's ratios", ""]
            out += stacks_table(cells, threads)
            out.append("")
    if has_gated:
        out += gated_section(cells)
    out += ["## Targets (forward+backward, float32, median; best peer = faster of torch and jax)", ""]
    out += targets(cells)
    out += ["", "## Agreement with cyrnn (same weights, checked before timing)", "",
            "Relative errors (Frobenius norm for arrays) against cyrnn's cython backend; cyrnn's own "
            "row is against the naive loop (against torch for the stacks). A peer outside loss 1e-4, gradients 1e-3 or outputs 1e-4 "
            "fails its test and is not timed.", ""]
    out += checks_table(meta)
    out += run_section(args, cells, meta, machine, versions, RUN_COMMAND, "")
    print("\n".join(out))


def run_section(args, cells, meta, machine, versions, run_command, report_flags):
    out = []
    loaded = sorted((k for k, c in cells.items() if c["loaded"]), key=lambda k: tuple(map(str, k)))
    foreign = sorted(meta["foreign"])
    dropped = sum(f >= args.max_foreign for f in foreign) - sum(c["all_runs"] for c in cells.values() if c["loaded"])
    runs = sorted({c["all_runs"] for c in cells.values()})
    out += [
        "",
        "## Run",
        "",
        f"- Runs merged: {len(args.json)} ({', '.join(str(d) for d in meta['datetime'])}); "
        f"benchmarks per key: {runs}. A cell is the median over runs of each run's median, "
        f"using runs in which other processes kept < {args.max_foreign} cores busy.",
        f"- Foreign load (cores kept busy by other processes while a benchmark was timed, from "
        f"/proc/stat), over all {len(foreign)} measurements: median {statistics.median(foreign):.2f}, "
        f"max {foreign[-1]:.2f} (the machine has {versions.get('cpu_count', '?')} CPUs); "
        f"{dropped} measurements above {args.max_foreign} were set aside because cleaner runs of the "
        f"same benchmark exist. Cells measured only under more than "
        f"{args.max_foreign} (marked `*`): {len(loaded)} of {len(cells)}"
        + ("" if not loaded or len(loaded) > 20 else ": " + ", ".join(f"{c} {o} {p} {t}" for c, o, p, t in loaded))
        + ".",
        f"- Machine: {machine.get('cpu', {}).get('brand_raw', '?')}, "
        f"{versions.get('cpu_count', '?')} CPUs, {machine.get('system', '')} {machine.get('release', '')}; "
        f"Python {versions.get('python', machine.get('python_version', '?'))}.",
        f"- Versions: numpy {versions.get('numpy')}, scipy {versions.get('scipy')}, "
        f"torch {versions.get('torch', 'absent')}, jax {versions.get('jax', 'absent')} "
        f"(jaxlib {versions.get('jaxlib', 'absent')}), cyrnn {versions.get('cyrnn')} "
        f"({versions.get('cyrnn_backend_info', {}).get('blas')}).",
        "- cyrnn's own SIMD code on this machine (`cyrnn.backend_info()['simd']`): " + (
            "product kernel {}, elementwise build {}.".format(
                "in use while BLAS has one thread" if simd.get("own_product_kernel") else "absent (BLAS only)",
                simd.get("elementwise"))
            if (simd := (versions.get("cyrnn_backend_info") or {}).get("simd")) else "not recorded."),
        "- cyrnn build(s) measured: " + "; ".join(
            f"{', '.join(f'{k}={v}' for k, v in json.loads(b).items())} ({', '.join(sorted(p))})"
            for b, p in meta["builds"].items()) + ".",
        f"- XLA_FLAGS: {versions.get('XLA_FLAGS')!r}.",
        "- Thread control per peer: " + "; ".join(
            f"{peer} {threads}: {note}" for (peer, threads), note in
            sorted(meta["threads_note"].items(), key=lambda kv: (kv[0][0], str(kv[0][1])))
            if peer in ("torch", "jax", "cyrnn-cython")) + "; NumPy/SciPy BLAS (and torch's OpenMP): threadpoolctl.",
        "",
        "BLAS and OpenMP libraries loaded (`threadpoolctl.threadpool_info()` inside the limit):",
        "",
        "| threads | library | version | threading | architecture | num_threads |",
        "|---|---|---|---|---|---|",
    ]
    for threads, info in sorted(meta["threadpool_info"].items(), key=lambda kv: str(kv[0])):
        for lib in info:
            out.append(f"| {threads} | {lib.get('filepath', '').rsplit('/', 1)[-1]} | {lib.get('version') or '-'} | "
                       f"{lib.get('threading_layer', '')} | {lib.get('architecture', '')} | "
                       f"{lib.get('num_threads')} |")
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    paths = [os.path.relpath(p, repo) if os.path.abspath(p).startswith(repo + os.sep) else os.path.abspath(p)
             for p in args.json]
    target = "bench/GATED.md" if report_flags else "bench/COMPARE.md"
    out += ["", "Reproduce (from the repository root, with the extension built in place: one pytest "
            "run per JSON file, run one after another, then this report):", "", "```bash",
            *(run_command.format(path=p) for p in paths),
            f"python bench/compare_report.py {report_flags}{' '.join(paths)} > {target}", "```"]
    if not report_flags:
        out += ["", "## Gated cells and normalized recurrences", "",
                "The LSTM and GRU rows (forward and training step, 1 and 2 threads and nothing "
                "pinned, against torch's `nn.LSTM` / `nn.GRU` and JAX) are in `bench/GATED.md`; "
                "the cost of `norm=\"layer\"` / `\"batch\"` over the plain step, and the "
                "layer-normed cells against the same model as a per-step PyTorch loop, in "
                "`bench/NORMS.md` (`bench/test_norms.py`)."]
    return out


if __name__ == "__main__":
    main()
