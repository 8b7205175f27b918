"""Re-time a dense and a compressed bundle, interleaved, on a quiet machine.

    python -m benchmarks.remeasure_speed THREADS DENSE_BUNDLE COMPRESSED_BUNDLE [C H W]
"""
import json
import sys

import torch

from idap.bundle import load_bundle, read_bundle_info
from idap.measure.speed import measure_speed


def main(argv: list[str]) -> None:
    threads, dense_dir, compressed_dir = int(argv[0]), argv[1], argv[2]
    torch.set_num_threads(threads)
    shape = tuple(read_bundle_info(dense_dir)["architecture"]["input_shape"])
    dense, compressed = load_bundle(dense_dir), load_bundle(compressed_dir)
    r = measure_speed({"dense": dense, "compressed": compressed}, shape, rounds=7, repeats=50)
    out = {k: {x: round(v[x], 3) for x in ("latency_ms_b1", "throughput_b64")} for k, v in r.items()}
    out["speedup_b1"] = round(r["dense"]["latency_ms_b1"] / r["compressed"]["latency_ms_b1"], 2)
    out["throughput_gain_b64"] = round(r["compressed"]["throughput_b64"] / r["dense"]["throughput_b64"], 2)
    out["threads"] = threads
    print(json.dumps(out))


if __name__ == "__main__":
    main(sys.argv[1:])
