"""Generate the lesson notebooks from the cell sources in this file.

The notebooks in ``lessons/`` are build products kept in the repository so a
learner can open them directly; this script is their source.  Edit the cells
here, then regenerate::

    python lessons/_build.py            # rewrite every lesson notebook
    python lessons/_build.py --check    # exit 1 if a notebook differs from its source

The notebooks are written without outputs and with deterministic cell ids, so
``git diff`` shows only real changes.  Each lesson imports ``yarnref`` and calls
it: the math lives in the library, never in a notebook.  The test suite
(``tests/test_lessons.py``) executes every lesson, and checks that the
notebooks are up to date with this file.

The cell sources are the lists below, one per lesson, built with :func:`md`
and :func:`code`; :data:`LESSONS` names the notebooks that are built.
"""

from __future__ import annotations

import argparse
import sys
import textwrap
from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

LESSONS_DIR = Path(__file__).resolve().parent


def md(source: str):
    return new_markdown_cell(_dedent(source))


def code(*parts: str):
    """A code cell; several parts (e.g. :data:`GPU_GUARD` and the GPU code) are joined by a blank line."""
    return new_code_cell("\n\n".join(_dedent(part) for part in parts))


def _dedent(source: str) -> str:
    return textwrap.dedent(source).strip("\n")


# A GPU cell runs only where the torch backend has a CUDA device; on CPU it prints why it is skipped.
GPU_GUARD = """
import importlib.util

gpu = False
if importlib.util.find_spec("torch") is not None and "torch" in yarnref.available_backends():
    import torch

    gpu = torch.cuda.is_available()
if not gpu:
    print("No CUDA device for the torch backend here: the GPU cell is skipped.")
"""

# ---------------------------------------------------------------------------------------------
# Lesson 1: RoPE
# ---------------------------------------------------------------------------------------------

LESSON_01 = [
    md(
        r"""
        # Lesson 1: RoPE, the rotary position embedding

        **Paper:** J. Su, Y. Lu, S. Pan, A. Murtadha, B. Wen, Y. Liu, *RoFormer: Enhanced Transformer with
        Rotary Position Embedding*, [arXiv:2104.09864](https://arxiv.org/abs/2104.09864), section 3.

        **Code:** `yarnref/rope.py` (`base_inv_freq`, `rope_cos_sin`, `apply_rope`, `interleaved_to_half`).

        Every long-context method in the next lessons changes one of the things this lesson introduces: the
        frequencies (PI, NTK, YaRN, Llama 3, LongRoPE) or the positions (Dual Chunk Attention). So we start with
        plain RoPE and check its two defining properties with the library.
        """
    ),
    md(
        r"""
        ## Motivation

        Attention compares a query at position $m$ and a key at position $n$ through an inner product. RoFormer
        asks for position encodings $f_q, f_k$ such that this inner product depends on the positions only
        through their difference (Eq. 11):

        $$\langle f_q(\boldsymbol{x}_m, m),\, f_k(\boldsymbol{x}_n, n)\rangle = g(\boldsymbol{x}_m, \boldsymbol{x}_n, m-n).$$

        Its answer: split the $r$ rotated features of $\boldsymbol{q}$ and $\boldsymbol{k}$ into $r/2$ planes and
        rotate plane $i$ by the angle $m\theta_i$, where the frequencies fall geometrically with the base
        $b$ (`rope_theta`, 10000 in the paper; Eq. 15, with the paper's $i$ starting at 1):

        $$\theta_i = b^{-2i/r}, \qquad i = 0, \dots, r/2 - 1.$$

        In each plane (Eq. 13, and the block-diagonal matrix $R_{\Theta,m}$ of Eq. 15):

        $$\begin{pmatrix} x'_a \\ x'_b \end{pmatrix} =
          \begin{pmatrix} \cos m\theta_i & -\sin m\theta_i \\ \sin m\theta_i & \cos m\theta_i \end{pmatrix}
          \begin{pmatrix} x_a \\ x_b \end{pmatrix}.$$

        Rotations compose and are orthogonal, so (Eq. 16)

        $$(R_{\Theta,m}\boldsymbol{q})^\top (R_{\Theta,n}\boldsymbol{k}) = \boldsymbol{q}^\top R_{\Theta,n-m}\,\boldsymbol{k}:$$

        the score depends only on $m - n$. The cheap form every implementation uses (Eq. 34) multiplies
        elementwise by tables of $\cos m\theta_i$ and $\sin m\theta_i$; that is `rope_cos_sin` followed by
        `apply_rope`.
        """
    ),
    code(
        r"""
        %matplotlib inline
        import matplotlib.pyplot as plt
        import numpy as np

        import yarnref

        np.set_printoptions(precision=4, suppress=True)
        rng = np.random.default_rng(0)
        print("yarnref", yarnref.__version__, "| backends usable here:", yarnref.available_backends())
        """
    ),
    md(
        r"""
        ## The frequencies

        `base_inv_freq(r, b)` is Eq. 15: a vector of $r/2$ inverse frequencies (radians per token). The
        *wavelength* $\lambda_i = 2\pi/\theta_i$ is the number of tokens plane $i$ needs for one full turn. With
        Llama 2's head (128 features, $b = 10^4$) the fastest plane turns every 6.3 tokens and the slowest
        every ~54 000 tokens.
        """
    ),
    code(
        r"""
        head_dim, base = 128, 10000.0
        inv_freq = yarnref.base_inv_freq(head_dim, base)  # Eq. 15, shape (r/2,) = (64,)
        wavelength = 2 * np.pi / inv_freq  # tokens per turn of each plane

        print("theta_0..2 =", inv_freq[:3], "   theta_62..63 =", inv_freq[-2:])
        print(f"wavelengths: fastest {wavelength[0]:.2f} tokens, slowest {wavelength[-1]:,.0f} tokens")
        """
    ),
    md(
        r"""
        ## The rotation

        `rope_cos_sin(inv_freq, positions)` returns the tables $\cos p\theta_i$ and $\sin p\theta_i$, each of
        shape `(seq, r/2)`. `apply_rope(x, cos, sin)` rotates the first $r$ features of `x`, shaped
        `(batch, heads, seq, head_dim)` like torch's SDPA. A rotation preserves length, which is the first
        thing to check.
        """
    ),
    code(
        r"""
        seq = 16
        positions = np.arange(seq)
        cos, sin = yarnref.rope_cos_sin(inv_freq, positions)  # each (seq, r/2) = (16, 64)
        x = rng.standard_normal((1, 2, seq, head_dim))  # (batch, heads, seq, head_dim)
        x_rot = yarnref.apply_rope(x, cos, sin)  # pairing="half": plane i = (x[i], x[i + r/2])

        print("cos table:", cos.shape, " rotated:", x_rot.shape)
        assert np.allclose(x_rot[:, :, 0], x[:, :, 0]), "position 0 is the identity"
        assert np.allclose(np.linalg.norm(x_rot, axis=-1), np.linalg.norm(x, axis=-1)), "a rotation keeps norms"
        """
    ),
    md(
        r"""
        ## Check: scores depend only on $m - n$ (Eq. 16)

        Put the *same* query vector $\boldsymbol{q}$ at every position and the same key vector $\boldsymbol{k}$
        at every position. Then the score matrix $S_{mn} = (R_m\boldsymbol{q})^\top(R_n\boldsymbol{k})$ must be
        constant along its diagonals (a Toeplitz matrix), also far from the origin. The helper `at_positions`
        only places a vector at many positions; the rotation is the library's.
        """
    ),
    code(
        r"""
        def at_positions(vec, positions, pairing="half"):
            # The rows of R_p vec for every p in positions: shape (len(positions), head_dim).
            cos, sin = yarnref.rope_cos_sin(inv_freq, positions)
            x = np.broadcast_to(vec, (1, 1, len(positions), vec.size))  # (batch, heads, seq, head_dim)
            return yarnref.apply_rope(x, cos, sin, pairing=pairing)[0, 0]


        q, k = rng.standard_normal(head_dim), rng.standard_normal(head_dim)
        S = at_positions(q, np.arange(64)) @ at_positions(k, np.arange(64)).T  # (64, 64): S[m, n]
        assert np.allclose(S[1:, 1:], S[:-1, :-1], rtol=0, atol=1e-9), "S must be constant along diagonals"

        # The same distance m - n = 4 far away, and a different distance (which must give another score).
        for shift in (0, 1_000, 123_456, 1_000_000):
            s = at_positions(q, [7 + shift]) @ at_positions(k, [3 + shift]).T
            assert np.isclose(s[0, 0], S[7, 3], rtol=0, atol=1e-8), (shift, s[0, 0], S[7, 3])
        assert not np.isclose(S[7, 3], S[7, 2]), "a different distance gives a different score"
        print(f"score at distance 4: {S[7, 3]:.6f} at every shift up to 1,000,000")
        """
    ),
    md(
        r"""
        ## Check: the two pairings are a permutation of each other

        Which two features form a plane is a convention, and the stacks disagree:

        * `"half"` (GPT-NeoX; Llama in Hugging Face transformers; vLLM `is_neox_style=True`): plane $i$ is
          $(x_i, x_{i+r/2})$.
        * `"interleaved"` (GPT-J; Meta's complex-number form; DeepSeek in vLLM and ggml): plane $i$ is
          $(x_{2i}, x_{2i+1})$.

        Both are the same rotation after the permutation $P$ that sends feature $2i \to i$ and
        $2i+1 \to i + r/2$ (`interleaved_to_half`): $\mathrm{interleaved}(x) = P^{-1}\,\mathrm{half}(Px)$. This
        is why a checkpoint can be moved from one convention to the other by permuting the rows of $W_q$ and
        $W_k$ (what transformers' Llama converter does). Using the wrong pairing *without* the permutation
        changes every score, a classic porting bug. Here with partial rotary: only 48 of 64 features rotate.
        """
    ),
    code(
        r"""
        r, d = 48, 64  # rotary dim, head dim (partial rotary factor 0.75)
        cos_p, sin_p = yarnref.rope_cos_sin(yarnref.base_inv_freq(r, base), np.arange(9))  # (9, r/2)
        qs, ks = rng.standard_normal((2, 1, 2, 9, d))  # two (batch, heads, seq, head_dim) arrays

        inter = yarnref.apply_rope(qs, cos_p, sin_p, pairing="interleaved")
        via_half = yarnref.half_to_interleaved(
            yarnref.apply_rope(yarnref.interleaved_to_half(qs, r), cos_p, sin_p, pairing="half"), r
        )
        assert np.allclose(inter, via_half, rtol=0, atol=1e-12), "interleaved = P^-1 half(P x)"
        assert np.array_equal(inter[..., r:], qs[..., r:]), "the features after rotary_dim pass through"

        # Scores: permuting q and k alike keeps them; the wrong pairing alone does not.
        scores_inter = inter @ yarnref.apply_rope(ks, cos_p, sin_p, pairing="interleaved").swapaxes(-1, -2)
        q_half = yarnref.apply_rope(yarnref.interleaved_to_half(qs, r), cos_p, sin_p, pairing="half")
        k_half = yarnref.apply_rope(yarnref.interleaved_to_half(ks, r), cos_p, sin_p, pairing="half")
        scores_perm = q_half @ k_half.swapaxes(-1, -2)
        scores_wrong = yarnref.apply_rope(qs, cos_p, sin_p) @ yarnref.apply_rope(ks, cos_p, sin_p).swapaxes(-1, -2)
        assert np.allclose(scores_inter, scores_perm, rtol=0, atol=1e-12)
        assert not np.allclose(scores_inter, scores_wrong, atol=1e-3)
        print("max |score difference| with the wrong pairing:", float(np.abs(scores_inter - scores_wrong).max()))
        """
    ),
    md(
        r"""
        ## Plot: wavelengths and the long-range decay

        Left: the wavelength of every plane for Llama 2 ($b = 10^4$) and Llama 3 ($b = 5\cdot 10^5$), with
        their training lengths. Planes whose wavelength exceeds the training length never completed a turn in
        training: beyond it they show the model angles it has never seen. That is the problem the next
        lesson's methods solve.

        Right: the score between two all-ones vectors as a function of their distance,
        $\frac{1}{r}(R_\Delta\boldsymbol{1})^\top\boldsymbol{1} = \frac{2}{r}\sum_i \cos(\Delta\,\theta_i)$, the mean
        of the planes' cosines. It oscillates and decays on
        average: RoFormer's long-term decay (section 3.4.3; its Fig. 2 plots an upper bound of this).
        """
    ),
    code(
        r"""
        fig, (ax_w, ax_d) = plt.subplots(1, 2, figsize=(9, 3.2))
        for b, ctx, color, model in ((1e4, 4096, "C0", "Llama 2"), (5e5, 8192, "C1", "Llama 3")):
            lam = 2 * np.pi / yarnref.base_inv_freq(head_dim, b)
            ax_w.semilogy(lam, color=color, label=f"{model}: base {b:g}")
            ax_w.axhline(ctx, color=color, ls="--", lw=0.8, label=f"{model}: trained on {ctx}")
        ax_w.set(xlabel="plane i", ylabel="wavelength (tokens)", title=r"Wavelengths $2\pi/\theta_i$")
        ax_w.legend(fontsize=7, loc="upper left")

        distance = np.arange(0, 20_000)
        ones = np.ones(head_dim)
        decay = at_positions(ones, distance) @ ones / head_dim  # (R_d 1) . 1 / r = score at distance d
        ax_d.semilogx(distance[1:], decay[1:], lw=0.6)
        ax_d.set(xlabel="distance m - n", ylabel="score / r", title="Long-term decay (base 1e4)")
        fig.tight_layout()
        plt.show()
        """
    ),
    md(
        r"""
        ## Precision: where float32 angles go wrong

        Real stacks compute the angle $p\,\theta_i$ in float32 (`position_ids.float() @ inv_freq`). The angle of
        the fastest plane at position $p$ is $p$ radians, and float32 has only 24 bits, so at $p \approx 10^6$
        the angle is off by up to half an ulp of $10^6$, about 0.03 rad. `precision="float32"` reproduces that
        rounding; lesson 2 measures it for real models.
        """
    ),
    code(
        r"""
        p = np.array([1_000, 100_000, 1_000_000])
        exact = yarnref.rope_angles(inv_freq, p)  # float64 angles, (3, r/2)
        fp32 = yarnref.rope_angles(inv_freq, p, precision="float32")
        err = np.abs(fp32 - exact).max(axis=-1)
        for pos, e in zip(p, err):
            print(f"position {pos:>9,}: max float32 angle error {e:.2e} rad")
        assert err[-1] > 1e-3 and err[0] < 1e-4, "the error grows with position"
        """
    ),
    md(
        r"""
        ## On a GPU (optional)

        The same calls run on a GPU with the torch backend. NumPy inputs are moved to the device once and
        torch tensors come back; we compare with the float64 spec above. This cell is skipped on a machine
        without CUDA.
        """
    ),
    code(
        GPU_GUARD,
        r"""
        if gpu:
            x_big = rng.standard_normal((1, 8, 4096, head_dim))
            cos_big, sin_big = yarnref.rope_cos_sin(inv_freq, np.arange(4096))
            expected = yarnref.apply_rope(x_big, cos_big, sin_big)  # the spec, on the CPU
            with yarnref.use_backend("torch", device="cuda") as backend:
                out = yarnref.apply_rope(x_big, cos_big, sin_big)  # a torch tensor on the GPU
                print(type(out).__name__, out.device, out.dtype)
                assert np.allclose(backend.to_numpy(out), expected, rtol=0, atol=1e-10)
        """
    ),
    md(
        r"""
        ## Summary

        * RoPE rotates plane $i$ of $\boldsymbol q$ and $\boldsymbol k$ by $p\,\theta_i$ with
          $\theta_i = b^{-2i/r}$; scores then depend only on $m-n$ (checked, including at position $10^6$).
        * The half-split and interleaved pairings are the same rotation up to a fixed permutation (checked).
        * Slow planes never finish a turn within the training length. **Lesson 2** changes the frequencies to
          stretch the context; **lesson 3** changes the positions instead.
        """
    ),
]

# ---------------------------------------------------------------------------------------------
# Lesson 2: context extension by changing the frequencies
# ---------------------------------------------------------------------------------------------

LESSON_02 = [
    md(
        r"""
        # Lesson 2: Extending the context: PI, NTK, YaRN, Llama 3, LongRoPE

        **Papers:**
        S. Chen, S. Wong, L. Chen, Y. Tian, *Extending Context Window of Large Language Models via Positional
        Interpolation* (PI), [arXiv:2306.15595](https://arxiv.org/abs/2306.15595);
        B. Peng, J. Quesnelle, H. Fan, E. Shippole, *YaRN: Efficient Context Window Extension of Large Language
        Models*, [arXiv:2309.00071](https://arxiv.org/abs/2309.00071) (it also writes up the NTK-aware and
        dynamic NTK methods first posted on r/LocalLLaMA by bloc97 and emozilla);
        Meta, *The Llama 3 Herd of Models*, [arXiv:2407.21783](https://arxiv.org/abs/2407.21783);
        Y. Ding et al., *LongRoPE: Extending LLM Context Window Beyond 2 Million Tokens*,
        [arXiv:2402.13753](https://arxiv.org/abs/2402.13753).

        **Code:** `yarnref/scaling/` (one module per method, `yarnref.scaling`), `yarnref/config.py`
        (`yarnref.rope_frequencies`, `yarnref.parse_rope_config`), `yarnref/presets.py` (`yarnref.get_preset`,
        `yarnref.preset_names`: real model configs).

        Lesson 1 ended with the problem: a model trained on $L$ tokens has never seen its slow planes turn
        further than $L\,\theta_i$. Every method in this lesson keeps the positions and the rotation, and replaces
        the frequencies $\theta_i$ by $\theta'_i$, plus an *attention factor* $m_{att}$ multiplied into cos and
        sin. So each method is fully described by two things: the per-pair scale $\theta_i/\theta'_i$ and
        $m_{att}$.
        """
    ),
    md(
        r"""
        ## The methods

        Notation: $s$ the scale factor (`factor`), $L$ the original context (`original_max_position_embeddings`),
        $r$ the rotary dim, $b$ the base, $\theta_i = b^{-2i/r}$, wavelength $\lambda_i = 2\pi/\theta_i$.

        * **PI** (PI paper, Eq. 4): $f'(\boldsymbol x, m) = f(\boldsymbol x, mL/L')$, i.e. every position is
          divided by $s$, which is the same as $\theta'_i = \theta_i / s$. Uniform: the fast planes, which carry
          local order, are squeezed as much as the slow ones.
        * **NTK-aware** (YaRN Def. 1): change the base, $b' = b\, s^{r/(r-2)}$, $\theta'_i = b'^{-2i/r}$. Pair 0 is
          untouched and the last pair is divided by exactly $s$; in between the scale grows geometrically.
        * **Dynamic NTK** (YaRN section 3.3): use $s = \max(1, \ell/L)$ for the *current* length $\ell$, so short
          inputs run the original model. transformers generalises it as
          $b' = b\,(s\ell/L - (s-1))^{r/(r-2)}$ with the config's `factor` as a slope.
        * **YaRN** ("NTK-by-parts", Def. 2, Eqs. 17-20): pair $d$ turns $r(d) = L/\lambda_d$ times over the
          original context. With a ramp $\gamma$ that is 0 below $\alpha$ and 1 above $\beta$,
          $$\theta'_d = \big(1-\gamma(r(d))\big)\,\frac{\theta_d}{s} + \gamma(r(d))\,\theta_d ,$$
          so pairs turning more than $\beta = 32$ times are kept and pairs turning less than $\alpha = 1$ time are
          interpolated like PI. The code everyone runs makes the ramp linear in the *pair index* between the
          correction dims $\mathrm{cd}(\rho) = \frac{r\,\ln(L/2\pi\rho)}{2\ln b}$, floored/ceiled
          (`correction_range`). And a temperature (Eq. 22): $\sqrt{1/t} = 0.1\ln s + 1$ is multiplied into cos
          and sin, so logits grow by $(0.1\ln s+1)^2$.
        * **Llama 3** (Meta's reference code; the paper gives no equation): the same idea written in wavelengths,
          with $\lambda_{hi} = L/\mathit{hf}$, $\lambda_{lo} = L/\mathit{lf}$: keep $\lambda_i < \lambda_{hi}$,
          divide $\lambda_i > \lambda_{lo}$ by $s$, and blend in between with
          $\kappa_i = (L/\lambda_i - \mathit{lf})/(\mathit{hf} - \mathit{lf})$. No attention factor.
        * **LongRoPE** (LongRoPE Eqs. 2-3): one searched factor per pair, $\theta'_i = \theta_i / f_i$, with a
          `long_factor` list beyond $L$ and a `short_factor` list below it; Phi-3's attention factor is
          $m_{att} = \sqrt{1 + \ln s / \ln L}$.
        """
    ),
    code(
        r"""
        %matplotlib inline
        import matplotlib.pyplot as plt
        import numpy as np

        import yarnref
        from yarnref.scaling import (
            DynamicNTKCache,
            correction_range,
            dynamic_ntk_frequencies,
            linear_frequencies,
            llama3_frequencies,
            longrope_attention_factor,
            longrope_frequencies,
            ntk_frequencies,
            yarn_attention_factor,
            yarn_frequencies,
        )

        rng = np.random.default_rng(0)
        """
    ),
    md(
        r"""
        ## Every method on one head, at the same factor

        A Llama 2 head ($r = 128$, $b = 10^4$, $L = 4096$) stretched $s = 8$ times, to 32k. Each scaling function
        is a pure function of its parameters returning `(inv_freq, attention_factor)`. Dynamic NTK is shown at
        $\ell = 16$k, halfway: its scale depends on the current length.
        """
    ),
    code(
        r"""
        r, b, L, s = 128, 10000.0, 4096, 8.0
        theta = yarnref.base_inv_freq(r, b)  # (r/2,)
        wavelength = 2 * np.pi / theta  # (r/2,)

        methods = {
            "PI": linear_frequencies(r, b, s),
            "NTK-aware": ntk_frequencies(r, b, s),
            "dynamic NTK at 16k": dynamic_ntk_frequencies(r, b, 1.0, L, seq_len=16384),
            "YaRN": yarn_frequencies(r, b, s, L),
            "Llama 3 (lf=1, hf=4)": llama3_frequencies(r, b, s, 1.0, 4.0, L),
        }
        for name, (inv_freq, m) in methods.items():
            scale = theta / inv_freq
            print(f"{name:<22} scale of pair 0: {scale[0]:.3f}  pair 63: {scale[-1]:.3f}  m_att = {m:.4f}")
        lo, hi = correction_range(r, b, L)
        print(f"YaRN correction range: pairs {lo:.0f} (kept) .. {hi:.0f} (interpolated)")
        """
    ),
    code(
        r"""
        fig, (ax_s, ax_m) = plt.subplots(1, 2, figsize=(10, 3.6), gridspec_kw={"width_ratios": [1.6, 1]})
        for name, (inv_freq, m) in methods.items():
            ax_s.loglog(wavelength, theta / inv_freq, label=name, lw=1.5)
        for x, text in ((L / 32, "L/32"), (L / 4, "L/4"), (L, "L")):
            ax_s.axvline(x, color="gray", ls=":", lw=0.8)
            ax_s.text(x, 9.5, text, ha="center", fontsize=8, color="gray")
        ax_s.set(xlabel=r"original wavelength $\lambda_i$ (tokens)", ylabel=r"scale $\theta_i / \theta'_i$",
                 title=f"Per-pair scale, s = {s:g}, L = {L}", ylim=(0.9, 12))
        ax_s.legend(fontsize=7, loc="upper left")

        factors = np.linspace(1, 64, 200)
        ax_m.plot(factors, [yarn_attention_factor(f) for f in factors], label=r"YaRN: $0.1\ln s + 1$")
        ax_m.plot(factors, [longrope_attention_factor(f, L) for f in factors], label=r"LongRoPE: $\sqrt{1 + \ln s/\ln L}$")
        ax_m.axhline(1.0, color="gray", lw=0.8, label="PI, NTK, Llama 3")
        ax_m.set(xlabel="scale factor s", ylabel=r"$m_{att}$", title="Attention factor (into cos, sin)")
        ax_m.legend(fontsize=7)
        fig.tight_layout()
        plt.show()
        """
    ),
    md(
        r"""
        ## Check: every method is RoPE at factor 1

        With $s = 1$ (and, for dynamic NTK, any length up to $L$) every method must give back the plain
        frequencies and $m_{att} = 1$: directly, and through `rope_frequencies` on a config of each `rope_type`.
        """
    ),
    code(
        r"""
        ones = np.ones(r // 2)
        at_one = {
            "PI": linear_frequencies(r, b, 1.0),
            "NTK-aware": ntk_frequencies(r, b, 1.0),
            "dynamic NTK (slope 8, l = L)": dynamic_ntk_frequencies(r, b, 8.0, L, seq_len=L),
            "YaRN": yarn_frequencies(r, b, 1.0, L),
            "YaRN, paper ramp": yarn_frequencies(r, b, 1.0, L, ramp="paper"),
            "Llama 3": llama3_frequencies(r, b, 1.0, 1.0, 4.0, L),
            "LongRoPE": longrope_frequencies(r, b, ones, ones, L, factor=1.0, seq_len=2 * L),
        }
        base_config = {"head_dim": r, "rope_theta": b, "max_position_embeddings": L}
        rope_scaling = {
            "linear": {"factor": 1.0},
            "dynamic": {"factor": 1.0},
            "yarn": {"factor": 1.0, "original_max_position_embeddings": L},
            "llama3": {"factor": 1.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": L},
            "longrope": {"factor": 1.0, "short_factor": list(ones), "long_factor": list(ones), "original_max_position_embeddings": L},
        }
        for rope_type, params in rope_scaling.items():
            config = {**base_config, "rope_scaling": {"rope_type": rope_type, **params}}
            at_one[f"config rope_type={rope_type}"] = yarnref.rope_frequencies(config)

        for name, (inv_freq, m) in at_one.items():
            assert np.allclose(inv_freq, theta, rtol=1e-15, atol=0) and m == 1.0, name
        print("all", len(at_one), "are plain RoPE at factor 1")
        """
    ),
    md(
        r"""
        ## Check: what each method keeps and what it interpolates

        * YaRN keeps exactly the pairs that turn at least $\beta_{fast} = 32$ times in $L$ and divides by exactly
          $s$ the pairs that turn at most $\beta_{slow} = 1$ time; in between the scale rises monotonically. Its
          attention factor at $s = 8$ is $0.1\ln 8 + 1 \approx 1.208$.
        * NTK-aware keeps pair 0 and divides the last pair by exactly $s$.
        * Llama 3 keeps wavelengths below $L/\mathit{hf}$ and divides those above $L/\mathit{lf}$ by $s$.
        * Dynamic NTK at $\ell = sL$ (slope 1) is NTK-aware at $s$. transformers' implementation is stateful, though:
          its cache only grows, so after a 16k request a 9k request keeps the 16k base (`DynamicNTKCache`
          reproduces that).
        """
    ),
    code(
        r"""
        rotations = L / wavelength  # r(d) = L / lambda_d, YaRN Eq. 17
        yarn_scale = theta / methods["YaRN"][0]
        assert np.all(yarn_scale[rotations >= 32] == 1.0), "fast pairs kept exactly"
        assert np.allclose(yarn_scale[rotations <= 1], s, rtol=1e-14), "slow pairs interpolated by s"
        assert np.all(np.diff(yarn_scale) >= -1e-12), "monotone in between"
        assert abs(methods["YaRN"][1] - (0.1 * np.log(s) + 1)) < 1e-15

        ntk_scale = theta / methods["NTK-aware"][0]
        assert ntk_scale[0] == 1.0 and np.isclose(ntk_scale[-1], s, rtol=1e-12)

        llama_scale = theta / methods["Llama 3 (lf=1, hf=4)"][0]
        assert np.all(llama_scale[wavelength < L / 4] == 1.0) and np.allclose(llama_scale[wavelength > L], s, rtol=1e-14)

        assert np.allclose(dynamic_ntk_frequencies(r, b, 1.0, L, seq_len=8 * L)[0], ntk_frequencies(r, b, 8.0)[0], rtol=1e-12)
        cache = DynamicNTKCache(r, b, 2.0, L)
        after_16k, _ = cache.update(16384)
        then_9k, _ = cache.update(9000)
        fresh_9k, _ = dynamic_ntk_frequencies(r, b, 2.0, L, seq_len=9000)
        assert np.array_equal(then_9k, after_16k) and not np.allclose(then_9k, fresh_9k)
        print("YaRN keeps", int(np.sum(yarn_scale == 1)), "pairs, interpolates", int(np.sum(np.isclose(yarn_scale, s))),
              "fully and ramps", int(np.sum((yarn_scale > 1) & ~np.isclose(yarn_scale, s))))
        """
    ),
    md(
        r"""
        ## Real models

        `rope_frequencies(config, seq_len=None)` takes a dict shaped like a Hugging Face `config.json` and returns
        what transformers computes (in float64). The presets hold the RoPE-relevant part of real configs, with
        their provenance. `seq_len` matters for dynamic NTK and for LongRoPE's short/long switch: we ask for the
        full context. (Qwen2.5-7B-Instruct-1M is plain RoPE with base $10^7$: it reaches 1M tokens with Dual
        Chunk Attention, lesson 3.)
        """
    ),
    code(
        r"""
        print(f"{'preset':<26} {'rope_type':<9} {'r':>4} {'base':>9} {'s':>5} {'L':>6} {'m_att':>7}")
        curves = {}
        for name in yarnref.preset_names():
            config = yarnref.get_preset(name)
            rc = yarnref.parse_rope_config(config)
            inv_freq, m = yarnref.rope_frequencies(config, seq_len=rc.max_position_embeddings)
            base_freq = yarnref.base_inv_freq(rc.rotary_dim, rc.base)
            factor = "-" if rc.factor is None else f"{rc.factor:g}"
            print(f"{name:<26} {rc.rope_type:<9} {rc.rotary_dim:>4} {rc.base:>9.3g} {factor:>5} "
                  f"{rc.original_max_position_embeddings or '-':>6} {m:>7.4f}")
            if rc.rope_type != "default":
                curves[name] = (2 * np.pi / base_freq / rc.original_max_position_embeddings, base_freq / inv_freq)

        # Known values: YaRN's temperature, DeepSeek's mscale ratio, Phi-3's LongRoPE factor.
        m_att = {name: yarnref.rope_frequencies(yarnref.get_preset(name))[1]
                 for name in ("yarn-llama-2-7b-128k", "deepseek-v3", "phi-3-mini-128k")}
        assert np.isclose(m_att["yarn-llama-2-7b-128k"], 0.1 * np.log(32) + 1, rtol=1e-15)  # YaRN Eq. 22, s = 32
        assert m_att["deepseek-v3"] == 1.0  # mscale == mscale_all_dim: the ratio is 1
        assert np.isclose(m_att["phi-3-mini-128k"], np.sqrt(1 + np.log(32) / np.log(4096)), rtol=1e-15)
        """
    ),
    code(
        r"""
        fig, ax = plt.subplots(figsize=(7, 3.6))
        for name, (relative_wavelength, scale) in curves.items():
            ax.loglog(relative_wavelength, scale, label=name, lw=1.2, marker="." if "phi" in name else None, ms=3)
        ax.axvline(1.0, color="gray", ls=":", lw=0.8)
        ax.set(xlabel=r"original wavelength / original context $\lambda_i / L$", ylabel=r"scale $\theta_i/\theta'_i$",
               title="Per-pair scale of real configs (LongRoPE: the long factors)")
        ax.legend(fontsize=7, loc="upper left")
        fig.tight_layout()
        plt.show()
        """
    ),
    md(
        r"""
        ## Precision: float32 angles and bfloat16 tables at position 1M

        The spec computes in float64. Real stacks do not: transformers computes the angles
        `position_ids.float() @ inv_freq` in float32, multiplies cos and sin by the attention factor, and casts
        the tables to the activation dtype, usually bfloat16. `rope_cos_sin` reproduces both steps:
        `precision="float32"` rounds the frequencies, the positions and the angle to float32, and
        `out_precision="bfloat16"` rounds the tables. The angle error grows with the position (half a float32 ulp
        of an angle near $p$ radians); the bfloat16 rounding is a constant $\le 2^{-9}\,m_{att}$, which the
        float32 angle error overtakes around position $10^5$. Llama 3.1 8B's frequencies:
        """
    ),
    code(
        r"""
        inv_freq, m = yarnref.rope_frequencies(yarnref.get_preset("llama-3.1-8b"))
        positions = np.unique(np.logspace(0, 6, 120).astype(np.int64))  # 1 .. 1,000,000
        exact = np.stack(yarnref.rope_cos_sin(inv_freq, positions, m))  # (2, n, r/2): cos, sin
        fp32 = np.stack(yarnref.rope_cos_sin(inv_freq, positions, m, precision="float32"))
        bf16 = np.stack(yarnref.rope_cos_sin(inv_freq, positions, m, precision="float32", out_precision="bfloat16"))
        err32 = np.abs(fp32 - exact).max(axis=(0, 2))  # (n,) worst over cos/sin and planes
        err16 = np.abs(bf16 - exact).max(axis=(0, 2))

        # The effect on a score: q at position 1M, k at 1M - 1000, rotated with each table.
        q, k = rng.standard_normal((2, 1, 1, 1, r))


        def score(precision, out_precision=None):
            tables = [yarnref.rope_cos_sin(inv_freq, [p], m, precision=precision, out_precision=out_precision)
                      for p in (1_000_000, 999_000)]
            return float(yarnref.apply_rope(q, *tables[0]).ravel() @ yarnref.apply_rope(k, *tables[1]).ravel())


        s64, s32, s16 = score("float64"), score("float32"), score("float32", "bfloat16")
        print(f"at position 1M: max table error fp32 {err32[-1]:.2e}, bf16 {err16[-1]:.2e}")
        print(f"score q.k at (1M, 1M-1000): float64 {s64:.5f}  fp32 {s32:.5f}  bf16 {s16:.5f}")

        small = positions <= 1000
        assert np.all(err16[small] <= 2.0**-9 * m + 1e-6), "bf16 rounding: at most half a bf16 ulp"
        assert err32[small].max() < 1e-4 and err32[-1] > 1e-2, "fp32 angle errors grow with the position"
        """
    ),
    code(
        r"""
        fig, ax = plt.subplots(figsize=(6, 3.2))
        ax.loglog(positions, err32, label="float32 angles and tables")
        ax.loglog(positions, err16, label="float32 angles, bfloat16 tables")
        ax.axhline(2.0**-9, color="gray", ls=":", lw=0.8)
        ax.text(1.5, 2.0**-9 * 1.3, r"$2^{-9}$: half a bf16 ulp", fontsize=8, color="gray")
        ax.set(xlabel="position", ylabel="max |table - float64|", title="cos/sin table error, Llama 3.1 8B")
        ax.legend(fontsize=8, loc="lower right")
        fig.tight_layout()
        plt.show()
        """
    ),
    md(
        r"""
        ## On a GPU (optional)

        `rope_cos_sin` with the torch backend builds the same float32 tables on the GPU; they must match the
        spec's emulation to a couple of float32 ulps (the GPU's `cos` is not correctly rounded). Skipped without
        CUDA.
        """
    ),
    code(
        GPU_GUARD,
        r"""
        if gpu:
            many = np.arange(0, 1_000_001, 7)
            spec = yarnref.rope_cos_sin(inv_freq, many, m, precision="float32")
            with yarnref.use_backend("torch", device="cuda") as backend:
                tables = yarnref.rope_cos_sin(inv_freq, many, m, precision="float32")
                for got, want in zip(tables, spec):
                    assert np.allclose(backend.to_numpy(got), want, rtol=0, atol=1e-6)
                print("torch float32 tables on", tables[0].device, "match the spec's emulation")
        """,
    ),
    md(
        r"""
        ## Summary

        * PI, NTK-aware, dynamic NTK, YaRN, Llama 3 and LongRoPE differ only in the per-pair scale
          $\theta_i/\theta'_i$ and the attention factor; all are RoPE at factor 1 (checked).
        * YaRN and Llama 3 keep the fast planes (local order) and interpolate the slow ones (checked); YaRN adds
          a temperature.
        * `rope_frequencies` turns a real `config.json` into those numbers, as transformers does.
        * At position $10^6$ float32 angles are off by up to ~0.05 rad, which dwarfs bfloat16's table rounding.
        """
    ),
]

# ---------------------------------------------------------------------------------------------
# Lesson 3: Dual Chunk Attention
# ---------------------------------------------------------------------------------------------

LESSON_03 = [
    md(
        r"""
        # Lesson 3: Dual Chunk Attention (DCA)

        **Paper:** C. An, F. Huang, J. Zhang, S. Gong, X. Qiu, C. Zhou, L. Kong, *Training-Free Long-Context
        Scaling of Large Language Models* (ChunkLlama), ICML 2024,
        [arXiv:2402.17463](https://arxiv.org/abs/2402.17463), section 3. As run in production:
        *Qwen2.5-1M Technical Report*, [arXiv:2501.15383](https://arxiv.org/abs/2501.15383), through vLLM's
        dual-chunk attention backend.

        **Code:** `yarnref/dca.py` (`dca_position_ids`, `dca_relative_positions`, `dca_attention`,
        `dca_config`).

        Lesson 2 changed the *frequencies* so that long distances map to angles the model knows. DCA leaves the
        frequencies alone and changes the *positions*: it never lets a query see a relative distance larger than
        the one it was trained on. No fine-tuning is needed.
        """
    ),
    md(
        r"""
        ## The method

        Cut the sequence into chunks of $L$ tokens. yarnref uses the config names of ChunkLlama, vLLM and
        Qwen2.5-1M: `chunk_size` $C$ is the largest position a query may take, `local_size` is $C - L$, so
        $L = C - \mathrm{local\_size}$ (the paper's $s$, with $C = c - 1$ for its pretraining length $c$).

        A key at absolute position $j$ gets its position inside its chunk; a query at $i$ gets one of three
        positions, depending on how far back the key's chunk is (paper Eqs. 2-7):

        $$P_k(j) = j \bmod L, \qquad
          P_q^{\mathrm{intra}}(i) = i \bmod L, \qquad
          P_q^{\mathrm{succ}}(i) = \min(i \bmod L + L,\ C), \qquad
          P_q^{\mathrm{inter}} = \min(2L - 1,\ C).$$

        The part is chosen by the chunk distance $\lfloor i/L\rfloor - \lfloor j/L\rfloor$: 0 is *intra*, 1 is
        *successive*, 2 or more is *inter*, and the effective relative distance is (Eq. 8)

        $$M_{ij} = P_q^{\mathrm{part}(i,j)}(i) - P_k(j) \in [0, C].$$

        Intra distances are exact ($M_{ij} = i - j$); successive ones are exact for the first `local_size`
        queries of a chunk and then saturate; inter ones are $C - P_k(j)$. Attention is one softmax over all
        keys $j \le i$ (Eq. 9), each logit computed with its part's query rotation:

        $$o_i = \sum_{j \le i} \operatorname{softmax}_j\!\Big(\tfrac{1}{\sqrt d}\,
              \big\langle R_{P_q^{\mathrm{part}(i,j)}(i)}\,\boldsymbol q_i,\ R_{P_k(j)}\,\boldsymbol k_j\big\rangle\Big)\,\boldsymbol v_j.$$

        Implementations run the three parts as three flash-attention calls and merge them by their
        log-sum-exps $\ell_p = \log\sum_{j\in K_p} e^{s_{ij}}$ (paper Appendix A.2, Algorithm 1):
        $o = \sum_p e^{\ell_p - \ell}\,o_p$ with $\ell = \log\sum_p e^{\ell_p}$. That is the same softmax, which we
        check below.
        """
    ),
    code(
        r"""
        %matplotlib inline
        import matplotlib.pyplot as plt
        import numpy as np

        import yarnref
        from yarnref.dca import qwen_attention_scale

        rng = np.random.default_rng(0)
        """
    ),
    md(
        r"""
        ## Position ids, worked by hand

        A toy configuration: `chunk_size` $C = 8$, `local_size` 2, so chunks of $L = 6$ tokens, over 20 tokens.
        `dca_position_ids` returns every table (the two `*_critical` ones, unclamped, are used only by the
        sparse estimation of lesson 4).
        """
    ),
    code(
        r"""
        C, local, n = 8, 2, 20
        ids = yarnref.dca_position_ids(n, C, local)
        print("token            ", np.arange(n))
        for name in ("key", "intra", "successive", "inter"):
            print(f"{name:<17}", getattr(ids, name))
        """
    ),
    md(
        r"""
        ## Plot: the relative-distance matrix

        Left, plain RoPE: query $i$ sees key $j$ at distance $i - j$, up to 19 here. Right, DCA
        (`dca_relative_positions`): the same triangle, but no entry exceeds $C = 8$. The dashed lines are the
        chunk boundaries; the blocks one chunk below the diagonal are the successive part, the rest the inter
        part.
        """
    ),
    code(
        r"""
        M = yarnref.dca_relative_positions(n, C, local)  # (n, n), -1 above the diagonal
        i, j = np.indices((n, n))
        plain = np.where(j <= i, i - j, -1)

        fig, axes = plt.subplots(1, 2, figsize=(10, 4.6), layout="constrained")
        for ax, matrix, title in ((axes[0], plain, "RoPE: $i - j$"), (axes[1], M, f"DCA: $M_{{ij}}$ (C={C}, L={C - local})")):
            shown = np.ma.masked_less(matrix, 0)
            image = ax.imshow(shown, cmap="viridis", vmin=0, vmax=n - 1)
            for (row, col), value in np.ndenumerate(matrix):
                if value >= 0:
                    ax.text(col, row, value, ha="center", va="center", fontsize=6,
                            color="white" if value < 0.6 * (n - 1) else "black")
            ax.set(title=title, xlabel="key j", ylabel="query i", xticks=range(0, n, 5), yticks=range(0, n, 5))
        for boundary in range(C - local, n, C - local):
            for line in (axes[1].axvline, axes[1].axhline):
                line(boundary - 0.5, color="red", lw=0.8, ls="--")
        fig.colorbar(image, ax=axes, shrink=0.9, label="relative distance")
        plt.show()
        """
    ),
    md(
        r"""
        ## Check: the distances

        Every visible entry lies in $[0, C]$ and reaches $C$; intra-chunk entries are the true distances; and
        on the first $C + 1$ tokens *every* entry is the true distance.
        """
    ),
    code(
        r"""
        visible = j <= i
        same_chunk = (i // (C - local)) == (j // (C - local))
        assert M[visible].min() == 0 and M[visible].max() == C
        assert np.array_equal(M[visible & same_chunk], (i - j)[visible & same_chunk])
        assert np.all(M[~visible] == -1)
        assert np.array_equal(M[: C + 1, : C + 1], plain[: C + 1, : C + 1]), "exact up to C + 1 tokens"
        assert not np.array_equal(M[: C + 2, : C + 2], plain[: C + 2, : C + 2]), "and no further"
        print("largest effective distance:", M.max(), "| largest true distance:", plain.max())
        """
    ),
    md(
        r"""
        ## Check: DCA is RoPE attention on up to $C + 1$ tokens

        Since every distance is the true one there, `dca_attention` (which takes **un-rotated** q and k: it
        rotates each query to several positions) must equal plain causal RoPE attention built from lesson 1's
        pieces and `yarnref.attention`. One token more and they differ. We use grouped-query attention (4 query
        heads, 2 kv heads) and partial rotary (24 of 32 features).
        """
    ),
    code(
        r"""
        C, local = 16, 4  # chunks of L = 12 tokens
        inv_freq = yarnref.base_inv_freq(24, 10000.0)  # r = 24 of head_dim = 32
        q = rng.standard_normal((1, 4, 40, 32))  # (batch, q_heads, seq, head_dim)
        k = rng.standard_normal((1, 2, 40, 32))  # (batch, kv_heads, seq, head_dim)
        v = rng.standard_normal((1, 2, 40, 32))


        def rope_attention(q, k, v):
            cos, sin = yarnref.rope_cos_sin(inv_freq, np.arange(k.shape[2]))
            return yarnref.attention(yarnref.apply_rope(q, cos, sin), yarnref.apply_rope(k, cos, sin), v, causal=True)


        for n in range(1, C + 2):  # every length up to C + 1
            dca = yarnref.dca_attention(q[:, :, :n], k[:, :, :n], v[:, :, :n], inv_freq, C, local)
            assert np.allclose(dca, rope_attention(q[:, :, :n], k[:, :, :n], v[:, :, :n]), rtol=0, atol=1e-12), n
        n = C + 2
        dca = yarnref.dca_attention(q[:, :, :n], k[:, :, :n], v[:, :, :n], inv_freq, C, local)
        difference = np.abs(dca - rope_attention(q[:, :, :n], k[:, :, :n], v[:, :, :n])).max(axis=(0, 1, 3))
        assert difference[:-1].max() < 1e-12 and difference[-1] > 1e-6, difference
        print(f"equal to RoPE attention up to {C + 1} tokens; at {C + 2} the last query differs by {difference[-1]:.3g}")
        """
    ),
    md(
        r"""
        ## Check: the union softmax equals the LSE merge

        `form="union"` computes Eq. 9 directly: one softmax over the logits of all three parts. `form="merge"`
        runs each part as a separate `yarnref.attention` call per chunk (the intra one causal, the others not)
        and merges them with `yarnref.merge_attention`, as vLLM does. 40 tokens make four chunks (the last one
        short), so all three parts appear. We also check chunked prefill and decode: the last queries alone,
        against the whole cache, give the last rows of the full prefill.
        """
    ),
    code(
        r"""
        union, lse_union = yarnref.dca_attention(q, k, v, inv_freq, C, local, form="union", return_lse=True)
        merged, lse_merged = yarnref.dca_attention(q, k, v, inv_freq, C, local, form="merge", return_lse=True)
        assert np.allclose(union, merged, rtol=0, atol=1e-12) and np.allclose(lse_union, lse_merged, rtol=0, atol=1e-12)

        for q_len in (17, 1):  # a prefill chunk that starts mid-chunk, and one decode step
            tail = yarnref.dca_attention(q[:, :, -q_len:], k, v, inv_freq, C, local)
            assert np.allclose(tail, union[:, :, -q_len:], rtol=0, atol=1e-12), q_len
        print("union == merge; chunked prefill and decode == the rows of the full prefill")
        print("max |DCA - RoPE attention| over 40 tokens:", float(np.abs(union - rope_attention(q, k, v)).max()))
        """
    ),
    md(
        r"""
        ## Qwen2.5-1M

        Qwen2.5-7B-Instruct-1M and 14B-Instruct-1M ship a `dual_chunk_attention_config` in their `config.json`
        ($C = 262144$, `local_size` 8192, so $L = 253952$) next to `max_position_embeddings` = 1010000 and
        `rope_theta` = $10^7$; vLLM then ignores any `rope_scaling`. The preset holds those keys, and
        `dca_config` reads and validates them. A
        1M-token prompt is four chunks, and no query ever sees a distance beyond 262144, the length the models
        were trained to.

        vLLM adds a temperature ($\texttt{original\_max\_position\_embeddings} = O > 0$): queries and keys are
        each multiplied by $s(n) = \max\!\big(1,\ 0.1 \ln(n/O) + 1\big)$ for the sequence length $n$, so the
        logits grow by $s^2$, YaRN's $(0.1\ln s + 1)^2$ with $s$ set per request. yarnref offers it as
        `dca_attention(..., temperature="qwen")`.
        """
    ),
    code(
        r"""
        qwen_config = yarnref.get_preset("qwen2.5-7b-instruct-1m")  # the RoPE-relevant keys of its config.json
        print("dual_chunk_attention_config:", qwen_config["dual_chunk_attention_config"])
        print("max_position_embeddings:", qwen_config["max_position_embeddings"], "| rope_theta:", qwen_config["rope_theta"])
        dca = yarnref.dca_config(qwen_config)
        print("chunk length L =", dca.chunk_len, "| chunks in a 1M prompt:", -(-1_000_000 // dca.chunk_len))
        for length in (131072, 262144, 524288, 1010000):
            s = qwen_attention_scale(length, dca.original_max_position_embeddings)
            print(f"n = {length:>9,}: s = {s:.4f}, logits x {s * s:.4f}")
        assert dca.chunk_len == 253952 and dca.temperature == "qwen"
        assert qwen_attention_scale(262144, 262144) == 1.0 < qwen_attention_scale(1010000, 262144)
        """
    ),
    md(
        r"""
        ## On a GPU (optional)

        With the torch backend, `yarnref.dca_attention` runs on the GPU; here a 4096-token prefill with three
        chunks of a scaled-down configuration, against the float64 spec. Skipped without CUDA.
        """
    ),
    code(
        GPU_GUARD,
        r"""
        if gpu:
            qg = rng.standard_normal((1, 8, 4096, 64))
            kg, vg = rng.standard_normal((2, 1, 2, 4096, 64))
            freqs = yarnref.base_inv_freq(64, 1e6)
            expected = yarnref.dca_attention(qg, kg, vg, freqs, 1536, 128)  # the spec, on the CPU
            with yarnref.use_backend("torch", device="cuda") as backend:
                out = yarnref.dca_attention(qg, kg, vg, freqs, 1536, 128)
                assert np.allclose(backend.to_numpy(out), expected, rtol=0, atol=1e-8)
                print("torch on", out.device, "matches the spec")
        """,
    ),
    md(
        r"""
        ## Summary

        * DCA remaps positions so that every effective distance is at most `chunk_size` (checked), and intra-chunk
          distances stay exact.
        * On up to `chunk_size + 1` tokens it *is* RoPE attention (checked, with GQA and partial rotary).
        * The three-part LSE merge that the kernels run is the union softmax of Eq. 9 (checked), and chunked
          prefill and decode are the same call on the last queries.
        * **Lesson 4** makes the 1M-token prefill affordable with vertical-slash sparse attention, estimated per
          DCA segment as Qwen2.5-1M does.
        """
    ),
]

# ---------------------------------------------------------------------------------------------
# Lesson 4: vertical-slash sparse attention and the Qwen2.5-1M prefill
# ---------------------------------------------------------------------------------------------

LESSON_04 = [
    md(
        r"""
        # Lesson 4: Vertical-slash sparse attention and chunked prefill (MInference, Qwen2.5-1M)

        **Papers:** H. Jiang et al., *MInference 1.0: Accelerating Pre-filling for Long-Context LLMs via Dynamic
        Sparse Attention*, NeurIPS 2024, [arXiv:2407.02490](https://arxiv.org/abs/2407.02490), section 3 (the
        vertical-slash pattern and its online estimation); A. Yang et al., *Qwen2.5-1M Technical Report*,
        [arXiv:2501.15383](https://arxiv.org/abs/2501.15383) (sparse attention with DCA and chunked prefill), as
        vLLM runs it.

        **Code:** `yarnref/sparse.py` (`vertical_slash_indices`, `convert_vertical_slash_indexes`,
        `vertical_slash_mask`, `vertical_slash_attention`, `attention_recall`), `yarnref/prefill.py`
        (`chunked_prefill`, `qwen_prefill`, `qwen_sparse_plan`).

        Lessons 2 and 3 make a model *understand* 1M tokens. This one makes the prefill *affordable*: dense
        attention over $T$ tokens costs $O(T^2)$, about $10^{12}$ logits per head at 1M. Most heads put their
        mass on a few key columns (attention sinks, key tokens: *vertical* lines) and a few diagonals (the local
        window, repetitions: *slash* lines). Find those lines cheaply, per head and per input, and attend only to
        them.
        """
    ),
    md(
        r"""
        ## The method

        **Estimation** (MInference section 3, online approximation). Score all keys with only the last
        $m = \min(64, T)$ queries, causal among themselves:

        $$\hat A = \operatorname{softmax}\!\Big(\tfrac{1}{\sqrt d}\,Q_{[T-m:T]}K^\top + M_{\mathrm{causal}}\Big) \in \mathbb{R}^{m\times T}.$$

        Column sums score the vertical lines, sums along diagonals $\delta = i - j$ score the slash lines, and the
        top ones are kept:

        $$V = \operatorname{argtopk}_{n_v}\Big(\sum_r \hat A_{r,j}\Big), \qquad
          S = \operatorname{argtopk}_{n_s}\Big(\sum_r \hat A_{r,\,p_r-\delta}\Big),$$

        with budgets $n_v = \min(T, \max(v, 30))$, $n_s = \min(T, \max(s, 50))$; the first 30 columns (sinks) and
        the 100 nearest diagonals (local window) are always forced in.

        **Attention** over each query's key set $K_i$ only:
        $o_i = \sum_{j\in K_i} \frac{e^{s_{ij}}}{\sum_{j'\in K_i} e^{s_{ij'}}}\, v_j$. *Which* $K_i$? The pattern
        says $j \in V$ or $i - j \in S$ (`mode="exact"`). The CUDA/Triton kernels of MInference, vLLM and SGLang
        instead convert $(V, S)$ into, per block of 64 query rows, a list of 64-wide key *ranges* (each diagonal
        widened to the columns it touches anywhere in the block, merged and grown 64 at a time) plus the
        verticals no range covers (`convert_vertical_slash_indexes`, `mode="kernel"`). Every row of the block
        reads all of it, so the kernel's key set contains the exact one and is several times larger. Compare a
        kernel with `"kernel"`; study the pattern with `"exact"`.

        **Recall** measures what a mask keeps of the dense attention: $\mathrm{recall}_i = e^{\ell^{\mathrm{mask}}_i - \ell_i}$,
        the share of query $i$'s softmax mass on the kept keys (`attention_recall`; the score of MInference's
        offline pattern search).
        """
    ),
    code(
        r"""
        %matplotlib inline
        import matplotlib.pyplot as plt
        import numpy as np

        import yarnref

        rng = np.random.default_rng(0)
        """
    ),
    md(
        r"""
        ## Inputs with known lines

        Random q and k give diffuse attention with no lines to find. So we plant them, in two heads of 1024 tokens
        (take these as already rotated q and k):

        * head 0 repeats a 150-token "text": queries and keys carry the content of position $p \bmod 150$, so a
          query attends to its earlier repetitions, the diagonals $\delta = 150, 300, 450, \dots$;
        * head 1 has three "sink" keys, at 200, 333 and 701, sharing a strong direction with every query: vertical
          lines.
        """
    ),
    code(
        r"""
        T, d, period, sinks = 1024, 64, 150, np.array([200, 333, 701])
        positions = np.arange(T)
        content = rng.standard_normal((period, d))
        direction = rng.standard_normal(d)
        direction /= np.linalg.norm(direction)

        q = 0.5 * rng.standard_normal((1, 2, T, d))  # (batch, heads, seq, head_dim)
        k = 0.5 * rng.standard_normal((1, 2, T, d))
        v = rng.standard_normal((1, 2, T, d))
        q[0, 0] += content[positions % period]
        k[0, 0] += content[positions % period]
        q[0, 1] += 4 * direction
        k[0, 1, sinks] += 16 * direction
        """
    ),
    md(
        r"""
        ## Estimation from the last 64 queries

        Budgets: 40 verticals (30 forced + 10 found) and 120 slashes (100 forced + 20 found). The estimated sets,
        beyond the forced ones, must contain the planted lines.
        """
    ),
    code(
        r"""
        vertical_idx, slash_idx = yarnref.vertical_slash_indices(q, k, vertical_size=40, slash_size=120, last_q=64)
        print("shapes:", vertical_idx.shape, slash_idx.shape, "(batch, heads, budget)")
        for head in range(2):
            found_v = sorted(set(vertical_idx[0, head].tolist()) - set(range(30)))
            found_s = sorted(set(slash_idx[0, head].tolist()) - set(range(100)))
            print(f"head {head}: verticals found {found_v}\n        slashes found   {found_s}")

        assert set(range(30)) <= set(vertical_idx[0, 0].tolist()) and set(range(100)) <= set(slash_idx[0, 0].tolist())
        assert {150, 300, 450, 600, 750, 900} <= set(slash_idx[0, 0].tolist()), "head 0: the repetition diagonals"
        assert set(sinks.tolist()) <= set(vertical_idx[0, 1].tolist()), "head 1: the sink columns"
        """
    ),
    md(
        r"""
        ## Plot: dense attention, the exact mask, the kernel mask

        The dense attention matrix comes from the library too: attention with $V = I$ returns the softmax matrix
        itself. Beside it, the two key sets of the same $(V, S)$. Note head 1's extra slashes near
        $\delta \approx 630$-$690$: they are the sink column at 333 seen through the diagonal sums (the last 64
        rows, 960-1023, cross it on those diagonals). A strong vertical line leaks into the slash scores; the
        estimation is a heuristic, and the oracle reproduces it, leaks included.
        """
    ),
    code(
        r"""
        probs = yarnref.attention(q, k, np.broadcast_to(np.eye(T), (1, 2, T, T)))  # (1, 2, T, T): V = I gives P
        exact = yarnref.vertical_slash_mask(T, T, vertical_idx, slash_idx, mode="exact")  # (1, 2, T, T) bool
        kernel = yarnref.vertical_slash_mask(T, T, vertical_idx, slash_idx, mode="kernel")


        def max_pool(image, f=4):
            # Display only: the max over f x f tiles, so that one-pixel lines survive the downscaling.
            n = image.shape[0] // f
            return image[: n * f, : n * f].reshape(n, f, n, f).max(axis=(1, 3))  # (T, T) -> (T/f, T/f)


        fig, axes = plt.subplots(2, 3, figsize=(10, 6.4), layout="constrained")
        extent = (0, T, T, 0)
        for head, name in enumerate(("head 0 (repetitions)", "head 1 (sinks)")):
            image = axes[head, 0].imshow(max_pool(np.log10(probs[0, head] + 1e-12)), vmin=-5, vmax=0, cmap="magma", extent=extent)
            axes[head, 1].imshow(max_pool(exact[0, head]), cmap="Blues", extent=extent)
            axes[head, 2].imshow(max_pool(kernel[0, head]), cmap="Blues", extent=extent)
            density = [m[0, head].sum() / (T * (T + 1) / 2) for m in (exact, kernel)]
            axes[head, 0].set_title(f"{name}: dense attention", fontsize=9)
            axes[head, 1].set_title(f"exact mask: {density[0]:.0%} of causal keys", fontsize=9)
            axes[head, 2].set_title(f"kernel mask: {density[1]:.0%}", fontsize=9)
        for ax in axes.flat:
            ax.set(xlabel="key j", ylabel="query i", xticks=[0, 512, 1024], yticks=[0, 512, 1024])
        fig.colorbar(image, ax=axes[:, 0], location="left", shrink=0.6, label=r"$\log_{10} P_{ij}$ (max over 4x4 tiles)")
        plt.show()
        """
    ),
    md(
        r"""
        ## Check: masks and recall

        * The kernel mask contains the exact one (the forced $\delta = 0$ diagonal guarantees it) and is larger.
        * The planted lines carry most of the attention: the exact mask's recall is high, and a random mask with
          as many keys per row keeps far less.
        * Recall can only grow with the mask: kernel $\ge$ exact.
        """
    ),
    code(
        r"""
        causal = np.tril(np.ones((T, T), dtype=bool))
        assert np.all(kernel <= causal) and np.all(exact <= kernel) and kernel.sum() > exact.sum()

        recall_exact = yarnref.attention_recall(q, k, exact)  # (1, 2, T)
        recall_kernel = yarnref.attention_recall(q, k, kernel)
        random_mask = (rng.random((1, 2, T, T)) < exact.sum(-1, keepdims=True) / np.arange(1, T + 1)[:, None]) & causal
        recall_random = yarnref.attention_recall(q, k, random_mask)
        for head in range(2):
            print(f"head {head}: mean recall exact {recall_exact[0, head].mean():.3f}, kernel "
                  f"{recall_kernel[0, head].mean():.3f}, random mask of the same size {recall_random[0, head].mean():.3f}")
        assert np.all(recall_kernel >= recall_exact - 1e-12)
        assert np.all(recall_exact.mean(-1) > 0.9) and np.all(recall_random.mean(-1) < 0.5)
        """
    ),
    md(
        r"""
        ## Check: a full budget is dense attention

        With every column a vertical, both key sets are all causal keys, so the sparse attention must equal
        `yarnref.attention` exactly, in both modes. With the budgets above, the output differs from dense
        attention by at most about twice the missing mass times the largest value.
        """
    ),
    code(
        r"""
        dense, dense_lse = yarnref.attention(q, k, v, causal=True, return_lse=True)
        all_v, all_s = yarnref.vertical_slash_indices(q, k, vertical_size=T, slash_size=T)
        for mode in ("exact", "kernel"):
            out, lse = yarnref.vertical_slash_attention(q, k, v, all_v, all_s, mode=mode, return_lse=True)
            assert np.allclose(out, dense, rtol=0, atol=1e-12) and np.allclose(lse, dense_lse, rtol=0, atol=1e-12), mode

        sparse, sparse_lse = yarnref.vertical_slash_attention(q, k, v, vertical_idx, slash_idx, mode="kernel", return_lse=True)
        assert np.allclose(np.exp(sparse_lse - dense_lse), recall_kernel, rtol=1e-9), "recall = exp(lse_sparse - lse_dense)"
        bound = 2 * (1 - recall_kernel)[..., None] * np.abs(v).max()
        assert np.all(np.abs(sparse - dense) <= bound + 1e-12)
        print("full budget == dense; with the small budgets the max error is", float(np.abs(sparse - dense).max()))
        """
    ),
    md(
        r"""
        ## Chunked prefill

        A 1M-token prefill is run a chunk of queries at a time against all keys so far (vLLM's
        `--enable-chunked-prefill`; Qwen recommends chunks of 131072 tokens): it bounds the activation memory.
        Dense, that is exactly the whole prefill. Sparse, each chunk estimates its own pattern from *its own* last
        64 queries, so the result depends on the chunking, which an oracle has to reproduce.
        """
    ),
    code(
        r"""
        chunked = yarnref.chunked_prefill(q, k, v, chunk_size=256)
        assert np.allclose(chunked, dense, rtol=0, atol=1e-12), "dense chunked prefill == full prefill"

        budgets = dict(vertical_size=40, slash_size=120)
        one_shot = yarnref.chunked_prefill(q, k, v, chunk_size=T, sparse=budgets)
        per_chunk = yarnref.chunked_prefill(q, k, v, chunk_size=256, sparse=budgets)
        assert np.allclose(one_shot, sparse, rtol=0, atol=1e-12), "one chunk == the sparse attention above"
        print("max |sparse - dense|: one shot", float(np.abs(one_shot - dense).max()),
              "| 256-token chunks", float(np.abs(per_chunk - dense).max()))
        print("chunked sparse differs from one-shot sparse by", float(np.abs(per_chunk - one_shot).max()))
        """
    ),
    md(
        r"""
        ## The Qwen2.5-1M prefill: DCA + vertical-slash, per segment

        Qwen2.5-1M combines everything (`qwen_prefill`, following vLLM's dual-chunk backend): above
        `sparse_attention_threshold` tokens, every DCA segment (lesson 3) estimates its pattern jointly over its
        intra, successive and inter keys (with unclamped "critical" query positions), splits the indices into the
        three parts, runs three sparse attentions with the clamped DCA positions and merges them by their
        log-sum-exps. Per-head budgets come from `sparse_attention_config.json` in the model repository: per layer,
        `{head: ["vertical_and_slash", v, s, score]}`, and vLLM runs `v = 30` as 130.

        A scaled-down configuration: DCA chunks of $L = 448$ over 1024 tokens (so all three parts appear), two
        query heads sharing one kv head, threshold 256.
        """
    ),
    code(
        r"""
        def qwen_config(budgets, threshold=256):
            # One layer of sparse_attention_config: {head: [pattern, v, s, score]}; the score is the offline search's.
            layer = {str(h): ["vertical_and_slash", v, s, 0.95] for h, (v, s) in enumerate(budgets)}
            return {"dual_chunk_attention_config": {
                "chunk_size": 512, "local_size": 64, "original_max_position_embeddings": 0,
                "sparse_attention_threshold": threshold, "sparse_attention_config": [layer],
            }}


        small, full_budget = [(100, 200), (30, 50)], [(T, T), (T, T)]
        print(yarnref.sparse_attention_config_for(qwen_config(small), layer=0))
        inv_freq = yarnref.base_inv_freq(d, 1e7)
        qd, kd, vd = q, k[:, :1], v[:, :1]  # un-rotated: DCA rotates; GQA: 2 query heads, 1 kv head
        dense_dca = yarnref.dca_attention(qd, kd, vd, inv_freq, 512, 64)

        plan = yarnref.qwen_sparse_plan(qd, kd, inv_freq, qwen_config(small))
        for segment in plan:
            parts = ", ".join(f"{name} keys {part.keys}" for name, part in segment.parts.items())
            print(f"queries [{segment.begin}, {segment.end}): {parts}")

        below = yarnref.qwen_prefill(qd, kd, vd, inv_freq, qwen_config(small, threshold=4096))
        full = yarnref.qwen_prefill(qd, kd, vd, inv_freq, qwen_config(full_budget))
        sparse_qwen = yarnref.qwen_prefill(qd, kd, vd, inv_freq, qwen_config(small))
        chunked_qwen = yarnref.qwen_prefill(qd, kd, vd, inv_freq, qwen_config(small), prefill_chunk_size=300)
        assert np.array_equal(below, dense_dca), "below the threshold: dense DCA"
        assert np.allclose(full, dense_dca, rtol=0, atol=1e-12), "full budgets: dense DCA"
        print("max |sparse - dense DCA|:", float(np.abs(sparse_qwen - dense_dca).max()),
              "| with 300-token prefill chunks:", float(np.abs(chunked_qwen - dense_dca).max()))
        """
    ),
    md(
        r"""
        ## On a GPU (optional)

        The torch backend runs the estimation and the sparse attention on the GPU; here an 8192-token head with
        the kernel key set, against the float64 spec. Skipped without CUDA.
        """
    ),
    code(
        GPU_GUARD,
        r"""
        if gpu:
            n = 8192
            qg, kg, vg = rng.standard_normal((3, 1, 4, n, 64))
            vi, si = yarnref.vertical_slash_indices(qg, kg, vertical_size=500, slash_size=1000)
            expected = yarnref.vertical_slash_attention(qg, kg, vg, vi, si, mode="kernel")  # the spec, on the CPU
            with yarnref.use_backend("torch", device="cuda") as backend:
                out = yarnref.vertical_slash_attention(qg, kg, vg, vi, si, mode="kernel")
                assert np.allclose(backend.to_numpy(out), expected, rtol=0, atol=1e-8)
                print("torch on", out.device, "matches the spec")
        """,
    ),
    md(
        r"""
        ## Summary

        * The last 64 queries find a head's vertical and slash lines (checked on planted lines).
        * The kernels read a blocky superset of the exact pattern (checked: exact $\subseteq$ kernel); compare
          kernels against `mode="kernel"`.
        * Recall, $e^{\ell^{\mathrm{sparse}} - \ell}$, bounds the error; a full budget is dense attention (checked).
        * Chunked prefill is exact when dense and chunking-dependent when sparse; Qwen2.5-1M's pipeline is DCA
          plus per-segment vertical-slash, dense DCA below its threshold or with full budgets (checked).
        """
    ),
]

# ---------------------------------------------------------------------------------------------

LESSONS: dict[str, list] = {
    "01_rope.ipynb": LESSON_01,
    "02_context_extension.ipynb": LESSON_02,
    "03_dual_chunk_attention.ipynb": LESSON_03,
    "04_vertical_slash.ipynb": LESSON_04,
}


def build_notebook(name: str, cells: list) -> nbformat.NotebookNode:
    """The notebook for one lesson, without outputs, with deterministic cell ids."""
    nb = new_notebook()
    nb.metadata = {
        "kernelspec": {"name": "python3", "display_name": "Python 3 (ipykernel)", "language": "python"},
        "language_info": {"name": "python"},
    }
    stem = name.split("_", 1)[0]
    for index, cell in enumerate(cells):
        cell = nbformat.from_dict(dict(cell))
        cell["id"] = f"lesson{stem}-{index:02d}"
        nb.cells.append(cell)
    nbformat.validate(nb)
    return nb


def render(name: str, cells: list) -> str:
    return nbformat.writes(build_notebook(name, cells), version=4) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if a notebook differs from its source")
    args = parser.parse_args(argv)
    stale = []
    for name, cells in LESSONS.items():
        path = LESSONS_DIR / name
        text = render(name, cells)
        if args.check:
            if not path.exists() or path.read_text(encoding="utf-8") != text:
                stale.append(name)
        else:
            path.write_text(text, encoding="utf-8")
            print(f"wrote {path.relative_to(LESSONS_DIR.parent)}")
    if stale:
        print("out of date (run python lessons/_build.py):", ", ".join(stale), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
