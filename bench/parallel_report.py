"""bench/PARALLEL.md from the JSON of bench/test_parallel.py (see its docstring)."""
import json
import sys


def main(path):
    with open(path) as f:
        data = json.load(f)
    rows = {b["name"]: b for b in data["benchmarks"]}
    serial = rows.get("test_threads[1]")
    print("# fit_many throughput\n")
    print("8 character models (V=65, H=256, 32 sequences x 50 steps per update, 60 updates each), "
          "float32, compiled backend. Times are the best of 3 rounds (whole `fit_many` call, "
          "pool start-up included).\n")
    print("| setting | seconds | updates/s | vs n_jobs=1 | weights bit-identical to serial "
          "| 1-min load average before, after |")
    print("|---|---:|---:|---:|---|---|")
    for name in ("test_threads[1]", "test_threads[2]", "test_joblib_processes", "test_dask"):
        b = rows.get(name)
        if b is None:
            continue
        info, best = b["extra_info"], b["stats"]["min"]
        ratio = serial["stats"]["min"] / best if serial else float("nan")
        print(f"| {info['setting']} | {best:.2f} | {info['updates_per_second']:.0f} | "
              f"{ratio:.2f}x | {info['bit_identical']} | "
              f"{', '.join(f'{v:.1f}' for v in info.get('load_average', ()))} |")
    trip = rows.get("test_dask_round_trip_per_model")
    if trip:
        info = trip["extra_info"]
        print(f"\nDask round trip per model (64 tiny models, one update each, best of 3): "
              f"{1e3 * info['seconds_per_model_dask']:.1f} ms per model on the LocalCluster, "
              f"against {1e3 * info['seconds_per_model_threads']:.2f} ms per model on local "
              f"threads.\n")
    print(f"Machine: {data['machine_info'].get('cpu', {}).get('brand_raw', '?')}, "
          f"{data['machine_info'].get('cpu', {}).get('count', '?')} CPUs; "
          f"{data['datetime']}.\n")
    info = next(iter(rows.values()))["extra_info"].get("threadpool_info", [])
    print("threadpoolctl.threadpool_info() during the runs:\n")
    for lib in info:
        print(f"- {lib.get('internal_api')} {lib.get('version')} ({lib.get('filepath', '').split('/')[-1]}): "
              f"{lib.get('num_threads')} threads, {lib.get('threading_layer')}, "
              f"{lib.get('architecture')}")


if __name__ == "__main__":
    main(sys.argv[1])
