"""Turn a pytest-benchmark JSON file from bench/test_bench.py into the markdown of RESULTS.md."""
import json
import platform
import sys

from test_bench import CONFIGS


def main(path):
    with open(path) as fh:
        data = json.load(fh)
    times = {}
    info = simd = None
    for bench in data["benchmarks"]:
        extra = bench["extra_info"]
        if "op" in extra:
            times[extra["config"], extra["op"], extra["backend"]] = bench["stats"]["median"]
        info = info or extra.get("threadpool_info")
        simd = simd or extra.get("cyrnn_simd")
    lines = [
        "| config | B | T | I | H | O | op | NumPy (ms) | Cython (ms) | Cython speed-up |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for config, (B, T, I, H, O, tokens) in CONFIGS.items():
        for op in ("forward", "forward+backward"):
            numpy_t = times.get((config, op, "numpy"))
            cython_t = times.get((config, op, "cython"))
            if numpy_t is None or cython_t is None:
                continue
            inputs = f"{I} tokens" if tokens else str(I)
            lines.append(
                f"| {config} | {B} | {T} | {inputs} | {H} | {O} | {op} | {numpy_t * 1e3:.3f} | "
                f"{cython_t * 1e3:.3f} | {numpy_t / cython_t:.2f}x |"
            )
    generation = [(c, n) for c, n in (("charlm-H100", 500), ("charlm-H256", 500))
                  if (c, "generate", "cython") in times and (c, "generate", "numpy") in times]
    if generation:
        lines += [
            "",
            "Generation (`model.sample`, V = 65, 500 characters per call), characters per second:",
            "",
            "| config | NumPy (chars/s) | Cython (chars/s) | Cython speed-up |",
            "|---|---|---|---|",
        ]
        for config, n in generation:
            numpy_t, cython_t = times[config, "generate", "numpy"], times[config, "generate", "cython"]
            lines.append(f"| {config} | {n / numpy_t:,.0f} | {n / cython_t:,.0f} | "
                         f"{numpy_t / cython_t:.2f}x |")
    memory = [b["extra_info"] for b in data["benchmarks"] if "peak_bytes" in b["extra_info"]]
    if memory:
        lines += [
            "",
            "Peak memory of one `loss_and_grad` (tracemalloc, parameters included) against the "
            "analytic minimum (parameters, gradients, states, one output block, the input gradient):",
            "",
            "| config | backend | peak (MB) | minimum (MB) | ratio |",
            "|---|---|---|---|---|",
        ]
        for m in memory:
            lines.append(f"| {m['config']} | {m['backend']} | {m['peak_bytes'] / 1e6:.2f} | "
                         f"{m['minimum_bytes'] / 1e6:.2f} | {m['ratio']:.2f} |")
    machine = data.get("machine_info", {})
    lines += [
        "",
        f"Median of repeated runs, float32, BLAS limited to one thread. Python "
        f"{machine.get('python_version', platform.python_version())}, "
        f"{machine.get('cpu', {}).get('brand_raw', platform.processor() or 'unknown CPU')}.",
        "",
        "cyrnn's own SIMD code during the run (`cyrnn.backend_info()['simd']`): "
        + (f"product kernel {'in use' if simd['own_product_kernel'] else 'absent (BLAS only)'}, "
           f"elementwise build {simd['elementwise']}, BLAS threads {simd['blas_threads']}."
           if simd else "not recorded."),
        "",
        "BLAS libraries loaded during the run (`threadpoolctl.threadpool_info()`):",
        "",
        "| library | version | threading | architecture (kernel) | threads during run |",
        "|---|---|---|---|---|",
    ]
    for lib in info or []:
        lines.append(
            f"| {lib.get('filepath', '').rsplit('/', 1)[-1]} | {lib.get('version')} | "
            f"{lib.get('threading_layer', '')} | {lib.get('architecture', '')} | "
            f"{lib.get('num_threads')} |"
        )
    print("\n".join(lines))


if __name__ == "__main__":
    main(sys.argv[1])
