// Fused softmax attention for the CuPy backend: float16 or bfloat16 in, float32 softmax state and
// accumulation, output in the input dtype.
//
// One kernel serves dense attention and the vertical-slash kernel lists (see flash.py and
// yarnref.sparse).  A block of WARPS warps owns 16 * WARPS query rows (16 per warp) of one
// (batch, query head); it walks key tiles of BLOCK_N = 64 keys and keeps, per row, the online
// softmax state (Milakov & Gimelshein, arXiv:1805.02867; FlashAttention-2, arXiv:2307.08691,
// Algorithm 1):
//
//     m_new = max(m, max_j s_j),  l = l * 2^(m - m_new) + sum_j 2^(s_j - m_new),
//     o = o * 2^(m - m_new) + sum_j 2^(s_j - m_new) v_j,
//
// with s the logits in base 2 (scale * log2(e) * q.k).  At the end out = o / l and
// lse = (m + log2 l) * ln 2; a row that saw no key gets out = 0 and lse = -inf.
//
// A tile is given by the indices of its 64 keys (kidx, in shared memory):
//   * dense:  the tiles [0, 64), [64, 128), ... up to the block's last visible key;
//   * lists:  the block_count ranges [o, o + 64) of block_offset, then the column_index
//             columns 64 at a time (the conversion's layout; a key listed twice counts twice).
// Every key of every tile passes the test 0 <= j < kv_len and, if causal, j <= i + kv_len - q_len
// (bottom-right alignment), so the result is the spec's whatever the lists contain.
//
// Matrix products use mma.sync.m16n8k16 (f16 x f16 -> f32, or bf16 x bf16 -> f32: the same
// fragment layouts), whose register layouts are
// (g = lane / 4, t = lane % 4; PTX ISA, "Matrix Fragments for mma.m16n8k16"):
//   A (16 x 16, row):  a0 = A[g][2t..2t+1], a1 = A[g+8][2t..], a2 = A[g][2t+8..], a3 = A[g+8][2t+8..]
//   B (16 x 8, col):   b0 = B[2t..2t+1][g], b1 = B[2t+8..2t+9][g]
//   C (16 x 8):        c0, c1 = C[g][2t], C[g][2t+1];  c2, c3 = C[g+8][2t], C[g+8][2t+1]
// The C layout of S = Q K^T, rounded to the input's 16-bit type, is the A layout of P for P V
// (FlashAttention-2).
// The B fragments of P V come from row-major V through the transposing ldmatrix.
//
// K and V tiles are copied with cp.async into two shared-memory stages, so that the copy of
// tile i + 1 overlaps the math of tile i.
//
// Layout: q (B, Hq, Tq, D), k and v (B, Hk, Tk, D), rows contiguous and 16-byte aligned
// (checked by the caller); GQA: query head h reads kv head h / group.
//
// Template parameters: D, the head dim (a multiple of 16: 32, 64, 80, 96, 128, 256 are compiled),
// and BF16 (false: float16, true: bfloat16).  Elements are handled as raw 16-bit words (u16) and
// converted with cvt.rn.{f16x2,bf16x2}.f32 (sm_80+, like mma.m16n8k16 itself), so the source needs
// no CUDA header and compiles the same under every NVRTC version.

#define BLOCK_N 64
#define NEG_INF __int_as_float(0xff800000)  // -infinity

typedef unsigned short u16;  // one float16 or bfloat16 element, as raw bits

template <bool BF16>
__device__ __forceinline__ void mma_16816(float* c, const unsigned* a, unsigned b0, unsigned b1) {
    if (BF16) {
        asm volatile(
            "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
            : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
            : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
    } else {
        asm volatile(
            "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
            : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
            : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
    }
}

// (lo, hi) rounded to nearest-even in the 16-bit type, packed as lo | hi << 16 (cvt puts its first source high).
template <bool BF16>
__device__ __forceinline__ unsigned pack2(float lo, float hi) {
    unsigned d;
    if (BF16) {
        asm("cvt.rn.bf16x2.f32 %0, %1, %2;\n" : "=r"(d) : "f"(hi), "f"(lo));
    } else {
        asm("cvt.rn.f16x2.f32 %0, %1, %2;\n" : "=r"(d) : "f"(hi), "f"(lo));
    }
    return d;
}

__device__ __forceinline__ unsigned load_u32(const u16* p) { return *reinterpret_cast<const unsigned*>(p); }

__device__ __forceinline__ unsigned smem_address(const void* p) { return static_cast<unsigned>(__cvta_generic_to_shared(p)); }

// 16 bytes global -> shared without passing through registers; src_bytes = 0 writes zeros.
__device__ __forceinline__ void cp_async16(void* dst, const void* src, int src_bytes) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_address(dst)), "l"(src), "r"(src_bytes));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }
template <int N>
__device__ __forceinline__ void cp_async_wait() { asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory"); }

// The B fragment of P V (keys 16 x dims 8) from row-major V in shared memory: the transposing ldmatrix.
__device__ __forceinline__ void ldmatrix_x2_trans(unsigned& b0, unsigned& b1, const u16* row_address) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x2.trans.shared.b16 {%0, %1}, [%2];\n" : "=r"(b0), "=r"(b1) : "r"(smem_address(row_address)));
}

// WARPS = 4: 64-row blocks (the vertical-slash lists are per 64-row block); WARPS = 8: 128-row blocks
// for dense attention, where each K/V tile brought into shared memory serves twice as many queries.
template <int D, bool BF16, int WARPS>
__global__ void __launch_bounds__(WARPS * 32) yarnref_flash_fwd(
    const u16* __restrict__ Q, const u16* __restrict__ K, const u16* __restrict__ V,
    u16* __restrict__ Out, float* __restrict__ Lse,
    long long sqb, long long sqh, long long sqm,
    long long skb, long long skh, long long skn,
    long long svb, long long svh, long long svn,
    int n_heads, int group, int q_len, int kv_len, float qk_scale_log2, int causal,
    int use_lists, const int* __restrict__ block_count, const int* __restrict__ block_offset, int blk_cap,
    const int* __restrict__ column_count, const int* __restrict__ column_index, int col_cap) {
    constexpr int LD = D + 8;       // row stride of the K and V tiles (elements): spreads rows over banks
    constexpr int KSTEPS = D / 16;  // k-steps of Q K^T
    constexpr int DBLK = D / 8;     // n-blocks of P V
    constexpr int TILE = BLOCK_N * LD;
    constexpr int BLOCK_M = 16 * WARPS;  // query rows of this block
    constexpr int THREADS = 32 * WARPS;
    extern __shared__ __align__(16) unsigned char smem[];
    u16* Ks = reinterpret_cast<u16*>(smem);      // [2 stages][BLOCK_N][LD]
    u16* Vs = Ks + 2 * TILE;                        // [2 stages][BLOCK_N][LD]
    int* kidx = reinterpret_cast<int*>(Vs + 2 * TILE);  // [2 stages][BLOCK_N]: key index of each tile row (-1: none)

    const int n_rows = (q_len + BLOCK_M - 1) / BLOCK_M;
    const int row_block = n_rows - 1 - blockIdx.x;  // heavy (late) row blocks first
    const int bh = blockIdx.y;
    const int b = bh / n_heads, h = bh % n_heads, hk = h / group;
    const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32, g = lane / 4, t = lane % 4;
    const int off = kv_len - q_len;  // query i sits at key position i + off

    const u16* Kb = K + b * skb + hk * skh;
    const u16* Vb = V + b * svb + hk * svh;
    const int row0 = row_block * BLOCK_M + warp * 16 + g;  // this thread's two rows: row0 and row0 + 8
    const int row1 = row0 + 8;
    const int pos0 = row0 + off, pos1 = row1 + off;

    // Q fragments, once: (16 rows of this warp) x D.
    unsigned qf[KSTEPS][4];
    {
        const u16* Qb = Q + b * sqb + h * sqh;
        for (int kk = 0; kk < KSTEPS; ++kk) {
            const int c = kk * 16 + 2 * t;
            qf[kk][0] = row0 < q_len ? load_u32(Qb + row0 * sqm + c) : 0u;
            qf[kk][1] = row1 < q_len ? load_u32(Qb + row1 * sqm + c) : 0u;
            qf[kk][2] = row0 < q_len ? load_u32(Qb + row0 * sqm + c + 8) : 0u;
            qf[kk][3] = row1 < q_len ? load_u32(Qb + row1 * sqm + c + 8) : 0u;
        }
    }

    float o[DBLK][4];
    for (int i = 0; i < DBLK; ++i) o[i][0] = o[i][1] = o[i][2] = o[i][3] = 0.f;
    float m0 = NEG_INF, m1 = NEG_INF, l0 = 0.f, l1 = 0.f;  // l: this thread's partial sums

    // The tiles of this row block.
    int n_range_tiles, n_cols = 0;
    const int lane_id = bh * n_rows + row_block;
    if (use_lists) {
        n_range_tiles = block_count[lane_id];
        n_cols = column_count[lane_id];
    } else {
        const int last_row = min(q_len, (row_block + 1) * BLOCK_M) - 1;
        const int n_keys = causal ? max(0, min(kv_len, last_row + off + 1)) : kv_len;
        n_range_tiles = (n_keys + BLOCK_N - 1) / BLOCK_N;
    }
    const int n_tiles = n_range_tiles + (n_cols + BLOCK_N - 1) / BLOCK_N;

    // Which keys tile `tile` holds, into kidx[stage] (threads 0..63, one key each).
    auto tile_keys = [&](int tile, int stage) {
        if (tid < BLOCK_N) {
            int key;
            if (tile < n_range_tiles) {
                const int start = use_lists ? block_offset[(long long)lane_id * blk_cap + tile] : tile * BLOCK_N;
                key = start + tid;
            } else {
                const int c = (tile - n_range_tiles) * BLOCK_N + tid;
                key = c < n_cols ? column_index[(long long)lane_id * col_cap + c] : -1;
            }
            kidx[stage * BLOCK_N + tid] = (key >= 0 && key < kv_len) ? key : -1;
        }
    };
    // Start copying the K and V rows of kidx[stage] into that stage (zeros for absent keys).
    auto issue_tile = [&](int stage) {
        for (int i = tid; i < BLOCK_N * (D / 8); i += THREADS) {
            const int r = i / (D / 8), c = (i % (D / 8)) * 8;
            const int key = kidx[stage * BLOCK_N + r];
            const int bytes = key >= 0 ? 16 : 0;
            cp_async16(Ks + stage * TILE + r * LD + c, key >= 0 ? Kb + key * skn + c : Kb, bytes);
            cp_async16(Vs + stage * TILE + r * LD + c, key >= 0 ? Vb + key * svn + c : Vb, bytes);
        }
        cp_async_commit();
    };

    // Two stages: tile i + 1 is copied while tile i is computed.
    if (n_tiles > 0) {
        tile_keys(0, 0);
        __syncthreads();
        issue_tile(0);
    }
    for (int tile = 0; tile < n_tiles; ++tile) {
        const int stage = tile & 1;
        if (tile + 1 < n_tiles) {
            tile_keys(tile + 1, stage ^ 1);  // that stage was consumed by the previous tile
            __syncthreads();
            issue_tile(stage ^ 1);
            cp_async_wait<1>();  // this tile's copies are done (the next tile's may be in flight)
        } else {
            cp_async_wait<0>();
        }
        __syncthreads();
        const u16* Kt = Ks + stage * TILE;
        const u16* Vt = Vs + stage * TILE;
        const int* keys = kidx + stage * BLOCK_N;

        // S = Q K^T for this warp's 16 rows: 8 n-blocks of 8 keys.
        float s[BLOCK_N / 8][4];
        for (int nb = 0; nb < BLOCK_N / 8; ++nb) {
            s[nb][0] = s[nb][1] = s[nb][2] = s[nb][3] = 0.f;
            const u16* kr = Kt + (nb * 8 + g) * LD + 2 * t;
            for (int kk = 0; kk < KSTEPS; ++kk) mma_16816<BF16>(s[nb], qf[kk], load_u32(kr + kk * 16), load_u32(kr + kk * 16 + 8));
        }
        // Scale to base 2, hide the keys a row may not see, and the row maxima.
        float mx0 = NEG_INF, mx1 = NEG_INF;
        for (int nb = 0; nb < BLOCK_N / 8; ++nb) {
            for (int e = 0; e < 2; ++e) {
                const int key = keys[nb * 8 + 2 * t + e];
                const bool ok0 = key >= 0 && (!causal || key <= pos0);
                const bool ok1 = key >= 0 && (!causal || key <= pos1);
                s[nb][e] = ok0 ? s[nb][e] * qk_scale_log2 : NEG_INF;
                s[nb][2 + e] = ok1 ? s[nb][2 + e] * qk_scale_log2 : NEG_INF;
                mx0 = fmaxf(mx0, s[nb][e]);
                mx1 = fmaxf(mx1, s[nb][2 + e]);
            }
        }
        mx0 = fmaxf(mx0, __shfl_xor_sync(0xffffffff, mx0, 1));
        mx0 = fmaxf(mx0, __shfl_xor_sync(0xffffffff, mx0, 2));
        mx1 = fmaxf(mx1, __shfl_xor_sync(0xffffffff, mx1, 1));
        mx1 = fmaxf(mx1, __shfl_xor_sync(0xffffffff, mx1, 2));
        const float mn0 = fmaxf(m0, mx0), mn1 = fmaxf(m1, mx1);
        const float base0 = mn0 == NEG_INF ? 0.f : mn0;  // a row with no key so far
        const float base1 = mn1 == NEG_INF ? 0.f : mn1;
        const float alpha0 = exp2f(m0 - base0), alpha1 = exp2f(m1 - base1);
        m0 = mn0;
        m1 = mn1;
        l0 *= alpha0;
        l1 *= alpha1;
        for (int i = 0; i < DBLK; ++i) {
            o[i][0] *= alpha0;
            o[i][1] *= alpha0;
            o[i][2] *= alpha1;
            o[i][3] *= alpha1;
        }
        // P = 2^(s - m) as 16-bit A fragments (the C layout of S), then O += P V.
        unsigned pf[BLOCK_N / 16][4];
        for (int nb = 0; nb < BLOCK_N / 8; ++nb) {
            const float p0 = exp2f(s[nb][0] - base0), p1 = exp2f(s[nb][1] - base0);
            const float p2 = exp2f(s[nb][2] - base1), p3 = exp2f(s[nb][3] - base1);
            l0 += p0 + p1;
            l1 += p2 + p3;
            pf[nb / 2][(nb % 2) * 2 + 0] = pack2<BF16>(p0, p1);
            pf[nb / 2][(nb % 2) * 2 + 1] = pack2<BF16>(p2, p3);
        }
        for (int ks = 0; ks < BLOCK_N / 16; ++ks) {
            const u16* vr = Vt + (ks * 16 + (lane & 15)) * LD;  // lanes 0-15 address the 16 key rows
            for (int db = 0; db < DBLK; ++db) {
                unsigned b0, b1;
                ldmatrix_x2_trans(b0, b1, vr + db * 8);
                mma_16816<BF16>(o[db], pf[ks], b0, b1);
            }
        }
        __syncthreads();  // every warp is done with this stage before it is refilled
    }

    l0 += __shfl_xor_sync(0xffffffff, l0, 1);
    l0 += __shfl_xor_sync(0xffffffff, l0, 2);
    l1 += __shfl_xor_sync(0xffffffff, l1, 1);
    l1 += __shfl_xor_sync(0xffffffff, l1, 2);
    const float inv0 = l0 > 0.f ? 1.f / l0 : 0.f, inv1 = l1 > 0.f ? 1.f / l1 : 0.f;
    u16* Ob = Out + ((long long)bh * q_len) * D;  // out is (B, Hq, Tq, D) contiguous
    for (int db = 0; db < DBLK; ++db) {
        const int c = db * 8 + 2 * t;
        if (row0 < q_len) *reinterpret_cast<unsigned*>(Ob + (long long)row0 * D + c) = pack2<BF16>(o[db][0] * inv0, o[db][1] * inv0);
        if (row1 < q_len) *reinterpret_cast<unsigned*>(Ob + (long long)row1 * D + c) = pack2<BF16>(o[db][2] * inv1, o[db][3] * inv1);
    }
    if (t == 0) {
        const float ln2 = 0.6931471805599453f;
        if (row0 < q_len) Lse[(long long)bh * q_len + row0] = l0 > 0.f ? (m0 + log2f(l0)) * ln2 : NEG_INF;
        if (row1 < q_len) Lse[(long long)bh * q_len + row1] = l1 > 0.f ? (m1 + log2f(l1)) * ln2 : NEG_INF;
    }
}
