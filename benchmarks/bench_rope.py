"""RoPE application (Su et al., arXiv:2104.09864, Eq. 34) on q and k: the torch backend against transformers' formula.

Shape: q and k each ``(1, 32, 32768, 128)`` bf16 (32768 tokens, 32 heads,
head_dim 128), half-split pairing; the tables for all 32768 positions are
built once beforehand (not timed) and the timed region rotates q and k.

* ``yarnref apply_rope (torch)``: the torch backend's ``apply_rope`` on q and
  on k with float32 ``(seq, 64)`` cos/sin tables from its ``rope_cos_sin``;
* ``transformers formula (eager)``: ``x * cos + rotate_half(x) * sin`` with
  bf16 ``(seq, 128)`` tables, as ``apply_rotary_pos_emb`` computes it;
* ``transformers formula (torch.compile)``: the same function compiled.

The operation is memory-bound: the floor is reading and writing q and k once
(4 * 32768 * 32 * 128 * 2 bytes = 1.07 GB); TB/s count those bytes and are
compared with the device-to-device copy bandwidth measured in the same run.
Outputs are checked for the last 128 tokens of heads 0-1 against the float64
NumPy spec (``yarnref.rope``).
"""

from __future__ import annotations

import numpy as np
import torch

from common import backend_op, compare, main_wrapper, merge_checks, time_fn, use_yarnref_backend

TOKENS, HEADS, HEAD_DIM, THETA = 32768, 32, 128, 500000.0


def rotate_half(x):
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def hf_apply(q, k, cos, sin):
    """transformers' apply_rotary_pos_emb with (seq, head_dim) tables."""
    return q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin


def reference_slice(x, inv_freq, positions):
    """float64 spec rotation of heads 0-1 at ``positions``."""
    from yarnref import rope as spec

    cos, sin = spec.rope_cos_sin(inv_freq, positions)
    xs = x[:, :2, positions].double().cpu().numpy()
    return torch.from_numpy(np.asarray(spec.apply_rope(xs, cos, sin)))


def run(rec):
    device = rec.device
    quick = rec.args.quick
    tokens, heads, d = (256, 2, 64) if quick else (TOKENS, HEADS, HEAD_DIM)
    dtype = torch.bfloat16
    budget = 0.05 if quick else 2.0
    g = torch.Generator(device=device).manual_seed(0)
    q = torch.randn((1, heads, tokens, d), device=device, dtype=dtype, generator=g)
    k = torch.randn((1, heads, tokens, d), device=device, dtype=dtype, generator=g)
    inv_freq = 1.0 / (THETA ** (np.arange(0, d, 2, dtype=np.float64) / d))
    positions = np.arange(tokens)
    check_pos = list(range(tokens - 128, tokens)) if tokens > 128 else list(range(tokens))
    ref_q = reference_slice(q, inv_freq, check_pos)
    nbytes = 4.0 * q.numel() * q.element_size()
    case = f"q,k {tokens} tok x {heads} heads x {d}"

    def check(out_q, out_k):
        # The tables' angles are float32 (ours, and transformers'): the tolerance grows with the position.
        angles = {"op": "rope", "max_position": check_pos[-1], "angle_dtype": "float32"}
        e = compare(out_q[:, :2, check_pos].cpu(), ref_q, **angles)
        ek = compare(out_k[:, :2, check_pos].cpu(), reference_slice(k, inv_freq, check_pos), **angles)
        return merge_checks(e, ek)

    with rec.guard(case, "yarnref apply_rope (torch)"):
        with use_yarnref_backend("torch", device) as be:
            tables = backend_op(be, "rope_cos_sin")
            apply = backend_op(be, "apply_rope")
            cos, sin = tables(torch.as_tensor(inv_freq, dtype=torch.float32, device=device),
                              torch.as_tensor(positions, device=device), precision="float32")

            def ours():
                return apply(q, cos, sin), apply(k, cos, sin)

            err = check(*ours())
            t = time_fn(ours, device, budget_s=budget)
            rec.add(case, "yarnref apply_rope (torch)", timing=t, nbytes=nbytes, err=err, ok=err["ok"],
                    note="float32 (seq, 64) tables")

    freqs = torch.as_tensor(positions, dtype=torch.float32, device=device)[:, None] * torch.as_tensor(inv_freq, dtype=torch.float32, device=device)[None, :]
    emb = torch.cat((freqs, freqs), dim=-1)
    cos_hf, sin_hf = emb.cos().to(dtype), emb.sin().to(dtype)  # transformers casts the tables to the activations' dtype
    with rec.guard(case, "transformers formula (eager)"):
        err = check(*hf_apply(q, k, cos_hf, sin_hf))
        t = time_fn(lambda: hf_apply(q, k, cos_hf, sin_hf), device, budget_s=budget)
        rec.add(case, "transformers formula (eager)", timing=t, nbytes=nbytes, err=err, ok=err["ok"])
    with rec.guard(case, "transformers formula (torch.compile)"):
        compiled = torch.compile(hf_apply, dynamic=False)
        err = check(*compiled(q, k, cos_hf, sin_hf))
        t = time_fn(lambda: compiled(q, k, cos_hf, sin_hf), device, budget_s=budget)
        rec.add(case, "transformers formula (torch.compile)", timing=t, nbytes=nbytes, err=err, ok=err["ok"])
    rec.add_ratios(case, "yarnref apply_rope (torch)")


if __name__ == "__main__":
    main_wrapper("rope", run)
