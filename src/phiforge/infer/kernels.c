/* Batch-1 fp32 matrix-vector product for CPU decode: y = W x (+ b), W row-major (out, in).
 *
 * Decode at batch 1 is bound by streaming weights from memory. PyTorch's BLAS path reaches 12-17 GB/s
 * on this kind of machine for a whole model's worth of weights; this loop, auto-vectorised by gcc
 * (-O3 -march=native) with two 16-lane accumulators per row and rows split across OpenMP threads,
 * reaches ~23 GB/s (benchmarks/RESULTS.md). It links the same libgomp.so.1 that torch has loaded,
 * so both share one thread pool. Built on first use by kernels.py; plain C, no torch headers. */
#include <math.h>
#include <stdint.h>
#include <string.h>

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

/* ---- weight-only int8/int4, group-wise, batch 1..M (infer/quant.py holds the format) ----------------
 * Row r of a quantized weight is K/G groups; weight j of group g is w = s[g] * q_j + m[g] (s, m fp16).
 * int4: q in 0..15, 16 bytes per 32 weights, byte j = q[j] | q[j + 16] << 4 (llama.cpp's Q4_0 order).
 * int8: q in -127..127, one signed byte each.
 * Decode is bound by streaming weights, so the activation row is quantized to int8 per group
 * (x ~ d[g] * xq) and each group's dot product is an integer one: sum_j w_j x_j =
 * s[g] d[g] sum_j q_j xq_j + m[g] xs[g], with xs[g] = d[g] sum_j xq_j (exactly dequant(W) . dequant(x)).
 * AVX2 does 32 products per maddubs; reading 1/8 (int4) or 1/4 (int8) of fp32's bytes is the win.
 * The instruction set is chosen at build time from the compiler's macros (-march=native, or the flags in
 * PHIFORGE_KERNEL_FLAGS): AVX-512 VNNI (dpbusd: 32 products summed into int32 in one instruction, 256-bit
 * through AVX512VL), else AVX2 (maddubs + madd), else plain C. `kernel_isa()` names the one built. */
#if defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
#include <immintrin.h>
#define PF_AVX2 1
#if defined(__AVX512VNNI__) && defined(__AVX512VL__) && defined(__AVX512BW__)
#define PF_VNNI 1
#endif
#endif

const char *kernel_isa(void) {
#if defined(PF_VNNI)
    return "avx512vnni";
#elif defined(PF_AVX2)
    return "avx2";
#else
    return "scalar";
#endif
}

static inline float h2f(uint16_t h) {
#ifdef PF_AVX2
    return _cvtsh_ss(h);
#else
    uint32_t sign = (uint32_t)(h & 0x8000) << 16, e = (h >> 10) & 0x1f, m = h & 0x3ff, f;
    if (e == 0) {
        if (m == 0) {
            f = sign;
        } else { /* subnormal half: normalise */
            e = 113;
            while (!(m & 0x400)) { m <<= 1; e--; }
            f = sign | (e << 23) | ((m & 0x3ff) << 13);
        }
    } else if (e == 31) {
        f = sign | 0x7f800000u | (m << 13);
    } else {
        f = sign | ((e + 112) << 23) | (m << 13);
    }
    float r;
    memcpy(&r, &f, 4);
    return r;
#endif
}

/* x (K) -> xq (K), d (ng), xs (ng), groups of G */
static void quantize_act(const float *x, int8_t *xq, float *d, float *xs, int64_t K, int64_t G) {
    for (int64_t g = 0; g < K / G; ++g) {
        const float *xg = x + g * G;
        float amax = 0.f;
        for (int64_t j = 0; j < G; ++j) amax = fmaxf(amax, fabsf(xg[j]));
        const float dd = amax / 127.f, id = dd > 0.f ? 1.f / dd : 0.f;
        int32_t sum = 0;
        for (int64_t j = 0; j < G; ++j) {
            const int v = (int)nearbyintf(xg[j] * id);
            xq[g * G + j] = (int8_t)v;
            sum += v;
        }
        d[g] = dd;
        xs[g] = dd * (float)sum;
    }
}

#ifdef PF_AVX2
/* 16 bytes of int4 (32 weights, Q4_0 order) -> 32 bytes 0..15: low nibbles in the low lane, high in the high */
static inline __m256i unpack4(const uint8_t *p) {
    const __m256i b = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)p));
    return _mm256_and_si256(_mm256_srlv_epi64(b, _mm256_set_epi64x(4, 4, 0, 0)), _mm256_set1_epi8(0x0f));
}

/* acc (8 x int32) += sums of 4 adjacent products ax * (w with x's sign): signed x signed as unsigned |x| x signed
 * (both in -127..127, so a maddubs pair, <= 2 * 127 * 127, never saturates) */
static inline __m256i dot8(__m256i acc, __m256i ax, __m256i w, __m256i x) {
#ifdef PF_VNNI
    return _mm256_dpbusd_epi32(acc, ax, _mm256_sign_epi8(w, x));
#else
    return _mm256_add_epi32(acc, _mm256_madd_epi16(_mm256_maddubs_epi16(ax, _mm256_sign_epi8(w, x)), _mm256_set1_epi16(1)));
#endif
}

/* int4 units: w unsigned 0..15, x signed. VNNI sums into int32; AVX2's maddubs gives int16 pair sums (<= 2 * 15 *
 * 127 = 3810), which callers add up over <= 8 units and widen (WIDEN4) */
#ifdef PF_VNNI
#define WIDEN4 0
static inline __m256i dot4(__m256i acc, __m256i w, __m256i x) { return _mm256_dpbusd_epi32(acc, w, x); }
#else
#define WIDEN4 1
static inline __m256i dot4(__m256i acc, __m256i w, __m256i x) {
    return _mm256_add_epi16(acc, _mm256_maddubs_epi16(w, x));
}
#endif

static inline float hsum8(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

/* sum_g m[g] xs[g]: the mins' share of a row's dot product, 8 groups per step (dot_q and the tiles share it,
 * so a row's result has the same bits whether it is decoded alone or in a batch) */
static inline float mins_dot(const uint16_t *m, const float *xs, int64_t ng) {
    __m256 t = _mm256_setzero_ps();
    int64_t g = 0;
    for (; g + 8 <= ng; g += 8)
        t = _mm256_fmadd_ps(_mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(m + g))), _mm256_loadu_ps(xs + g), t);
    float r = hsum8(t);
    for (; g < ng; ++g) r += h2f(m[g]) * xs[g];
    return r;
}
#endif

#ifdef PF_AVX2
/* dot_q for 32-weight groups: straight-line, the scales of 8 groups converted at a time (same sums, same bits) */
static inline __attribute__((always_inline)) float dot_q32(const uint8_t *w, const uint16_t *s, const uint16_t *m,
                                                           const int8_t *xq, const float *d, const float *xs,
                                                           int64_t ng, const int bits) {
    __m256 acc = _mm256_setzero_ps();
    float sc[8];
    for (int64_t g = 0; g < ng; ++g) {
        if (g % 8 == 0 && g + 8 <= ng)
            _mm256_storeu_ps(sc, _mm256_mul_ps(_mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(s + g))),
                                               _mm256_loadu_ps(d + g)));
        const float scale = g - g % 8 + 8 <= ng ? sc[g % 8] : h2f(s[g]) * d[g];
        const __m256i xv = _mm256_loadu_si256((const __m256i *)(xq + g * 32)), zero = _mm256_setzero_si256();
        __m256i p;
        if (bits == 4) {
            p = dot4(zero, unpack4(w + g * 16), xv);
            if (WIDEN4) p = _mm256_madd_epi16(p, _mm256_set1_epi16(1));
        } else {
            p = dot8(zero, _mm256_sign_epi8(xv, xv), _mm256_loadu_si256((const __m256i *)(w + g * 32)), xv);
        }
        acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p), _mm256_set1_ps(scale), acc);
    }
    return hsum8(acc) + mins_dot(m, xs, ng);
}
#endif

static float dot_q(const uint8_t *w, const uint16_t *s, const uint16_t *m, const int8_t *xq, const float *d,
                   const float *xs, int64_t K, int64_t G, int bits) {
    const int64_t ng = K / G, upg = G / 32; /* 32-weight units per group */
#ifdef PF_AVX2
    if (upg == 1) /* G = 32 (GGUF's Q4_0/Q4_1/Q8_0) */
        return bits == 4 ? dot_q32(w, s, m, xq, d, xs, ng, 4) : dot_q32(w, s, m, xq, d, xs, ng, 8);
    __m256 acc = _mm256_setzero_ps();
    for (int64_t g = 0; g < ng; ++g) {
        __m256i isum = _mm256_setzero_si256();
        if (bits == 4) {
            for (int64_t u0 = 0; u0 < upg; u0 += 8) { /* WIDEN4: int16 sums of <= 8 units */
                __m256i p = _mm256_setzero_si256();
                for (int64_t u = u0; u < upg && u < u0 + 8; ++u) {
                    const int64_t k = g * upg + u;
                    p = dot4(p, unpack4(w + k * 16), _mm256_loadu_si256((const __m256i *)(xq + k * 32)));
                }
                isum = _mm256_add_epi32(isum, WIDEN4 ? _mm256_madd_epi16(p, _mm256_set1_epi16(1)) : p);
            }
        } else {
            for (int64_t u = 0; u < upg; ++u) {
                const int64_t k = g * upg + u;
                const __m256i xv = _mm256_loadu_si256((const __m256i *)(xq + k * 32));
                const __m256i wv = _mm256_loadu_si256((const __m256i *)(w + k * 32));
                isum = dot8(isum, _mm256_sign_epi8(xv, xv), wv, xv);
            }
        }
        acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum), _mm256_set1_ps(h2f(s[g]) * d[g]), acc);
    }
    return hsum8(acc) + mins_dot(m, xs, ng);
#else
    float acc = 0.f, tail = 0.f;
    for (int64_t g = 0; g < ng; ++g) {
        int32_t isum = 0;
        for (int64_t u = 0; u < upg; ++u) {
            const int64_t k = g * upg + u;
            const int8_t *xu = xq + k * 32;
            if (bits == 4) {
                const uint8_t *b = w + k * 16;
                for (int j = 0; j < 16; ++j) isum += (b[j] & 15) * xu[j] + (b[j] >> 4) * xu[j + 16];
            } else {
                const int8_t *b = (const int8_t *)w + k * 32;
                for (int j = 0; j < 32; ++j) isum += b[j] * xu[j];
            }
        }
        acc += h2f(s[g]) * d[g] * (float)isum;
        tail += h2f(m[g]) * xs[g];
    }
    return acc + tail;
#endif
}

#ifdef PF_AVX2
/* Many rows (prefill, batched decode): an MR x NR tile of outputs (MR activation rows, NR weight rows) is
 * computed together, so each 32-weight unit is unpacked once for MR activation rows and each activation unit
 * loaded once for NR weight rows; the MR x NR accumulators live in registers. Per group the integer sums
 * become fp32 once (int4 on AVX2: int16 sums of up to 8 maddubs units, as in dot_q). */
#ifndef PF_MR
#define PF_MR 4
#endif
#ifndef PF_NR
#define PF_NR 2
#endif
_Static_assert(PF_MR <= 8, "kernels.py's qscratch() pads activation rows to a multiple of 8");

static inline __attribute__((always_inline)) void tile_q(const uint8_t *const *wr, const float *const *sr,
                                                         const int8_t *xq, const float *d, int64_t K, int64_t G,
                                                         const int bits, __m256 acc[PF_MR][PF_NR]) {
    const int64_t ng = K / G, upg = G / 32;
    for (int i = 0; i < PF_MR; ++i)
        for (int r = 0; r < PF_NR; ++r) acc[i][r] = _mm256_setzero_ps();
    for (int64_t g = 0; g < ng; ++g) {
        __m256 sc[PF_MR][PF_NR];
        for (int i = 0; i < PF_MR; ++i)
            for (int r = 0; r < PF_NR; ++r) sc[i][r] = _mm256_set1_ps(sr[r][g] * d[i * ng + g]);
        __m256i p[PF_MR][PF_NR]; /* int32 sums, or int16 sums of <= 8 units (WIDEN4) */
        for (int i = 0; i < PF_MR; ++i)
            for (int r = 0; r < PF_NR; ++r) p[i][r] = _mm256_setzero_si256();
        for (int64_t u = 0; u < upg; ++u) {
            const int64_t k = g * upg + u;
            __m256i wv[PF_NR];
            for (int r = 0; r < PF_NR; ++r)
                wv[r] = bits == 4 ? unpack4(wr[r] + k * 16) : _mm256_loadu_si256((const __m256i *)(wr[r] + k * 32));
            for (int i = 0; i < PF_MR; ++i) {
                const __m256i xv = _mm256_loadu_si256((const __m256i *)(xq + i * K + k * 32));
                const __m256i ax = _mm256_sign_epi8(xv, xv);
                for (int r = 0; r < PF_NR; ++r)
                    p[i][r] = bits == 4 ? dot4(p[i][r], wv[r], xv) : dot8(p[i][r], ax, wv[r], xv);
            }
            if (bits == 4 && WIDEN4 && ((u & 7) == 7 || u == upg - 1)) /* int16 -> int32 before overflow */
                for (int i = 0; i < PF_MR; ++i)
                    for (int r = 0; r < PF_NR; ++r) {
                        const __m256i s32 = _mm256_madd_epi16(p[i][r], _mm256_set1_epi16(1));
                        acc[i][r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(s32), sc[i][r], acc[i][r]);
                        p[i][r] = _mm256_setzero_si256();
                    }
        }
        if (bits == 8 || !WIDEN4)
            for (int i = 0; i < PF_MR; ++i)
                for (int r = 0; r < PF_NR; ++r)
                    acc[i][r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p[i][r]), sc[i][r], acc[i][r]);
    }
}

/* rows i0.. (a multiple of PF_MR, padded with zero rows) x weight rows r0..r0+PF_NR (the last tile repeats
 * row N-1 and drops it) */
static void qgemm_tiles(const uint8_t *w, const uint16_t *s, const uint16_t *m, const float *b, float *y,
                        const int8_t *xq, const float *d, const float *xs, int64_t M, int64_t i0, int64_t i1,
                        int64_t r0, int64_t N, int64_t K, int64_t G, int bits) {
    const int64_t ng = K / G, row_bytes = bits == 4 ? K / 2 : K;
    const uint8_t *wr[PF_NR];
    const uint16_t *mr[PF_NR];
    float sf[PF_NR][ng]; /* the rows' scales in fp32 once, not once per tile of activation rows */
    const float *sr[PF_NR];
    for (int r = 0; r < PF_NR; ++r) {
        const int64_t rr = r0 + r < N ? r0 + r : N - 1;
        wr[r] = w + rr * row_bytes, mr[r] = m + rr * ng, sr[r] = sf[r];
        for (int64_t g = 0; g < ng; ++g) sf[r][g] = h2f(s[rr * ng + g]);
    }
    for (int64_t i = i0; i < i1; i += PF_MR) {
        __m256 acc[PF_MR][PF_NR];
        if (bits == 4)
            tile_q(wr, sr, xq + i * K, d + i * ng, K, G, 4, acc);
        else
            tile_q(wr, sr, xq + i * K, d + i * ng, K, G, 8, acc);
        for (int ii = 0; ii < PF_MR && i + ii < M; ++ii)
            for (int r = 0; r < PF_NR && r0 + r < N; ++r) {
                const float v = hsum8(acc[ii][r]) + mins_dot(mr[r], xs + (i + ii) * ng, ng); /* as dot_q */
                y[(i + ii) * N + r0 + r] = b ? v + b[r0 + r] : v;
            }
    }
}
#endif

/* y (M, N) = x (M, K) . dequant(W (N, K))^T (+ b). qscratch: >= Mp K bytes + 2 Mp (K / G) floats + 64, with
 * Mp = M rounded up to a multiple of 8 (the tiles read whole tiles of rows). Weight rows are split across
 * threads; with one row each is a dot_q (it stays in L1), with more rows they go through MR x NR tiles, the
 * activation rows in chunks that stay in L2 while every weight tile passes over them. */
void qgemm(const float *x, const uint8_t *w, const uint16_t *s, const uint16_t *m, const float *b, float *y,
           int64_t M, int64_t N, int64_t K, int64_t G, int bits, void *qscratch, int nthreads) {
    const int64_t ng = K / G, row_bytes = bits == 4 ? K / 2 : K;
#ifdef PF_AVX2
    const int64_t Mp = M > 1 ? (M + PF_MR - 1) / PF_MR * PF_MR : M;
#else
    const int64_t Mp = M;
#endif
    int8_t *xq = (int8_t *)qscratch;
    float *d = (float *)(xq + ((Mp * K + 63) & ~(int64_t)63)), *xs = d + Mp * ng;
    for (int64_t i = 0; i < M; ++i) quantize_act(x + i * K, xq + i * K, d + i * ng, xs + i * ng, K, G);
    memset(xq + M * K, 0, (Mp - M) * K);
    memset(d + M * ng, 0, (Mp - M) * ng * sizeof(float));
    memset(xs + M * ng, 0, (Mp - M) * ng * sizeof(float));
#ifdef PF_AVX2
    if (M > 1) {
        const int64_t chunk = ((256 << 10) / K + PF_MR - 1) / PF_MR * PF_MR; /* ~256 KB of int8 rows */
        for (int64_t i0 = 0; i0 < Mp; i0 += chunk) {
            const int64_t i1 = i0 + chunk < Mp ? i0 + chunk : Mp;
#pragma omp parallel for schedule(static) num_threads(nthreads)
            for (int64_t r0 = 0; r0 < N; r0 += PF_NR)
                qgemm_tiles(w, s, m, b, y, xq, d, xs, M, i0, i1, r0, N, K, G, bits);
        }
        return;
    }
#endif
#pragma omp parallel for schedule(static) num_threads(nthreads)
    for (int64_t r = 0; r < N; ++r) {
        for (int64_t i = 0; i < M; ++i) {
            const float v = dot_q(w + r * row_bytes, s + r * ng, m + r * ng, xq + i * K, d + i * ng, xs + i * ng, K,
                                  G, bits);
            y[i * N + r] = b ? v + b[r] : v;
        }
    }
}

/* q . k in 8 lanes (a plain `d += q[e] * k[e]` loop stays scalar: gcc keeps the order of float sums) */
static inline float dot_f32(const float *a, const float *b, int64_t n) {
    float acc[8] = {0};
    int64_t e = 0;
    for (; e + 8 <= n; e += 8)
#pragma GCC unroll 8
        for (int l = 0; l < 8; ++l) acc[l] += a[e + l] * b[e + l];
    float d = 0.f;
    for (int l = 0; l < 8; ++l) d += acc[l];
    for (; e < n; ++e) d += a[e] * b[e];
    return d;
}

/* one linear layer of a decode step: fp32 (bits 32, w is float) or quantized */
typedef struct {
    const void *w;
    const uint16_t *s, *m;
    int64_t G;
    int bits;
} Lin;

static void matvec(const Lin *l, const float *x, float *y, int64_t N, int64_t K, void *qscratch, int nthreads) {
    if (l->bits == 32)
        gemv_f32(x, (const float *)l->w, 0, y, N, K, nthreads);
    else
        qgemm(x, (const uint8_t *)l->w, l->s, l->m, 0, y, 1, N, K, l->G, l->bits, qscratch, nthreads);
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

static void decode_layer(float *x, const float *ln1, const Lin *lin, const float *ln2, float *k_cache,
                         float *v_cache, const float *cos, const float *sin, int64_t pos, int64_t H, int64_t I,
                         int64_t nh, int64_t nkv, int64_t hd, int64_t rd, int64_t max_len, int64_t window, float eps,
                         float *scratch, void *qscratch, int nthreads) {
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
    matvec(&lin[0], h, qkv, (nh + 2 * nkv) * hd, H, qscratch, nthreads);
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
            s[t] = dot_f32(q, kc + t * hd, hd) * scale;
            mx = s[t] > mx ? s[t] : mx;
        }
        for (int64_t t = t0; t < L; ++t) sum += (s[t] = expf(s[t] - mx));
        for (int64_t e = 0; e < hd; ++e) out[e] = 0.f;
        for (int64_t t = t0; t < L; ++t) {
            const float p = s[t] / sum;
            for (int64_t e = 0; e < hd; ++e) out[e] += p * vc[t * hd + e];
        }
    }
    matvec(&lin[1], att, o, H, nh * hd, qscratch, nthreads);
    for (int64_t i = 0; i < H; ++i) x[i] += o[i];
    rms_norm(x, ln2, h, H, eps);
    matvec(&lin[2], h, gu, 2 * I, H, qscratch, nthreads);
    for (int64_t i = 0; i < I; ++i) {
        const float g = gu[i];
        gu[i] = gu[I + i] * (g / (1.0f + expf(-g)));
    }
    matvec(&lin[3], gu, o, H, I, qscratch, nthreads);
    for (int64_t i = 0; i < H; ++i) x[i] += o[i];
}

void phi3_decode_layer(float *x, const float *ln1, const float *wqkv, const float *wo, const float *ln2,
                       const float *wgu, const float *wdown, float *k_cache, float *v_cache, const float *cos,
                       const float *sin, int64_t pos, int64_t H, int64_t I, int64_t nh, int64_t nkv, int64_t hd,
                       int64_t rd, int64_t max_len, int64_t window, float eps, float *scratch, int nthreads) {
    const Lin lin[4] = {{wqkv, 0, 0, 0, 32}, {wo, 0, 0, 0, 32}, {wgu, 0, 0, 0, 32}, {wdown, 0, 0, 0, 32}};
    decode_layer(x, ln1, lin, ln2, k_cache, v_cache, cos, sin, pos, H, I, nh, nkv, hd, rd, max_len, window, eps,
                 scratch, 0, nthreads);
}

/* The same layer over quantized linears: w/s/m hold (qkv, out, gate_up, down) in that order. */
void phi3_decode_layer_q(float *x, const float *ln1, const float *ln2, const void *const *w,
                         const uint16_t *const *s, const uint16_t *const *m, int64_t G, int bits, float *k_cache,
                         float *v_cache, const float *cos, const float *sin, int64_t pos, int64_t H, int64_t I,
                         int64_t nh, int64_t nkv, int64_t hd, int64_t rd, int64_t max_len, int64_t window, float eps,
                         float *scratch, void *qscratch, int nthreads) {
    Lin lin[4];
    for (int i = 0; i < 4; ++i) lin[i] = (Lin){w[i], s[i], m[i], G, bits};
    decode_layer(x, ln1, lin, ln2, k_cache, v_cache, cos, sin, pos, H, I, nh, nkv, hd, rd, max_len, window, eps,
                 scratch, qscratch, nthreads);
}
