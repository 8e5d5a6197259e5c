/* Batch-1 fp32 matrix-vector product for CPU decode: y = W x (+ b), W row-major (out, in).
 *
 * Decode at batch 1 is bound by streaming weights from memory. PyTorch's BLAS path reaches 12-17 GB/s
 * on this kind of machine for a whole model's worth of weights; this loop, auto-vectorised by gcc
 * (-O3 -march=native) with two 16-lane accumulators per row and rows split across OpenMP threads,
 * reaches ~23 GB/s (benchmarks/RESULTS.md). It links the same libgomp.so.1 that torch has loaded,
 * so both share one thread pool. Built on first use by kernels.py; plain C, no torch headers. */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
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

#ifndef PF_QACT_SCALAR /* 1: the scalar activation quantizer on AVX2 builds too (the tests compare the two) */
#define PF_QACT_SCALAR 0
#endif

#if defined(PF_AVX2) && !PF_QACT_SCALAR
/* one group of 32k activations: the scalar loop's bits (max is exact in any order and, like fmaxf, skips a
 * NaN |x|; cvtps rounds to nearest-even as nearbyintf does in the default mode; the sum is exact). A NaN
 * activation itself becomes -128 here and 0 there: garbage either way. In a one-row int4 decode the scalar loop,
 * one fmaxf call per activation, ran on the critical path before every matvec. */
static float quantize_group32(const float *xg, int8_t *xq, int64_t G, int32_t *sum) {
    const __m256 sign = _mm256_set1_ps(-0.0f);
    __m256 m = _mm256_setzero_ps();
    for (int64_t j = 0; j < G; j += 8) m = _mm256_max_ps(_mm256_andnot_ps(sign, _mm256_loadu_ps(xg + j)), m);
    __m128 h = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
    h = _mm_max_ps(h, _mm_movehl_ps(h, h));
    const float amax = _mm_cvtss_f32(_mm_max_ss(h, _mm_movehdup_ps(h)));
    const float dd = amax / 127.f, id = dd > 0.f ? 1.f / dd : 0.f;
    const __m256 iv = _mm256_set1_ps(id);
    const __m256i order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7); /* undo the packs' per-lane interleave */
    __m256i s = _mm256_setzero_si256();
    for (int64_t j = 0; j < G; j += 32) {
        __m256i v[4];
        for (int t = 0; t < 4; ++t) {
            v[t] = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(xg + j + 8 * t), iv));
            s = _mm256_add_epi32(s, v[t]);
        }
        const __m256i p = _mm256_packs_epi16(_mm256_packs_epi32(v[0], v[1]), _mm256_packs_epi32(v[2], v[3]));
        _mm256_storeu_si256((__m256i *)(xq + j), _mm256_permutevar8x32_epi32(p, order));
    }
    __m128i t = _mm_add_epi32(_mm256_castsi256_si128(s), _mm256_extracti128_si256(s, 1));
    t = _mm_add_epi32(t, _mm_shuffle_epi32(t, 0x4e));
    *sum = _mm_cvtsi128_si32(_mm_add_epi32(t, _mm_shuffle_epi32(t, 0xb1)));
    return dd;
}
#endif

/* x (K) -> xq (K), d (ng), xs (ng), groups of G */
static void quantize_act(const float *x, int8_t *xq, float *d, float *xs, int64_t K, int64_t G) {
    for (int64_t g = 0; g < K / G; ++g) {
        const float *xg = x + g * G;
        int32_t sum = 0;
        float dd;
#if defined(PF_AVX2) && !PF_QACT_SCALAR
        if (G % 32 == 0) {
            dd = quantize_group32(xg, xq + g * G, G, &sum);
        } else
#endif
        {
            float amax = 0.f;
            for (int64_t j = 0; j < G; ++j) amax = fmaxf(amax, fabsf(xg[j]));
            dd = amax / 127.f;
            const float id = dd > 0.f ? 1.f / dd : 0.f;
            for (int64_t j = 0; j < G; ++j) {
                const int v = (int)nearbyintf(xg[j] * id);
                xq[g * G + j] = (int8_t)v;
                sum += v;
            }
        }
        d[g] = dd;
        xs[g] = dd * (float)sum;
    }
}

#ifdef PF_AVX2
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

/* e^x in 8 lanes, within ~2 ulp of expf (worst relative difference 1.2e-7 over [-87, 88]) for the softmax and
 * SiLU of the native decode steps: with the 4-key scores below, a 32-row ~160M step's attention went from 27.6
 * to 22.1 ms and its SwiGLU (also threaded) from 10.7 to 0.9 ms (2 threads; RESULTS.md). x = n ln2 + r, |r| <= ln2 / 2 (ln2 split in two for an exact n ln2), e^r by a degree-7
 * polynomial (Horner, Taylor-fitted minimax coefficients), 2^n built in the exponent bits. x is clamped to
 * [-87.3, 88.7], where 2^n stays a normal float. */
static inline __m256 exp8(__m256 x) {
    x = _mm256_max_ps(_mm256_min_ps(x, _mm256_set1_ps(88.72f)), _mm256_set1_ps(-87.33f));
    const __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504f)),
                                     _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
    r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
    __m256 p = _mm256_set1_ps(1.9875691500e-4f);
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507e-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073e-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894e-2f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459e-1f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201e-1f));
    p = _mm256_fmadd_ps(p, _mm256_mul_ps(r, r), _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
    const __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
    return _mm256_mul_ps(p, _mm256_castsi256_ps(e));
}

/* sum_g m[g] xs[g]: the mins' share of a row's dot product, 8 groups per step (int8's dot_q and tiles share it,
 * int4's mins8_of sums in the same order: a row's result has the same bits whether it is decoded alone or in a batch) */
static inline float mins_dot(const uint16_t *m, const float *xs, int64_t ng) {
    __m256 t = _mm256_setzero_ps();
    int64_t g = 0;
    for (; g + 8 <= ng; g += 8)
        t = _mm256_fmadd_ps(_mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(m + g))), _mm256_loadu_ps(xs + g), t);
    float r = hsum8(t);
    for (; g < ng; ++g) r = fmaf(h2f(m[g]), xs[g], r); /* fma, as mins8_of's vector tail */
    return r;
}
#endif

#ifdef PF_AVX2
/* dot_q for 32-weight int8 groups: straight-line, the scales of 8 groups converted at a time (same sums, same bits
 * as the int8 tiles) */
static inline __attribute__((always_inline)) float dot_q32(const uint8_t *w, const uint16_t *s, const uint16_t *m,
                                                           const int8_t *xq, const float *d, const float *xs,
                                                           int64_t ng) {
    __m256 acc = _mm256_setzero_ps();
    float sc[8];
    for (int64_t g = 0; g < ng; ++g) {
        if (g % 8 == 0 && g + 8 <= ng)
            _mm256_storeu_ps(sc, _mm256_mul_ps(_mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(s + g))),
                                               _mm256_loadu_ps(d + g)));
        const float scale = g - g % 8 + 8 <= ng ? sc[g % 8] : h2f(s[g]) * d[g];
        const __m256i xv = _mm256_loadu_si256((const __m256i *)(xq + g * 32)), zero = _mm256_setzero_si256();
        const __m256i p =
            dot8(zero, _mm256_sign_epi8(xv, xv), _mm256_loadu_si256((const __m256i *)(w + g * 32)), xv);
        acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p), _mm256_set1_ps(scale), acc);
    }
    return hsum8(acc) + mins_dot(m, xs, ng);
}
#endif

static float dot_q(const uint8_t *w, const uint16_t *s, const uint16_t *m, const int8_t *xq, const float *d,
                   const float *xs, int64_t K, int64_t G, int bits) {
    const int64_t ng = K / G, upg = G / 32; /* 32-weight units per group */
#ifdef PF_AVX2
    (void)bits; /* int8 only: int4 goes through qgemm4_block */
    if (upg == 1) /* GGUF's Q8_0 (int4 on AVX2 goes through qgemm4_block) */
        return dot_q32(w, s, m, xq, d, xs, ng);
    __m256 acc = _mm256_setzero_ps();
    for (int64_t g = 0; g < ng; ++g) {
        __m256i isum = _mm256_setzero_si256();
        for (int64_t u = 0; u < upg; ++u) {
            const int64_t k = g * upg + u;
            const __m256i xv = _mm256_loadu_si256((const __m256i *)(xq + k * 32));
            const __m256i wv = _mm256_loadu_si256((const __m256i *)(w + k * 32));
            isum = dot8(isum, _mm256_sign_epi8(xv, xv), wv, xv);
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
/* int4, any number of activation rows: weight rows go in blocks of 8 and every vector holds one value per weight
 * row (lane r = row r0 + r). An activation row's 4 bytes broadcast against a vector of 4 consecutive weights of
 * each of the 8 rows give 8 rows x 4 products in one maddubs; the sums over k stay vertical (no horizontal adds)
 * and each group's scale costs one convert + one fma for 8 outputs. Per output the order is fixed, the same for
 * one activation row or many: each group's products exactly in int32, y = fma(isum[g], s[g] d[g], y) for
 * g = 0, 1, ..., then + the mins' share (mins_dot's order), + bias. One activation row reads the weights in place
 * (unpack8; gemv4_il below when QuantLinear repacked them); more rows share an int8 copy of the block unpacked once per chunk of rows (8 K bytes per thread, in
 * L1/L2): the stored weights and their layout are untouched. PF_MR4 activation rows share each loaded weight
 * vector (register tile: PF_MR4 int16 + int32 + fp32 accumulators). */
#ifndef PF_MR4
#define PF_MR4 4
#endif
#ifndef PF_CU
#define PF_CU 2 /* 4-weight chunks per iteration of the inner loop */
#endif
#ifndef PF_PREFETCH /* one activation row: 8 rows read 16 bytes at a time defeat the hardware prefetchers (a */
#define PF_PREFETCH 1 /* 9216 x 3072 matrix ran at 0.55x the one-row-at-a-time loop without this) */
#endif
#define PF_PRAGMA(x) _Pragma(#x)
#define PF_UNROLL(n) PF_PRAGMA(GCC unroll n)
_Static_assert(PF_MR4 <= 8, "kernels.py's qscratch() has 8 rows beyond M for the last tile");

/* 32-weight unit k of 8 rows (Q4_0 packing) -> v[c], c = 0..7: weights 4c..4c+3 of row r in lane r. A 4 x 4
 * transpose of the packed rows' 32-bit words (rows r and r + 4 share a register), then the nibbles: word c holds
 * weights 4c.. in its low nibbles and 16 + 4c.. in its high ones. */
static inline __attribute__((always_inline)) void unpack8(const uint8_t *const *wr, int64_t k, __m256i v[8]) {
    __m256i y[4];
    for (int r = 0; r < 4; ++r)
        y[r] = _mm256_inserti128_si256(_mm256_castsi128_si256(_mm_loadu_si128((const __m128i *)(wr[r] + k * 16))),
                                       _mm_loadu_si128((const __m128i *)(wr[r + 4] + k * 16)), 1);
    const __m256i t0 = _mm256_unpacklo_epi32(y[0], y[1]), t1 = _mm256_unpackhi_epi32(y[0], y[1]);
    const __m256i t2 = _mm256_unpacklo_epi32(y[2], y[3]), t3 = _mm256_unpackhi_epi32(y[2], y[3]);
    const __m256i p[4] = {_mm256_unpacklo_epi64(t0, t2), _mm256_unpackhi_epi64(t0, t2), _mm256_unpacklo_epi64(t1, t3),
                          _mm256_unpackhi_epi64(t1, t3)};
    const __m256i lo = _mm256_set1_epi8(0x0f);
    for (int c = 0; c < 4; ++c) {
        v[c] = _mm256_and_si256(p[c], lo);
        v[c + 4] = _mm256_and_si256(_mm256_srli_epi16(p[c], 4), lo);
    }
}

/* the 8 rows' fp16 scales and mins -> fp32 s8[g * 8 + r], m8[g * 8 + r]: 8 groups at a time, an 8 x 8 transpose of
 * 16-bit words (scales in the low lane, mins in the high) */
static void scales8(const uint16_t *const *sr, const uint16_t *const *mr, int64_t ng, float *s8, float *m8) {
    int64_t g = 0;
    for (; g + 8 <= ng; g += 8) {
        __m256i a[8], b[8], c[8];
        for (int r = 0; r < 8; ++r)
            a[r] = _mm256_inserti128_si256(_mm256_castsi128_si256(_mm_loadu_si128((const __m128i *)(sr[r] + g))),
                                           _mm_loadu_si128((const __m128i *)(mr[r] + g)), 1);
        for (int r = 0; r < 8; r += 2) { /* rows r, r+1: groups 0-3, 4-7 */
            b[r] = _mm256_unpacklo_epi16(a[r], a[r + 1]);
            b[r + 1] = _mm256_unpackhi_epi16(a[r], a[r + 1]);
        }
        for (int h = 0; h < 8; h += 4) { /* rows h..h+3: groups 0-1, 2-3, 4-5, 6-7 */
            c[h] = _mm256_unpacklo_epi32(b[h], b[h + 2]);
            c[h + 1] = _mm256_unpackhi_epi32(b[h], b[h + 2]);
            c[h + 2] = _mm256_unpacklo_epi32(b[h + 1], b[h + 3]);
            c[h + 3] = _mm256_unpackhi_epi32(b[h + 1], b[h + 3]);
        }
        for (int j = 0; j < 4; ++j) { /* groups 2j, 2j+1 of rows 0..7 */
            const __m256i e0 = _mm256_unpacklo_epi64(c[j], c[4 + j]), e1 = _mm256_unpackhi_epi64(c[j], c[4 + j]);
            _mm256_storeu_ps(s8 + (g + 2 * j) * 8, _mm256_cvtph_ps(_mm256_castsi256_si128(e0)));
            _mm256_storeu_ps(m8 + (g + 2 * j) * 8, _mm256_cvtph_ps(_mm256_extracti128_si256(e0, 1)));
            _mm256_storeu_ps(s8 + (g + 2 * j + 1) * 8, _mm256_cvtph_ps(_mm256_castsi256_si128(e1)));
            _mm256_storeu_ps(m8 + (g + 2 * j + 1) * 8, _mm256_cvtph_ps(_mm256_extracti128_si256(e1, 1)));
        }
    }
    for (; g < ng; ++g)
        for (int r = 0; r < 8; ++r) s8[g * 8 + r] = h2f(sr[r][g]), m8[g * 8 + r] = h2f(mr[r][g]);
}

/* acc[i] (lane r) = the main sum for activation row i and weight row r of the block; weights from the unpacked
 * copy vt (vt[(k * 8 + c) * 32 + 4 r + t] = q[row r][32 k + 4 c + t]) or, with vt = 0, unpacked in place */
static inline __attribute__((always_inline)) void tile4(const int8_t *vt, const uint8_t *const *wr, const float *s8,
                                                        const int8_t *xq, const float *d, int64_t K, int64_t ng,
                                                        int64_t upg, const int mr, __m256 *acc) {
    for (int i = 0; i < mr; ++i) acc[i] = _mm256_setzero_ps();
    for (int64_t g = 0; g < ng; ++g) {
        __m256i isum[PF_MR4];
        for (int i = 0; i < mr; ++i) isum[i] = _mm256_setzero_si256();
        for (int64_t u = 0; u < upg; ++u) {
            const int64_t k = g * upg + u;
            __m256i p[PF_MR4]; /* AVX2: int16, 8 chunks x 2 products x 15 x 127 <= 30480 */
            for (int i = 0; i < mr; ++i) p[i] = _mm256_setzero_si256();
            if (vt) {
                PF_UNROLL(PF_CU) /* fully unrolled, gcc computes all 8 x MR products before adding them: spills */
                for (int c = 0; c < 8; ++c) {
                    const __m256i wv = _mm256_load_si256((const __m256i *)(vt + k * 256 + c * 32));
                    for (int i = 0; i < mr; ++i) {
                        int32_t x4;
                        memcpy(&x4, xq + i * K + k * 32 + 4 * c, 4);
                        p[i] = dot4(p[i], wv, _mm256_set1_epi32(x4));
                    }
                }
            } else {
                if (PF_PREFETCH) { /* the next block's 8 rows (contiguous) in step with this one: 128 bytes a unit */
                    _mm_prefetch((const char *)(wr[0] + 8 * (K / 2) + k * 128), _MM_HINT_T0);
                    _mm_prefetch((const char *)(wr[0] + 8 * (K / 2) + k * 128 + 64), _MM_HINT_T0);
                }
                __m256i v[8];
                unpack8(wr, k, v);
                for (int c = 0; c < 8; ++c)
                    for (int i = 0; i < mr; ++i) {
                        int32_t x4;
                        memcpy(&x4, xq + i * K + k * 32 + 4 * c, 4);
                        p[i] = dot4(p[i], v[c], _mm256_set1_epi32(x4));
                    }
            }
            for (int i = 0; i < mr; ++i)
                isum[i] = _mm256_add_epi32(isum[i], WIDEN4 ? _mm256_madd_epi16(p[i], _mm256_set1_epi16(1)) : p[i]);
        }
        const __m256 sv = _mm256_loadu_ps(s8 + g * 8);
        for (int i = 0; i < mr; ++i)
            acc[i] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum[i]), _mm256_mul_ps(sv, _mm256_set1_ps(d[i * ng + g])),
                                     acc[i]);
    }
}

/* 8 floats of [g][r] mins: fp32 (m8, converted per block) or fp16 (the repacked layout, converted as read) */
static inline __attribute__((always_inline)) __m256 load_m8(const void *m, int64_t g, const int half) {
    return half ? _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)((const uint16_t *)m + g * 8)))
                : _mm256_loadu_ps((const float *)m + g * 8);
}

/* mins_dot for the 8 rows of a block at once, in mins_dot's order (lane l of mins_dot = a[l] here); the same
 * sums and bits from either layout of the mins */
static inline __attribute__((always_inline)) __m256 mins8_of(const void *m, const int half, const float *xs,
                                                             int64_t ng) {
    __m256 a[8];
    for (int l = 0; l < 8; ++l) a[l] = _mm256_setzero_ps();
    int64_t g = 0;
    for (; g + 8 <= ng; g += 8)
        for (int l = 0; l < 8; ++l) a[l] = _mm256_fmadd_ps(load_m8(m, g + l, half), _mm256_set1_ps(xs[g + l]), a[l]);
    __m256 r = _mm256_add_ps(_mm256_add_ps(_mm256_add_ps(a[0], a[4]), _mm256_add_ps(a[2], a[6])),
                             _mm256_add_ps(_mm256_add_ps(a[1], a[5]), _mm256_add_ps(a[3], a[7])));
    for (; g < ng; ++g) r = _mm256_fmadd_ps(load_m8(m, g, half), _mm256_set1_ps(xs[g]), r);
    return r;
}

/* outputs of activation row i for the block's rows that exist */
static inline void store8(float *y, const float *acc, const float *m8, const float *xs, const float *b8, int has_bias,
                          int64_t i, int64_t r0, int64_t N, int64_t ng) {
    __m256 v = _mm256_add_ps(_mm256_loadu_ps(acc), mins8_of(m8, 0, xs + i * ng, ng));
    if (has_bias) v = _mm256_add_ps(v, _mm256_loadu_ps(b8));
    float *yr = y + i * N + r0;
    if (r0 + 8 <= N) {
        _mm256_storeu_ps(yr, v);
    } else {
        float o[8];
        _mm256_storeu_ps(o, v);
        for (int r = 0; r < N - r0; ++r) yr[r] = o[r];
    }
}

/* activation rows i0..i1 (M = 1, or multiples of PF_MR4 padded with zero rows) x weight rows r0..r0+8 (the last
 * block repeats row N-1 and drops it); vt: 8 K bytes (M > 1) */
static void qgemm4_block(const uint8_t *w, const uint16_t *s, const uint16_t *m, const float *b, float *y,
                         const int8_t *xq, const float *d, const float *xs, int64_t M, int64_t i0, int64_t i1,
                         int64_t r0, int64_t N, int64_t K, int64_t G, int8_t *vt, int il) {
    const int64_t ng = K / G, upg = G / 32;
    const uint8_t *wr[8];
    const uint16_t *sr[8], *mr[8];
    float s8[ng * 8], m8[ng * 8], b8[8];
    for (int r = 0; r < 8; ++r) {
        const int64_t rr = r0 + r < N ? r0 + r : N - 1;
        wr[r] = w + rr * (K / 2), sr[r] = s + rr * ng, mr[r] = m + rr * ng, b8[r] = b ? b[rr] : 0.f;
    }
    if (PF_PREFETCH) /* the next block's scales and mins too: read cold, they stall the block's start */
        for (int64_t o = 0; o < 8 * ng * 2; o += 64) {
            _mm_prefetch((const char *)(s + (r0 + 8) * ng) + o, _MM_HINT_T0);
            _mm_prefetch((const char *)(m + (r0 + 8) * ng) + o, _MM_HINT_T0);
        }
    if (il) /* repacked: [g][r] already */
        for (int64_t i = 0; i < ng * 8; i += 8) {
            _mm256_storeu_ps(s8 + i, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(s + r0 * ng + i))));
            _mm256_storeu_ps(m8 + i, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(m + r0 * ng + i))));
        }
    else
        scales8(sr, mr, ng, s8, m8);
    if (M == 1) {
        __m256 acc;
        if (upg == 1)
            tile4(0, wr, s8, xq, d, K, ng, 1, 1, &acc);
        else
            tile4(0, wr, s8, xq, d, K, ng, upg, 1, &acc);
        float o[8];
        _mm256_storeu_ps(o, acc);
        store8(y, o, m8, xs, b8, b != 0, 0, r0, N, ng);
        return;
    }
    for (int64_t k = 0; il && k < K / 32; ++k) { /* repacked: unpack8's transpose is already done */
        const uint8_t *wk = w + r0 * (K / 2) + k * 128;
        for (int c = 0; c < 4; ++c) {
            const __m256i p = _mm256_loadu_si256((const __m256i *)(wk + c * 32)), lo = _mm256_set1_epi8(0x0f);
            _mm256_store_si256((__m256i *)(vt + k * 256 + c * 32), _mm256_and_si256(p, lo));
            _mm256_store_si256((__m256i *)(vt + k * 256 + (c + 4) * 32), _mm256_and_si256(_mm256_srli_epi16(p, 4), lo));
        }
    }
    for (int64_t k = 0; !il && k < K / 32; ++k) {
        if (PF_PREFETCH) { /* as tile4 does for one row: with a few rows the block's unpack is memory-bound too */
            _mm_prefetch((const char *)(wr[0] + 8 * (K / 2) + k * 128), _MM_HINT_T0);
            _mm_prefetch((const char *)(wr[0] + 8 * (K / 2) + k * 128 + 64), _MM_HINT_T0);
        }
        __m256i v[8];
        unpack8(wr, k, v);
        for (int c = 0; c < 8; ++c) _mm256_store_si256((__m256i *)(vt + k * 256 + c * 32), v[c]);
    }
    for (int64_t i = i0; i < i1; i += PF_MR4) {
        __m256 acc[PF_MR4];
        if (upg == 1)
            tile4(vt, wr, s8, xq + i * K, d + i * ng, K, ng, 1, PF_MR4, acc);
        else
            tile4(vt, wr, s8, xq + i * K, d + i * ng, K, ng, upg, PF_MR4, acc);
        float o[PF_MR4][8]; /* constant indices only: acc stays in registers */
        for (int ii = 0; ii < PF_MR4; ++ii) _mm256_storeu_ps(o[ii], acc[ii]);
        for (int ii = 0; ii < PF_MR4 && i + ii < M; ++ii) store8(y, o[ii], m8, xs, b8, b != 0, i + ii, r0, N, ng);
    }
}

/* int4 repacked for the kernels (quant.repack_int4, done by QuantLinear.pack_for_kernels): in each block of 8
 * weight rows, 32-weight unit k is 128 contiguous bytes [c = 0..3][row r = 0..7][4 bytes], row r's packed word c
 * in lane r (what unpack8's transpose produces), and the block's fp16 scales and mins are [g][r]. A unit is then
 * 4 vector loads and no shuffles, a group's 8 scales one load, and a block one contiguous stream. One activation
 * row works on PF_IL_NS blocks from PF_IL_NS distant parts of the matrix at once: one stream read 8-12 GB/s on
 * this VM, 8 streams 12-16. Cold weights, 1 thread, on the ~160M and Phi-3-mini shapes, the kernel alone:
 * 1.3-1.5x the stored layout's tile4. In a whole decode (RESULTS.md, eighth session) 2 and 4 streams were level
 * at 1 thread; at 2 threads 2 streams did better on the ~160M model (1.11-1.20x vs 1.03-1.06x the stored
 * layout) and 4 on the Phi-3-mini slice (1.21x vs 1.14x); streams 32-128 blocks apart were no better.
 * Per output the arithmetic and its order are tile4's and mins8_of's (the same bits). */
#ifndef PF_IL_NS
#define PF_IL_NS 2
#endif
#ifndef PF_IL_PFD /* software prefetch this many bytes ahead in each stream (0: none). Whole decode, in process, */
#define PF_IL_PFD 1024 /* over the stored layout, 1 thread: ~160M 1.11-1.14x -> 1.29-1.42x, Phi-3-mini slice 1.18x -> */
#endif                 /* 1.40x; 2 threads: 1.10x -> 1.24x and level (RESULTS.md, eighth session) */
/* ns blocks (first rows r0[j]) of one activation row; N is a multiple of 8 (pack_for_kernels packs no other) */
static inline __attribute__((always_inline)) void gemv4_il_blocks(const uint8_t *w, const uint16_t *s,
                                                                  const uint16_t *m, const float *b, float *y,
                                                                  const int8_t *xq, const float *d, const float *xs,
                                                                  const int64_t *r0, int64_t K, int64_t G,
                                                                  const int ns) {
    const int64_t ng = K / G, upg = G / 32;
    const __m256i lo = _mm256_set1_epi8(0x0f);
    __m256 acc[PF_IL_NS];
    for (int j = 0; j < ns; ++j) acc[j] = _mm256_setzero_ps();
    for (int64_t g = 0; g < ng; ++g) {
        __m256i isum[PF_IL_NS];
        for (int j = 0; j < ns; ++j) isum[j] = _mm256_setzero_si256();
        for (int64_t u = 0; u < upg; ++u) {
            const int64_t k = g * upg + u;
            __m256i pa[PF_IL_NS], pb[PF_IL_NS]; /* low and high nibbles: two dependency chains, not one */
            for (int j = 0; j < ns; ++j) {
                pa[j] = pb[j] = _mm256_setzero_si256();
                if (PF_IL_PFD) {
                    _mm_prefetch((const char *)(w + r0[j] * (K / 2) + k * 128 + PF_IL_PFD), _MM_HINT_T0);
                    _mm_prefetch((const char *)(w + r0[j] * (K / 2) + k * 128 + PF_IL_PFD + 64), _MM_HINT_T0);
                }
            }
            for (int c = 0; c < 4; ++c) {
                int32_t xa, xb;
                memcpy(&xa, xq + k * 32 + 4 * c, 4);
                memcpy(&xb, xq + k * 32 + 16 + 4 * c, 4);
                const __m256i va = _mm256_set1_epi32(xa), vb = _mm256_set1_epi32(xb);
                for (int j = 0; j < ns; ++j) {
                    const __m256i p = _mm256_loadu_si256((const __m256i *)(w + r0[j] * (K / 2) + k * 128 + c * 32));
                    pa[j] = dot4(pa[j], _mm256_and_si256(p, lo), va);
                    pb[j] = dot4(pb[j], _mm256_and_si256(_mm256_srli_epi16(p, 4), lo), vb);
                }
            }
            for (int j = 0; j < ns; ++j) /* AVX2: int16 sums, each half <= 4 x 2 x 15 x 127, together <= 30480 */
                isum[j] = _mm256_add_epi32(isum[j], WIDEN4 ? _mm256_madd_epi16(_mm256_add_epi16(pa[j], pb[j]),
                                                                               _mm256_set1_epi16(1))
                                                           : _mm256_add_epi32(pa[j], pb[j]));
        }
        const __m256 dg = _mm256_set1_ps(d[g]);
        for (int j = 0; j < ns; ++j) {
            const __m256 sv = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(s + r0[j] * ng + g * 8)));
            acc[j] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum[j]), _mm256_mul_ps(sv, dg), acc[j]);
        }
    }
    for (int j = 0; j < ns; ++j) { /* store8's sum */
        __m256 v = _mm256_add_ps(acc[j], mins8_of(m + r0[j] * ng, 1, xs, ng));
        if (b) v = _mm256_add_ps(v, _mm256_loadu_ps(b + r0[j]));
        _mm256_storeu_ps(y + r0[j], v);
    }
}

static void gemv4_il(const uint8_t *w, const uint16_t *s, const uint16_t *m, const float *b, float *y,
                     const int8_t *xq, const float *d, const float *xs, int64_t N, int64_t K, int64_t G,
                     int nthreads) {
    /* PF_IL_NS regions of `per` blocks, the streams `per` blocks apart, then the blocks left over one by one */
    const int64_t nb = N / 8, per = nb / PF_IL_NS;
#pragma omp parallel for schedule(static) num_threads(nthreads)
    for (int64_t i = 0; i < per + nb % PF_IL_NS; ++i) {
        int64_t r0[PF_IL_NS];
        if (i < per) {
            for (int j = 0; j < PF_IL_NS; ++j) r0[j] = (j * per + i) * 8;
            gemv4_il_blocks(w, s, m, b, y, xq, d, xs, r0, K, G, PF_IL_NS);
        } else {
            r0[0] = (PF_IL_NS * per + i - per) * 8;
            gemv4_il_blocks(w, s, m, b, y, xq, d, xs, r0, K, G, 1);
        }
    }
}

/* Many rows of int8: an MR x NR tile of outputs (MR activation rows, NR weight rows) is computed together, so
 * each activation unit is loaded once for NR weight rows; the MR x NR accumulators live in registers. Per group
 * the integer sums become fp32 once, as in dot_q. */
#ifndef PF_MR
#define PF_MR 4
#endif
#ifndef PF_NR
#define PF_NR 2
#endif
/* int8 below this many rows: a dot_q per (weight row, activation row), the weight row staying in L1. The tiles
 * pad to PF_MR rows and convert a tile's scales per call; measured 1 thread (RESULTS.md, sixth session), 2-6 rows
 * per row are 1.5-2.5x faster on SmolLM2's 49152 x 576 int8 head and level elsewhere; from 8 rows tiles win */
#ifndef PF_Q8_TILE_ROWS
#define PF_Q8_TILE_ROWS 8
#endif
_Static_assert(PF_MR <= 8, "kernels.py's qscratch() has 8 rows beyond M for the last tile");

static inline __attribute__((always_inline)) void tile_q8(const uint8_t *const *wr, const float *const *sr,
                                                          const int8_t *xq, const float *d, int64_t K, int64_t G,
                                                          __m256 acc[PF_MR][PF_NR]) {
    const int64_t ng = K / G, upg = G / 32;
    for (int i = 0; i < PF_MR; ++i)
        for (int r = 0; r < PF_NR; ++r) acc[i][r] = _mm256_setzero_ps();
    for (int64_t g = 0; g < ng; ++g) {
        __m256i p[PF_MR][PF_NR];
        for (int i = 0; i < PF_MR; ++i)
            for (int r = 0; r < PF_NR; ++r) p[i][r] = _mm256_setzero_si256();
        for (int64_t u = 0; u < upg; ++u) {
            const int64_t k = g * upg + u;
            __m256i wv[PF_NR];
            for (int r = 0; r < PF_NR; ++r) wv[r] = _mm256_loadu_si256((const __m256i *)(wr[r] + k * 32));
            for (int i = 0; i < PF_MR; ++i) {
                const __m256i xv = _mm256_loadu_si256((const __m256i *)(xq + i * K + k * 32));
                const __m256i ax = _mm256_sign_epi8(xv, xv);
                for (int r = 0; r < PF_NR; ++r) p[i][r] = dot8(p[i][r], ax, wv[r], xv);
            }
        }
        for (int i = 0; i < PF_MR; ++i)
            for (int r = 0; r < PF_NR; ++r)
                acc[i][r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p[i][r]), _mm256_set1_ps(sr[r][g] * d[i * ng + g]),
                                            acc[i][r]);
    }
}

/* rows i0.. (a multiple of PF_MR, padded with zero rows) x weight rows r0..r0+PF_NR (the last tile repeats
 * row N-1 and drops it) */
static void qgemm8_tiles(const uint8_t *w, const uint16_t *s, const uint16_t *m, const float *b, float *y,
                         const int8_t *xq, const float *d, const float *xs, int64_t M, int64_t i0, int64_t i1,
                         int64_t r0, int64_t N, int64_t K, int64_t G) {
    const int64_t ng = K / G;
    const uint8_t *wr[PF_NR];
    const uint16_t *mr[PF_NR];
    float sf[PF_NR][ng]; /* the rows' scales in fp32 once, not once per tile of activation rows */
    const float *sr[PF_NR];
    for (int r = 0; r < PF_NR; ++r) {
        const int64_t rr = r0 + r < N ? r0 + r : N - 1;
        wr[r] = w + rr * K, mr[r] = m + rr * ng, sr[r] = sf[r];
        for (int64_t g = 0; g < ng; ++g) sf[r][g] = h2f(s[rr * ng + g]);
    }
    for (int64_t i = i0; i < i1; i += PF_MR) {
        __m256 acc[PF_MR][PF_NR];
        tile_q8(wr, sr, xq + i * K, d + i * ng, K, G, acc);
        for (int ii = 0; ii < PF_MR && i + ii < M; ++ii)
            for (int r = 0; r < PF_NR && r0 + r < N; ++r) {
                const float v = hsum8(acc[ii][r]) + mins_dot(mr[r], xs + (i + ii) * ng, ng); /* as dot_q */
                y[(i + ii) * N + r0 + r] = b ? v + b[r0 + r] : v;
            }
    }
}
#endif

/* y (M, N) = x (M, K) . dequant(W (N, K))^T (+ b). qscratch: >= Mp K bytes + 2 Mp (K / G) floats + 64, with
 * Mp <= M + 8 (M rounded up to whole tiles of rows). Weight rows are split across
 * threads; int8 below PF_Q8_TILE_ROWS rows is a dot_q per weight row (it stays in L1), int4 and more rows go through the
 * blocks/tiles, the activation rows in chunks that stay in L2 while every weight block passes over them. */
void qgemm(const float *x, const uint8_t *w, const uint16_t *s, const uint16_t *m, const float *b, float *y,
           int64_t M, int64_t N, int64_t K, int64_t G, int bits, int il, void *qscratch, int nthreads) {
    const int64_t ng = K / G, row_bytes = bits == 4 ? K / 2 : K;
#ifdef PF_AVX2
    const int64_t mr = bits == 4 ? PF_MR4 : PF_MR, Mp = M > 1 ? (M + mr - 1) / mr * mr : M;
#else
    const int64_t mr = 1, Mp = M;
#endif
    int8_t *xq = (int8_t *)qscratch;
    float *d = (float *)(xq + ((Mp * K + 63) & ~(int64_t)63)), *xs = d + Mp * ng;
    for (int64_t i = 0; i < M; ++i) quantize_act(x + i * K, xq + i * K, d + i * ng, xs + i * ng, K, G);
    memset(xq + M * K, 0, (Mp - M) * K);
    memset(d + M * ng, 0, (Mp - M) * ng * sizeof(float));
    memset(xs + M * ng, 0, (Mp - M) * ng * sizeof(float));
#ifdef PF_AVX2
    if (il && M == 1) {
        gemv4_il(w, s, m, b, y, xq, d, xs, N, K, G, nthreads);
        return;
    }
    if (bits == 4 || M >= PF_Q8_TILE_ROWS) {
        const int64_t chunk = ((256 << 10) / K + mr - 1) / mr * mr; /* ~256 KB of int8 rows */
        for (int64_t i0 = 0; i0 < Mp; i0 += chunk) {
            const int64_t i1 = i0 + chunk < Mp ? i0 + chunk : Mp;
            if (bits == 8) {
#pragma omp parallel for schedule(static) num_threads(nthreads)
                for (int64_t r0 = 0; r0 < N; r0 += PF_NR)
                    qgemm8_tiles(w, s, m, b, y, xq, d, xs, M, i0, i1, r0, N, K, G);
                continue;
            }
#pragma omp parallel num_threads(nthreads)
            {
                int8_t *vt = M > 1 ? aligned_alloc(64, 8 * K) : 0;
#pragma omp for schedule(static)
                for (int64_t r0 = 0; r0 < N; r0 += 8)
                    qgemm4_block(w, s, m, b, y, xq, d, xs, M, i0, i1, r0, N, K, G, vt, il);
                free(vt);
            }
        }
        return;
    }
#else
    if (il) abort(); /* kernels.pack_int4 repacks only for AVX2 builds: a repacked weight here is a caller's bug */
#endif
    (void)mr;
#pragma omp parallel for schedule(static) num_threads(nthreads)
    for (int64_t r = 0; r < N; ++r) {
        for (int64_t i = 0; i < M; ++i) {
            const float v = dot_q(w + r * row_bytes, s + r * ng, m + r * ng, xq + i * K, d + i * ng, xs + i * ng, K,
                                  G, bits);
            y[i * N + r] = b ? v + b[r] : v;
        }
    }
}

/* ---- fp32 y = x W^T (+ b) for a few to some tens of rows: prefill chunks and batched decode steps -------
 * oneDNN and MKL run 15-20 GMAC/s at 32 rows on these shapes (half the core's FMA peak): W is (N, K)
 * row-major, the layout a GEMM's "B" wants packed, and packing a weight per call costs as much as the
 * product at 32 rows. Here the roles swap: W is the broadcast side, read in place (NR = 6 row streams,
 * each contiguous in k), and x, small, is what gets packed: 16 rows at a time, k-major, so one k step is
 * 2 vector loads + 6 broadcasts for 12 FMAs on 12 accumulators (15 of the 16 ymm registers). Nothing is
 * cached between calls and W is never copied. K runs in blocks of SG_KC; weight blocks of 6 rows are
 * split across threads. Each output is one fp32 fma chain over k per block, blocks added in order.
 * SG_KC: with W cold in cache (as in a forward), Phi-3-mini's K = 3072 / 8192 shapes at 16-64 rows ran
 * 1.1-1.4x faster unblocked than in 1024-wide blocks (longer weight-row streams, one output pass): the
 * packed x (up to 64 rows x 8192) then sits in L2/L3, which the 2 x-vector loads per 12 FMAs tolerate. */
#ifndef SG_KC
#define SG_KC 8192
#endif
#define SG_NR 6
#if defined(PF_AVX2)
static inline __attribute__((always_inline)) void sg_tile(const float *xp, const float *w, int64_t K, int64_t kc,
                                                          int nr, float *y, int64_t n0, int64_t m0, int64_t M,
                                                          int64_t N, const float *b, int first) {
    __m256 a0[SG_NR], a1[SG_NR];
    for (int i = 0; i < SG_NR; i++) a0[i] = a1[i] = _mm256_setzero_ps();
    for (int64_t k = 0; k < kc; k++) {
        __m256 x0 = _mm256_loadu_ps(xp + 16 * k), x1 = _mm256_loadu_ps(xp + 16 * k + 8);
#pragma GCC unroll 6
        for (int i = 0; i < SG_NR; i++) {
            if (i < nr) {
                __m256 s = _mm256_broadcast_ss(w + i * K + k);
                a0[i] = _mm256_fmadd_ps(s, x0, a0[i]);
                a1[i] = _mm256_fmadd_ps(s, x1, a1[i]);
            }
        }
    }
    /* copied out with constant indices only: a runtime index (i < nr) would keep a0/a1 in memory, stored
     * on every k step */
    float t[SG_NR][16];
#pragma GCC unroll 6
    for (int i = 0; i < SG_NR; i++) {
        _mm256_storeu_ps(t[i], a0[i]);
        _mm256_storeu_ps(t[i] + 8, a1[i]);
    }
    for (int i = 0; i < nr; i++) { /* the 16 x 6 tile goes out transposed: 96 stores per 16*6*kc fmas */
        float bias = b ? b[n0 + i] : 0.f;
        for (int r = 0; r < 16 && m0 + r < M; r++) {
            float *o = y + (m0 + r) * N + n0 + i;
            *o = first ? t[i][r] + bias : *o + t[i][r];
        }
    }
}
#endif

/* Returns 0, or -1 when this build has no AVX2 (the caller then uses PyTorch). */
int sgemm_f32(const float *x, const float *w, const float *b, float *y, int64_t M, int64_t N, int64_t K,
              int nthreads) {
#if defined(PF_AVX2)
    int64_t MB = (M + 15) / 16, NB = (N + SG_NR - 1) / SG_NR, KC = K < SG_KC ? K : SG_KC;
    float *xp = aligned_alloc(64, (size_t)(MB * 16 * KC * sizeof(float) + 63) / 64 * 64);
    if (!xp) return -1;
#pragma omp parallel num_threads(nthreads)
    for (int64_t k0 = 0; k0 < K; k0 += KC) {
        int64_t kc = K - k0 < KC ? K - k0 : KC;
#pragma omp for schedule(static)
        for (int64_t mb = 0; mb < MB; mb++)
            for (int64_t r = 0; r < 16; r++) {
                int64_t m = mb * 16 + r;
                float *dst = xp + mb * kc * 16 + r;
                if (m < M)
                    for (int64_t k = 0; k < kc; k++) dst[16 * k] = x[m * K + k0 + k];
                else
                    for (int64_t k = 0; k < kc; k++) dst[16 * k] = 0.f;
            }
        /* implicit barrier: every thread's x block is packed before any tile reads it */
#pragma omp for schedule(static)
        for (int64_t nb = 0; nb < NB; nb++) {
            int64_t n0 = nb * SG_NR;
            int nr = N - n0 < SG_NR ? (int)(N - n0) : SG_NR;
            const float *bb = k0 == 0 ? b : NULL;
            for (int64_t mb = 0; mb < MB; mb++) {
                const float *xb = xp + mb * kc * 16, *wb = w + n0 * K + k0;
                if (nr == SG_NR) /* a constant row count: the `i < nr` tests fold away */
                    sg_tile(xb, wb, K, kc, SG_NR, y, n0, mb * 16, M, N, bb, k0 == 0);
                else
                    sg_tile(xb, wb, K, kc, nr, y, n0, mb * 16, M, N, bb, k0 == 0);
            }
        }
        /* implicit barrier: no thread repacks x for the next block while another still reads this one */
    }
    free(xp);
    return 0;
#else
    (void)x, (void)w, (void)b, (void)y, (void)M, (void)N, (void)K, (void)nthreads;
    return -1;
#endif
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
    int bits, il;
} Lin;

static void matvec(const Lin *l, const float *x, float *y, int64_t N, int64_t K, void *qscratch, int nthreads) {
    if (l->bits == 32)
        gemv_f32(x, (const float *)l->w, 0, y, N, K, nthreads);
    else
        qgemm(x, (const uint8_t *)l->w, l->s, l->m, 0, y, 1, N, K, l->G, l->bits, l->il, qscratch, nthreads);
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

/* out = up * silu(gate) = up * (gate / (1 + e^-gate)); out may be gate itself */
static void swiglu(const float *gate, const float *up, float *out, int64_t n) {
    int64_t i = 0;
#ifdef PF_AVX2
    for (; i + 8 <= n; i += 8) {
        const __m256 g = _mm256_loadu_ps(gate + i);
        const __m256 e = exp8(_mm256_sub_ps(_mm256_setzero_ps(), g));
        const __m256 sg = _mm256_div_ps(g, _mm256_add_ps(_mm256_set1_ps(1.0f), e));
        _mm256_storeu_ps(out + i, _mm256_mul_ps(_mm256_loadu_ps(up + i), sg));
    }
#endif
    for (; i < n; ++i) out[i] = up[i] * (gate[i] / (1.0f + expf(-gate[i])));
}

static void rope(float *v, const float *cos, const float *sin, int64_t half) {
    for (int64_t i = 0; i < half; ++i) {
        const float x1 = v[i], x2 = v[i + half];
        v[i] = x1 * cos[i] - x2 * sin[i];
        v[i + half] = x2 * cos[i] + x1 * sin[i];
    }
}

/* one token's q|k|v row (nh + 2 nkv heads of hd): rotary on the q and k heads, k and v into cache slot pos of
 * their (nkv, max_len, hd) slabs */
static void rope_store(float *qkv, const float *cos, const float *sin, float *k_cache, float *v_cache, int64_t pos,
                       int64_t nh, int64_t nkv, int64_t hd, int64_t half, int64_t max_len) {
    for (int64_t j = 0; j < nh + nkv; ++j) rope(qkv + j * hd, cos, sin, half);
    for (int64_t g = 0; g < nkv; ++g) {
        memcpy(k_cache + (g * max_len + pos) * hd, qkv + (nh + g) * hd, hd * sizeof(float));
        memcpy(v_cache + (g * max_len + pos) * hd, qkv + (nh + nkv + g) * hd, hd * sizeof(float));
    }
}

/* one query head over cached keys/values t0..L-1: softmax(q . k * scale) . v into out (hd); s: L floats */
#ifdef PF_AVX2
/* out[0:8 nv] = inv * sum_t s[t] v[t]: nv is a constant at each call, so acc stays in registers */
static inline __attribute__((always_inline)) void attend_v(const float *s, const float *v, int64_t t0, int64_t L,
                                                           int64_t hd, float inv, float *out, const int nv) {
    __m256 acc[8];
    for (int j = 0; j < 8; j++) acc[j] = _mm256_setzero_ps();
    for (int64_t t = t0; t < L; ++t) {
        const __m256 p = _mm256_broadcast_ss(s + t);
#pragma GCC unroll 8
        for (int j = 0; j < 8; j++)
            if (j < nv) acc[j] = _mm256_fmadd_ps(p, _mm256_loadu_ps(v + t * hd + 8 * j), acc[j]);
    }
#pragma GCC unroll 8
    for (int j = 0; j < 8; j++)
        if (j < nv) _mm256_storeu_ps(out + 8 * j, _mm256_mul_ps(acc[j], _mm256_set1_ps(inv)));
}

/* scores of 4 keys at once (4 independent fma chains, one reduction for all 4), exponentials 8 at a time, and
 * the weighted sum of values held in registers, normalised once at the end */
static void attend8(const float *q, const float *kc, const float *vc, int64_t t0, int64_t L, int64_t hd,
                    float scale, float *s, float *out) {
    int64_t t = t0;
    for (; t + 4 <= L; t += 4) {
        const float *k = kc + t * hd;
        __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
        for (int64_t e = 0; e < hd; e += 8) {
            const __m256 qv = _mm256_loadu_ps(q + e);
            a0 = _mm256_fmadd_ps(qv, _mm256_loadu_ps(k + e), a0);
            a1 = _mm256_fmadd_ps(qv, _mm256_loadu_ps(k + hd + e), a1);
            a2 = _mm256_fmadd_ps(qv, _mm256_loadu_ps(k + 2 * hd + e), a2);
            a3 = _mm256_fmadd_ps(qv, _mm256_loadu_ps(k + 3 * hd + e), a3);
        }
        const __m256 h = _mm256_hadd_ps(_mm256_hadd_ps(a0, a1), _mm256_hadd_ps(a2, a3));
        const __m128 d = _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1));
        _mm_storeu_ps(s + t, _mm_mul_ps(d, _mm_set1_ps(scale)));
    }
    for (; t < L; ++t) s[t] = dot_f32(q, kc + t * hd, hd) * scale;
    float mx = -INFINITY, sum = 0.f;
    for (t = t0; t < L; ++t) mx = s[t] > mx ? s[t] : mx;
    __m256 sv = _mm256_setzero_ps();
    for (t = t0; t + 8 <= L; t += 8) {
        const __m256 e = exp8(_mm256_sub_ps(_mm256_loadu_ps(s + t), _mm256_set1_ps(mx)));
        _mm256_storeu_ps(s + t, e);
        sv = _mm256_add_ps(sv, e);
    }
    sum = hsum8(sv);
    for (; t < L; ++t) sum += (s[t] = expf(s[t] - mx));
    const float inv = 1.0f / sum;
    for (int64_t e0 = 0; e0 < hd; e0 += 64) {
        const float *v = vc + e0;
        switch ((hd - e0) >= 64 ? 8 : (int)(hd - e0) / 8) {
        case 8: attend_v(s, v, t0, L, hd, inv, out + e0, 8); break;
        case 7: attend_v(s, v, t0, L, hd, inv, out + e0, 7); break;
        case 6: attend_v(s, v, t0, L, hd, inv, out + e0, 6); break;
        case 5: attend_v(s, v, t0, L, hd, inv, out + e0, 5); break;
        case 4: attend_v(s, v, t0, L, hd, inv, out + e0, 4); break;
        case 3: attend_v(s, v, t0, L, hd, inv, out + e0, 3); break;
        case 2: attend_v(s, v, t0, L, hd, inv, out + e0, 2); break;
        default: attend_v(s, v, t0, L, hd, inv, out + e0, 1); break;
        }
    }
}
#endif

static void attend(const float *q, const float *kc, const float *vc, int64_t t0, int64_t L, int64_t hd, float scale,
                   float *s, float *out) {
#ifdef PF_AVX2
    if (hd % 8 == 0) {
        attend8(q, kc, vc, t0, L, hd, scale, s, out);
        return;
    }
#endif
    float mx = -INFINITY, sum = 0.f;
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
    rope_store(qkv, cos, sin, k_cache, v_cache, pos, nh, nkv, hd, half, max_len);
#pragma omp parallel for schedule(static) num_threads(nthreads)
    for (int64_t head = 0; head < nh; ++head) {
        const float *q = qkv + head * hd;
        const float *kc = k_cache + (head / group) * max_len * hd, *vc = v_cache + (head / group) * max_len * hd;
        attend(q, kc, vc, t0, L, hd, scale, scores + head * L, att + head * hd);
    }
    matvec(&lin[1], att, o, H, nh * hd, qscratch, nthreads);
    for (int64_t i = 0; i < H; ++i) x[i] += o[i];
    rms_norm(x, ln2, h, H, eps);
    matvec(&lin[2], h, gu, 2 * I, H, qscratch, nthreads);
    swiglu(gu, gu + I, gu, I);
    matvec(&lin[3], gu, o, H, I, qscratch, nthreads);
    for (int64_t i = 0; i < H; ++i) x[i] += o[i];
}

void phi3_decode_layer(float *x, const float *ln1, const float *wqkv, const float *wo, const float *ln2,
                       const float *wgu, const float *wdown, float *k_cache, float *v_cache, const float *cos,
                       const float *sin, int64_t pos, int64_t H, int64_t I, int64_t nh, int64_t nkv, int64_t hd,
                       int64_t rd, int64_t max_len, int64_t window, float eps, float *scratch, int nthreads) {
    const Lin lin[4] = {{wqkv, 0, 0, 0, 32, 0}, {wo, 0, 0, 0, 32, 0}, {wgu, 0, 0, 0, 32, 0}, {wdown, 0, 0, 0, 32, 0}};
    decode_layer(x, ln1, lin, ln2, k_cache, v_cache, cos, sin, pos, H, I, nh, nkv, hd, rd, max_len, window, eps,
                 scratch, 0, nthreads);
}

/* The same layer over quantized linears: w/s/m/il hold (qkv, out, gate_up, down) in that order (il: repacked) */
void phi3_decode_layer_q(float *x, const float *ln1, const float *ln2, const void *const *w,
                         const uint16_t *const *s, const uint16_t *const *m, const int *il, int64_t G, int bits, float *k_cache,
                         float *v_cache, const float *cos, const float *sin, int64_t pos, int64_t H, int64_t I,
                         int64_t nh, int64_t nkv, int64_t hd, int64_t rd, int64_t max_len, int64_t window, float eps,
                         float *scratch, void *qscratch, int nthreads) {
    Lin lin[4];
    for (int i = 0; i < 4; ++i) lin[i] = (Lin){w[i], s[i], m[i], G, bits, il[i]};
    decode_layer(x, ln1, lin, ln2, k_cache, v_cache, cos, sin, pos, H, I, nh, nkv, hd, rd, max_len, window, eps,
                 scratch, qscratch, nthreads);
}

/* ---- a decode step of B rows, the parts between the linear layers -----------------------------------------
 * The linears of a many-row step are matrix products (oneDNN, qgemm) called from Python; what lies between them
 * (norms, rotary, the cache write, attention over each row's own keys, SwiGLU, residual adds) is ~30 small
 * PyTorch ops per layer, which cost more than their arithmetic at decode sizes. These do it in three calls. */

/* x (B, H) += o (B, H) when o is given; h = rms_norm(x) * w */
void rows_add_norm(float *x, const float *o, const float *w, float *h, int64_t B, int64_t H, float eps) {
    for (int64_t b = 0; b < B; ++b) {
        float *xr = x + b * H;
        if (o)
            for (int64_t i = 0; i < H; ++i) xr[i] += o[b * H + i];
        rms_norm(xr, w, h + b * H, H, eps);
    }
}

/* gu (B, 2I) = [gate | up] -> act (B, I) = up * silu(gate) */
void rows_swiglu(const float *gu, float *act, int64_t B, int64_t I, int nthreads) {
#pragma omp parallel for schedule(static) num_threads(nthreads)
    for (int64_t b = 0; b < B; ++b) swiglu(gu + b * 2 * I, gu + b * 2 * I + I, act + b * I, I);
}

/* qkv (B, (nh + 2 nkv) hd): rotary on q and k with each row's own cos/sin row (B, rd / 2), k and v written to
 * cache slot pos of each row (row b's slab starts at k_cache + b * row_stride: (nkv, max_len, hd)), then each
 * query head attends over its row's slots [max(pads[b], pos + 1 - window), pos]. att: (B, nh hd). scores: B nh
 * (pos + 1) floats. */
void rows_attention(float *qkv, const float *cos, const float *sin, float *k_cache, float *v_cache,
                    int64_t row_stride, const int64_t *pads, int64_t pos, int64_t step, int64_t B, int64_t nh,
                    int64_t nkv, int64_t hd, int64_t rd, int64_t max_len, int64_t window, float *att,
                    float *scores, int nthreads) {
    /* row b goes to slot pos + b step of cache row b (row_stride apart): step 0 for B sequences' decode step,
     * step 1 and row_stride 0 for one sequence's prompt chunk (row b then sees the slots up to its own) */
    const int64_t half = rd / 2, group = nh / nkv, width = (nh + 2 * nkv) * hd, Lmax = pos + (B - 1) * step + 1;
    const float scale = 1.0f / sqrtf((float)hd);
    for (int64_t b = 0; b < B; ++b) {
        rope_store(qkv + b * width, cos + b * half, sin + b * half, k_cache + b * row_stride,
                   v_cache + b * row_stride, pos + b * step, nh, nkv, hd, half, max_len);
    }
#pragma omp parallel for schedule(static) num_threads(nthreads)
    for (int64_t bh = 0; bh < B * nh; ++bh) {
        const int64_t b = bh / nh, head = bh % nh, L = pos + b * step + 1;
        int64_t t0 = pads[b];
        if (window > 0 && L - window > t0) t0 = L - window;
        const float *q = qkv + b * width + head * hd;
        const float *kc = k_cache + b * row_stride + (head / group) * max_len * hd;
        const float *vc = v_cache + b * row_stride + (head / group) * max_len * hd;
        attend(q, kc, vc, t0, L, hd, scale, scores + bh * Lmax, att + b * nh * hd + head * hd);
    }
}
