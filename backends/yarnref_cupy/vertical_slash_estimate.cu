// The vertical-slash estimation's scores, fused (spec: yarnref.sparse.vertical_slash_indices).
//
// MInference 1.0 (Jiang et al., arXiv:2407.02490), section 3: from the last m
// queries' softmax A (rows r = 0 .. m-1 at positions p_r = kv_len - m + r,
// causal among themselves), a head's column scores are
//     vertical[j] = sum_r A[r, j]
// and its diagonal scores (distance delta = p_r - j)
//     slash[delta] = sum_r A[r, p_r - delta]   (0 where p_r - delta < 0).
//
// The array-code form materialises A, a gathered copy of it for the
// diagonals, and their masks: about ten passes over (heads, m, kv_len)
// numbers.  Here the logits l (heads, m, kv_len), straight from the matmul,
// are read three times and nothing of their size is written:
//   yarnref_vs_row_stats:   one block per row: the row's max and sum of
//                           exp(l * scale - max) over its visible keys
//                           (an online softmax over the row);
//   yarnref_vs_scores:      one thread per (head, j): both sums above, the
//                           probabilities recomputed from l and the row stats.
// T is the compute dtype (float for 16-bit and float32 inputs, double for
// float64), the one the array code computes in.

template <typename T> __device__ __forceinline__ T yarnref_exp(T x);
template <> __device__ __forceinline__ float yarnref_exp<float>(float x) { return expf(x); }
template <> __device__ __forceinline__ double yarnref_exp<double>(double x) { return exp(x); }

#define YARNREF_VS_THREADS 256

// logits: (rows_total = heads * m, kv_len), row-major.  Row g = head * m + r sees keys j <= kv_len - m + r.
// row_max, row_sum: (rows_total,).
template <typename T>
__global__ void __launch_bounds__(YARNREF_VS_THREADS) yarnref_vs_row_stats(
    const T* __restrict__ logits, T* __restrict__ row_max, T* __restrict__ row_sum,
    long long kv_len, int m, T scale)
{
    __shared__ T s_max[YARNREF_VS_THREADS];
    __shared__ T s_sum[YARNREF_VS_THREADS];
    const long long g = blockIdx.x;
    const int r = (int)(g % m);
    const long long visible = kv_len - m + r + 1;  // keys 0 .. p_r
    const T* row = logits + g * kv_len;
    // (mx, sum) of the keys seen so far; sum == 0 means none yet (after the first key sum >= 1).
    T mx = (T)0, sum = (T)0;
    for (long long j = threadIdx.x; j < visible; j += YARNREF_VS_THREADS) {
        const T x = row[j] * scale;
        if (sum == (T)0) {
            mx = x;
            sum = (T)1;
        } else if (x > mx) {
            sum = sum * yarnref_exp<T>(mx - x) + (T)1;
            mx = x;
        } else {
            sum += yarnref_exp<T>(x - mx);
        }
    }
    s_max[threadIdx.x] = mx;
    s_sum[threadIdx.x] = sum;
    __syncthreads();
    for (int stride = YARNREF_VS_THREADS / 2; stride > 0; stride >>= 1) {
        if (threadIdx.x < stride) {
            const T m1 = s_max[threadIdx.x], m2 = s_max[threadIdx.x + stride];
            const T s1 = s_sum[threadIdx.x], s2 = s_sum[threadIdx.x + stride];
            if (s1 == (T)0) {  // this half saw no key: take the other's state
                s_max[threadIdx.x] = m2;
                s_sum[threadIdx.x] = s2;
            } else if (s2 != (T)0) {
                const T mm = m1 > m2 ? m1 : m2;
                s_max[threadIdx.x] = mm;
                s_sum[threadIdx.x] = s1 * yarnref_exp<T>(m1 - mm) + s2 * yarnref_exp<T>(m2 - mm);
            }
        }
        __syncthreads();
    }
    if (threadIdx.x == 0) {
        row_max[g] = s_max[0];
        row_sum[g] = s_sum[0];  // >= 1 (every row sees its own key)
    }
}

// vertical, slash: (heads, kv_len).  One thread per (head, j); the loop runs over the m rows.
// Reads of row r at j (vertical) and at p_r - j (slash) are both contiguous across a warp.
template <typename T>
__global__ void __launch_bounds__(YARNREF_VS_THREADS) yarnref_vs_scores(
    const T* __restrict__ logits, const T* __restrict__ row_max, const T* __restrict__ row_sum,
    T* __restrict__ vertical, T* __restrict__ slash, long long heads, long long kv_len, int m, T scale)
{
    const long long idx = (long long)blockIdx.x * YARNREF_VS_THREADS + threadIdx.x;
    if (idx >= heads * kv_len) return;
    const long long h = idx / kv_len;
    const long long j = idx - h * kv_len;
    T v = (T)0, s = (T)0;
    for (int r = 0; r < m; ++r) {
        const long long g = h * m + r;
        const long long p = kv_len - m + r;  // the row's position
        const T* row = logits + g * kv_len;
        const T mx = row_max[g], denom = row_sum[g];
        if (j <= p) {
            v += yarnref_exp<T>(row[j] * scale - mx) / denom;  // column j, visible to row r
            s += yarnref_exp<T>(row[p - j] * scale - mx) / denom;  // diagonal j: key p - j >= 0
        }
    }
    vertical[idx] = v;
    slash[idx] = s;
}
