"""This build against an earlier one, side by side: the single-layer training step of every
configuration of ``peers.CONFIGS`` at one BLAS thread and with nothing pinned.

Two builds of cyrnn cannot share a process (one module name), so each measurement is a fresh
process importing one build (``PYTHONPATH``), and the builds alternate round by round so that
the machine's load falls on both alike. The table gives each build's median over the rounds of
its per-process medians, and the ratio previous / this (above 1: this build is faster).

    git worktree add ../previous <commit> && (cd ../previous && python setup.py build_ext --inplace)
    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE \\
        python bench/previous_build.py ../previous/src src --rounds 5 > bench/PREVIOUS.md
"""
import argparse
import json
import os
import subprocess
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))

# one process: every configuration's training step, timed; prints {"config/threads": seconds}
MEASURE = r"""
import json, sys, time
import numpy as np
from threadpoolctl import threadpool_limits
sys.path.insert(0, HERE)
import cyrnn
from peers import CONFIGS

def median_time(step, seconds=1.5, least=5):
    step()
    times, start = [], time.perf_counter()
    while len(times) < least or time.perf_counter() - start < seconds:
        t = time.perf_counter()
        step()
        times.append(time.perf_counter() - t)
    return float(np.median(times))

results = {}
for name, c in CONFIGS.items():
    if ONLY and name not in ONLY:
        continue
    rng = np.random.default_rng(0)
    if c.tokens:
        x, y = rng.integers(0, c.I, (c.T, c.B)), rng.integers(0, c.O, (c.T, c.B))
    else:
        x = rng.standard_normal((c.T, c.B, c.I)).astype(np.float32)
        y = rng.standard_normal((c.T, c.B, c.O)).astype(np.float32)
    for threads in (1, None):
        model = cyrnn.RNN(c.I, c.H, c.O, output="softmax" if c.tokens else "linear", seed=0,
                          threads=threads)
        with threadpool_limits(threads):
            results[f"{name}/{threads or 'default'}"] = median_time(
                lambda: model.loss_and_grad(x, y, input_grad=False))
print(json.dumps(results))
""".replace("HERE", repr(HERE))


def measure_script(only):
    return MEASURE.replace("ONLY", repr(tuple(only)))


def measure(src, only=()):
    env = dict(os.environ, PYTHONPATH=os.path.abspath(src))
    out = subprocess.run([sys.executable, "-c", measure_script(only)], env=env,
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("previous", help="src/ of the earlier build (built in place)")
    parser.add_argument("current", help="src/ of this build (built in place)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--configs", nargs="*", default=(), help="only these (default: all)")
    args = parser.parse_args()
    runs = {"previous": [], "current": []}
    for _ in range(args.rounds):
        for label in ("previous", "current"):
            runs[label].append(measure(getattr(args, label), args.configs))
    from threadpoolctl import threadpool_info

    print("# This build against the previous one: single-layer training step\n")
    print(f"Median over {args.rounds} alternating rounds (a fresh process per build and round; "
          "each process times every configuration for about 1.5 s). Ratio = previous / this: "
          "above 1, this build is faster.\n")
    print("| config | threads | previous (ms) | this build (ms) | ratio |")
    print("|---|---|---|---|---|")
    for key in runs["current"][0]:
        old = np.median([r[key] for r in runs["previous"]]) * 1e3
        new = np.median([r[key] for r in runs["current"]]) * 1e3
        name, threads = key.split("/")
        print(f"| {name} | {threads} | {old:.3f} | {new:.3f} | {old / new:.3f} |")
    print("\nBLAS (threadpoolctl, this process):\n")
    for info in threadpool_info():
        print(f"- {info.get('internal_api')} {info.get('version')} {info.get('architecture')}, "
              f"{info.get('num_threads')} threads")


if __name__ == "__main__":
    main()
