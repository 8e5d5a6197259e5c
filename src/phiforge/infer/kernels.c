/* Batch-1 fp32 matrix-vector product for CPU decode: y = W x (+ b), W row-major (out, in).
 *
 * Decode at batch 1 is bound by streaming weights from memory. PyTorch's BLAS path reaches 12-17 GB/s
 * on this kind of machine for a whole model's worth of weights; this loop, auto-vectorised by gcc
 * (-O3 -march=native) with two 16-lane accumulators per row and rows split across OpenMP threads,
 * reaches ~23 GB/s (benchmarks/RESULTS.md). It links the same libgomp.so.1 that torch has loaded,
 * so both share one thread pool. Built on first use by kernels.py; plain C, no torch headers. */
#include <math.h>
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

/* One Phi-3 decoder layer for a single token (batch 1, fp32), llama.cpp-style: everything between two
 * layers in one call, because at this size the ~35 PyTorch dispatches per layer cost more than the math.
 * x: residual stream (H), updated in place. k_cache/v_cache: this layer's (nkv, max_len, hd) slab.
 * cos/sin: this position's half-size rotary rows (attention scaling already folded in, as in rope.py).
 * Same formulas and order as transformers' Phi3DecoderLayer; sums are reassociated (vector lanes). */
static void rms_norm(const float *x, const float *w, float *out, int64_t n, float eps) {
    float ss = 0.f;
    for (int64_t i = 0; i < n; ++i) ss += x[i] * x[i];
    const float r = 1.0f / sqrtf(ss / (float)n + eps);
    for (int64_t i = 0; i < n; ++i) out[i] = w[i] * (x[i] * r);
}

static void rope(float *v, const float *cos, const float *sin, int64_t half) {
    for (int64_t i = 0; i < half; ++i) {
        const float x1 = v[i], x2 = v[i + half];
        v[i] = x1 * cos[i] - x2 * sin[i];
        v[i + half] = x2 * cos[i] + x1 * sin[i];
    }
}

void phi3_decode_layer(float *x, const float *ln1, const float *wqkv, const float *wo, const float *ln2,
                       const float *wgu, const float *wdown, float *k_cache, float *v_cache, const float *cos,
                       const float *sin, int64_t pos, int64_t H, int64_t I, int64_t nh, int64_t nkv, int64_t hd,
                       int64_t rd, int64_t max_len, int64_t window, float eps, float *scratch, int nthreads) {
    float *h = scratch;                      /* H */
    float *qkv = h + H;                      /* (nh + 2 nkv) hd */
    float *att = qkv + (nh + 2 * nkv) * hd;  /* nh hd */
    float *o = att + nh * hd;                /* H */
    float *gu = o + H;                       /* 2 I */
    float *scores = gu + 2 * I;              /* nh (pos + 1) */
    const int64_t half = rd / 2, group = nh / nkv, L = pos + 1;
    const int64_t t0 = window > 0 && L > window ? L - window : 0; /* sliding window: last W keys */
    const float scale = 1.0f / sqrtf((float)hd);

    rms_norm(x, ln1, h, H, eps);
    gemv_f32(h, wqkv, 0, qkv, (nh + 2 * nkv) * hd, H, nthreads);
    for (int64_t j = 0; j < nh + nkv; ++j) rope(qkv + j * hd, cos, sin, half);
    for (int64_t g = 0; g < nkv; ++g) {
        const float *k = qkv + (nh + g) * hd, *v = qkv + (nh + nkv + g) * hd;
        for (int64_t d = 0; d < hd; ++d) {
            k_cache[(g * max_len + pos) * hd + d] = k[d];
            v_cache[(g * max_len + pos) * hd + d] = v[d];
        }
    }
#pragma omp parallel for schedule(static) num_threads(nthreads)
    for (int64_t head = 0; head < nh; ++head) {
        const float *q = qkv + head * hd;
        const float *kc = k_cache + (head / group) * max_len * hd, *vc = v_cache + (head / group) * max_len * hd;
        float *s = scores + head * L, *out = att + head * hd, mx = -INFINITY, sum = 0.f;
        for (int64_t t = t0; t < L; ++t) {
            float d = 0.f;
            for (int64_t e = 0; e < hd; ++e) d += q[e] * kc[t * hd + e];
            s[t] = d * scale;
            mx = s[t] > mx ? s[t] : mx;
        }
        for (int64_t t = t0; t < L; ++t) sum += (s[t] = expf(s[t] - mx));
        for (int64_t e = 0; e < hd; ++e) out[e] = 0.f;
        for (int64_t t = t0; t < L; ++t) {
            const float p = s[t] / sum;
            for (int64_t e = 0; e < hd; ++e) out[e] += p * vc[t * hd + e];
        }
    }
    gemv_f32(att, wo, 0, o, H, nh * hd, nthreads);
    for (int64_t i = 0; i < H; ++i) x[i] += o[i];
    rms_norm(x, ln2, h, H, eps);
    gemv_f32(h, wgu, 0, gu, 2 * I, H, nthreads);
    for (int64_t i = 0; i < I; ++i) {
        const float g = gu[i];
        gu[i] = gu[I + i] * (g / (1.0f + expf(-g)));
    }
    gemv_f32(gu, wdown, 0, o, H, I, nthreads);
    for (int64_t i = 0; i < H; ++i) x[i] += o[i];
}
