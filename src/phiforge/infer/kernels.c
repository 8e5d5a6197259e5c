/* Batch-1 fp32 matrix-vector product for CPU decode: y = W x (+ b), W row-major (out, in).
 *
 * Decode at batch 1 is bound by streaming weights from memory. PyTorch's BLAS path reaches 12-17 GB/s
 * on this kind of machine for a whole model's worth of weights; this loop, auto-vectorised by gcc
 * (-O3 -march=native) with two 16-lane accumulators per row and rows split across OpenMP threads,
 * reaches ~23 GB/s (benchmarks/RESULTS.md). It links the same libgomp.so.1 that torch has loaded,
 * so both share one thread pool. Built on first use by kernels.py; plain C, no torch headers. */
#include <stdint.h>

void gemv_f32(const float *x, const float *w, const float *b, float *y, int64_t out, int64_t in, int nthreads) {
#pragma omp parallel for schedule(static) num_threads(nthreads)
    for (int64_t r = 0; r < out; ++r) {
        const float *wr = w + r * in;
        float acc0[16] = {0}, acc1[16] = {0};
        int64_t j = 0;
        for (; j + 32 <= in; j += 32) {
#pragma GCC unroll 16
            for (int l = 0; l < 16; ++l) acc0[l] += wr[j + l] * x[j + l];
#pragma GCC unroll 16
            for (int l = 0; l < 16; ++l) acc1[l] += wr[j + 16 + l] * x[j + 16 + l];
        }
        float s = 0.f;
        for (int l = 0; l < 16; ++l) s += acc0[l] + acc1[l];
        for (; j < in; ++j) s += wr[j] * x[j];
        y[r] = b ? s + b[r] : s;
    }
}
