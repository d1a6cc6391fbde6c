"""Measure how far the float32 RoPE path (transformers' and vLLM's) is from the float64 spec, by position.

For each base and each position p = 2**k, the float32 angle p * theta_i
(positions, frequencies and the product each rounded to float32, as
``position_ids.float() @ inv_freq.float()`` computes it) is compared with the
float64 angle, over every pair i of a head_dim-128 rotary embedding and the
64 positions p .. p + 63.  Also reported: the largest error of cos (what
reaches the scores), and whether float32 still holds every integer position
(it does up to 2**24).  Prints a Markdown table (docs/limits.md holds its
output).

    python scripts/position_precision.py
"""

from __future__ import annotations

import numpy as np

import yarnref

HEAD_DIM = 128
BASES = (1e4, 1e6)
EXPONENTS = (16, 17, 18, 19, 20, 24, 25)


def measure(base: float, exponent: int) -> tuple[float, float, bool]:
    """``(max angle error in rad, max cos error, every position exact in float32)`` for positions 2**e .. 2**e + 63."""
    inv_freq = yarnref.base_inv_freq(HEAD_DIM, base)
    positions = 2**exponent + np.arange(64)
    exact = yarnref.rope_angles(inv_freq, positions)
    fp32 = yarnref.rope_angles(inv_freq, positions, precision="float32")
    cos_exact, _ = yarnref.rope_cos_sin(inv_freq, positions)
    cos_fp32, _ = yarnref.rope_cos_sin(inv_freq, positions, precision="float32")
    positions_exact = bool(np.all(positions.astype(np.float32).astype(np.int64) == positions))
    return float(np.abs(fp32 - exact).max()), float(np.abs(cos_fp32 - cos_exact).max()), positions_exact


def main() -> None:
    print("| position | base | max angle error (rad) | max cos error | positions exact in float32 |")
    print("|---|---|---|---|---|")
    for exponent in EXPONENTS:
        for base in BASES:
            angle, cos, exact = measure(base, exponent)
            print(f"| 2^{exponent} | {base:g} | {angle:.3g} | {cos:.3g} | {'yes' if exact else 'no'} |")


if __name__ == "__main__":
    main()
