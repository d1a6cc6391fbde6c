// Vertical-slash indices -> the block / column lists a sparse attention kernel consumes.
//
// Spec: yarnref.sparse.convert_vertical_slash_indexes (the algorithm of MInference's and
// vLLM's convert_vertical_slash_indexes, described in words in the project notes,
// dca-sparse.md section 3.2; MInference: Jiang et al., arXiv:2407.02490, Appendix C.4.2).
//
// One thread per (batch*head, row block).  For the query rows [m0, m0 + bm) of its row block a
// thread merges the slash distances (descending, so their column ranges come in ascending order)
// with the vertical columns (ascending):
//   * a slash at distance d covers the columns [e - bm, e), e = max(off + m0 + bm - d, bm),
//     off = kv_len - q_len (causal, bottom-right) or kv_len (non-causal: the queries sit after
//     every key);
//   * ranges that touch or overlap are merged (the end grows by bm at a time), the others are
//     emitted as block starts every bn columns, clipped to kv_len;
//   * a vertical column inside the current range is already covered; one before it is listed as
//     a column.
//
// Conventions: indices are int32; vertical[bh, :nv[bh]] ascending, slash[bh, :ns[bh]] descending
// (the rest is padding and never read).  Outputs: block_count[bh, row], block_offset[bh, row,
// :block_capacity], column_count[bh, row], column_index[bh, row, :column_capacity].  Nothing is
// written past a capacity: an overflow sets flags[0], an iteration past the bound that valid
// input can need sets flags[1]; the host turns either into an error.
//
// Compiled by NVRTC through CuPy's RawModule; with YARNREF_HOST_TEST defined the same row
// function compiles as plain C++, so the CPU tests run this exact code.

#ifdef YARNREF_HOST_TEST
#define YR_DEVICE static inline
#else
#define YR_DEVICE static __device__ __forceinline__
#endif

typedef long long yr_i64;

YR_DEVICE yr_i64 yr_max(yr_i64 a, yr_i64 b) { return a > b ? a : b; }

// Emit the blocks of [start, end) clipped to kv_len, one start every `step` columns.
YR_DEVICE yr_i64 yr_emit_blocks(yr_i64 start, yr_i64 end, yr_i64 step, yr_i64 kv_len, int* offsets,
                                yr_i64 count, yr_i64 capacity, int* flags) {
    if (start >= kv_len) return count;
    if (end > kv_len) end = kv_len;
    for (yr_i64 col = start; col < end; col += step) {
        if (count >= capacity) {
            flags[0] = 1;
            return count;
        }
        offsets[count++] = (int)col;
    }
    return count;
}

YR_DEVICE yr_i64 yr_add_column(yr_i64 col, int* columns, yr_i64 count, yr_i64 capacity, int* flags) {
    if (count >= capacity) {
        flags[0] = 1;
        return count;
    }
    columns[count] = (int)col;
    return count + 1;
}

// The lists of one row block.  See the file comment.
YR_DEVICE void yr_convert_row(const int* vertical, yr_i64 nv, const int* slash, yr_i64 ns, yr_i64 q_len,
                              yr_i64 kv_len, yr_i64 bm, yr_i64 bn, int causal, yr_i64 row, int* block_count,
                              int* block_offset, yr_i64 block_capacity, int* column_count, int* column_index,
                              yr_i64 column_capacity, int* flags) {
    const yr_i64 m0 = row * bm;             // first query row of the block
    const yr_i64 m1 = m0 + bm;              // one past its last row (not clipped to q_len)
    const yr_i64 off = causal ? kv_len - q_len : kv_len;
    const yr_i64 beyond = m1 + bn + off;    // a column past everything this row block can see
    yr_i64 blocks = 0, columns = 0;

    yr_i64 v = 0, s = 0;                    // next vertical / slash to read
    yr_i64 v_idx = nv > 0 ? vertical[v++] : beyond;

    // The first slash whose diagonal reaches this row block.
    int has_slash = 0;
    yr_i64 d = 0;
    if (ns > 0) {
        d = slash[s++];
        while (d >= m1 + off && s < ns) d = slash[s++];
        has_slash = !(d > m1 + off);
    }
    yr_i64 range_start, range_end;
    if (has_slash) {
        range_end = yr_max(off + m1 - d, bm);
        range_start = range_end - bm;
    } else if (causal) {
        range_start = off + m1;
        range_end = off + m1 + bn;
    } else {
        range_start = kv_len;
        range_end = kv_len + bn;
    }

    int slash_finished = 0;
    const yr_i64 bound = nv + ns + 8;       // valid input never needs more iterations
    for (yr_i64 step = 0;; ++step) {
        if (step > bound) {
            flags[1] = 1;
            break;
        }
        if (v_idx < range_end) {
            if (v_idx < range_start) columns = yr_add_column(v_idx, column_index, columns, column_capacity, flags);
            v_idx = v < nv ? vertical[v++] : beyond;
            continue;
        }
        yr_i64 e = 0;
        if (s < ns && (causal || slash[s] >= m0)) {
            e = yr_max(off + m1 - slash[s++], bm);
        } else {
            if (v == nv || (causal && v_idx > range_start)) {
                if (v == nv && !causal && v_idx < kv_len)
                    columns = yr_add_column(v_idx, column_index, columns, column_capacity, flags);
                blocks = yr_emit_blocks(range_start, range_end, bn, kv_len, block_offset, blocks, block_capacity, flags);
                break;
            }
            if (causal) {
                range_start = off + m1;
                range_end = off + m1 + bn;
            } else {
                blocks = yr_emit_blocks(range_start, range_end, bn, kv_len, block_offset, blocks, block_capacity, flags);
                range_start = kv_len;
                range_end = kv_len + bn;
            }
            slash_finished = 1;
        }
        if (!slash_finished) {
            if (e > range_end + bm) {
                blocks = yr_emit_blocks(range_start, range_end, bn, kv_len, block_offset, blocks, block_capacity, flags);
                range_start = e - bm;
                range_end = e;
            } else if (e > range_end) {
                range_end += bm;
            }
        }
    }
    *block_count = (int)blocks;
    *column_count = (int)columns;
}

// Lane `tid` = (batch * head) * n_rows + row block: the body of one GPU thread (and of one step of the
// CPU test's loop).
YR_DEVICE void yr_convert_lane(yr_i64 tid, const int* vertical, const int* vertical_count, const int* slash,
                               const int* slash_count, yr_i64 n_bh, yr_i64 n_rows, yr_i64 nv_stride, yr_i64 ns_stride,
                               yr_i64 q_len, yr_i64 kv_len, yr_i64 bm, yr_i64 bn, int causal, int* block_count,
                               int* block_offset, yr_i64 block_capacity, int* column_count, int* column_index,
                               yr_i64 column_capacity, int* flags) {
    if (tid >= n_bh * n_rows) return;
    const yr_i64 bh = tid / n_rows, row = tid % n_rows;
    yr_convert_row(vertical + bh * nv_stride, vertical_count[bh], slash + bh * ns_stride, slash_count[bh], q_len,
                   kv_len, bm, bn, causal, row, block_count + tid, block_offset + tid * block_capacity,
                   block_capacity, column_count + tid, column_index + tid * column_capacity, column_capacity, flags);
}

#ifndef YARNREF_HOST_TEST
extern "C" __global__ void yarnref_convert_vertical_slash(
    const int* vertical, const int* vertical_count, const int* slash, const int* slash_count, yr_i64 n_bh,
    yr_i64 n_rows, yr_i64 nv_stride, yr_i64 ns_stride, yr_i64 q_len, yr_i64 kv_len, yr_i64 bm, yr_i64 bn, int causal,
    int* block_count, int* block_offset, yr_i64 block_capacity, int* column_count, int* column_index,
    yr_i64 column_capacity, int* flags) {
    yr_convert_lane((yr_i64)blockIdx.x * blockDim.x + threadIdx.x, vertical, vertical_count, slash, slash_count, n_bh,
                    n_rows, nv_stride, ns_stride, q_len, kv_len, bm, bn, causal, block_count, block_offset,
                    block_capacity, column_count, column_index, column_capacity, flags);
}
#endif
