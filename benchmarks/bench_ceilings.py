"""The two hardware ceilings of this run: device-to-device copy bandwidth and bf16 GEMM rate.

Writes ``ceilings.json`` (read by the other benchmarks through ``--ceilings``),
so that every percentage in one run is relative to numbers measured in that run.
"""

from __future__ import annotations

import json
from pathlib import Path

from common import environment, measure_ceilings, parse_args, pick_device

if __name__ == "__main__":
    args = parse_args("ceilings")
    device = pick_device(args.quick)
    ceilings = measure_ceilings(device, args.quick)
    ceilings["env"] = environment()
    path = Path(args.out) / "ceilings.json"
    path.write_text(json.dumps(ceilings, indent=1))
    l2 = f", L2 read {ceilings['l2_read_tbps']:.2f} TB/s" if "l2_read_tbps" in ceilings else ""
    print(f"[ceilings] copy {ceilings['copy_tbps']:.2f} TB/s, GEMM {ceilings['gemm_tflops']:.0f} TFLOP/s ({ceilings['gemm_shape']}){l2} -> {path}")
