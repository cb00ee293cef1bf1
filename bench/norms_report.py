"""Markdown report of bench/test_norms.py: ``python bench/norms_report.py run.json > bench/NORMS.md``."""
import json
import sys

VARIANTS = ("plain", "layer", "batch", "layer-reg", "layer-numpy", "torch-loop",
            "torch-cell-loop")
# from the gemm-limit rows: the step's matrix products at the rate of one large product


def main(path):
    with open(path) as fh:
        run = json.load(fh)
    times, info = {}, {}
    for bench in run["benchmarks"]:
        e = bench["extra_info"]
        key = (e["config"], e["cell"], str(e["threads"]))
        median = bench["stats"]["median"]
        if e["variant"] == "gemm-limit":
            # the time of the step's matrix products at this product's rate
            times.setdefault(key, {})["limit"] = e["step_flops"] / (e["flops"] / median) * 1e3
        else:
            times.setdefault(key, {})[e["variant"]] = median * 1e3
        info.setdefault(str(e["threads"]), e.get("threadpool_info"))
        load = e.get("foreign_cores")
        if load is not None:
            info.setdefault("load", []).append(load)
    print("# Normalized recurrences: cost of the normalization, and against a PyTorch loop\n")
    print("Training step (`loss_and_grad(..., input_grad=False)`), float32, median ms; "
          "`bench/test_norms.py` (its docstring says what each row runs). Ratios from the same "
          "run: **layer / plain** is what layer normalization costs (target <= 1.25), "
          "**torch-loop / layer** how much faster cyrnn's layer-normed cell is than the same "
          "model as a per-step PyTorch loop, **torch-cell-loop / layer** than the loop the issue "
          "names (`nn.LSTMCell` and `nn.LayerNorm` of its output: a cheaper, different model); "
          "target >= 5 for the latter. **GEMM limit** is the time of the step's matrix products "
          "alone at the rate NumPy's BLAS reaches on one product of the recurrent shape (T*B, H) "
          "x (H, G) in the same run: an estimate of the fastest the step can run here (cyrnn's "
          "own kernel beats it at some shapes), so **torch-cell-loop / limit** estimates the most "
          "any implementation could gain over that loop."
          "\n")
    print("| config | cell | threads | " + " | ".join(f"{v} (ms)" for v in VARIANTS)
          + " | GEMM limit (ms) | layer / plain | batch / plain | layer-reg / layer "
          "| numpy / compiled (layer) "
          "| torch-loop / layer | torch-cell-loop / layer | torch-cell-loop / plain "
          "| torch-cell-loop / limit |")
    print("|" + "---|" * (3 + len(VARIANTS) + 9))
    for (config, cell, threads), row in sorted(times.items()):
        cells = [f"{row[v]:.3g}" if v in row else "-" for v in VARIANTS + ("limit",)]

        def ratio(a, b):
            return f"{row[a] / row[b]:.2f}x" if a in row and b in row else "-"

        print(f"| {config} | {cell} | {threads} | " + " | ".join(cells) + " | "
              + " | ".join([ratio("layer", "plain"), ratio("batch", "plain"),
                            ratio("layer-reg", "layer"),
                            ratio("layer-numpy", "layer"), ratio("torch-loop", "layer"),
                            ratio("torch-cell-loop", "layer"),
                            ratio("torch-cell-loop", "plain"),
                            ratio("torch-cell-loop", "limit")]) + " |")
    loads = info.get("load", [])
    if loads:
        print(f"\nForeign load while timing (cores busy in other processes): median "
              f"{sorted(loads)[len(loads) // 2]:.2f}, max {max(loads):.2f} (2 CPUs).")
    print("\nBLAS libraries (threadpoolctl) at one thread:\n")
    print("| library | version | architecture | num_threads |")
    print("|---|---|---|---|")
    for lib in info.get("1") or []:
        print(f"| {lib.get('filepath', '').rsplit('/', 1)[-1]} | {lib.get('version')} | "
              f"{lib.get('architecture', '')} | {lib.get('num_threads')} |")
    print("\nReproduce:\n\n```bash\nPYTHONPATH=src env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE "
          "python -m pytest bench/test_norms.py -p no:cacheprovider --benchmark-json=/tmp/norms.json\n"
          "python bench/norms_report.py /tmp/norms.json > bench/NORMS.md\n```")


if __name__ == "__main__":
    main(sys.argv[1])
