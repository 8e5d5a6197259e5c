/* The core's arithmetic peak, from register-only loops (no memory): what no kernel can beat.
 *
 *   fp32: vfmadd231ps ymm, 10 independent accumulators (8 multiply-adds each)
 *   int8: vpmaddubsw + vpaddw ymm, 8 chains (32 u8 x s8 multiply-adds each): the AVX2 int4/int8 kernels' inner op
 *   vnni: vpdpbusd ymm, 8 chains (32 multiply-adds each), where the target has what the kernels' VNNI path
 *         needs (AVX-512 VNNI + VL + BW; an AVX-VNNI-only CPU runs the kernels' maddubs path)
 *
 * Each of T OpenMP threads runs the loop; prints "fp32 GFLOP/s", "int8 GMAC/s" and, where built, "vnni GMAC/s"
 * for all threads together (total work / wall time). Built and run by bench_batch.py (x86-64 only):
 *     gcc -O2 -march=native -fopenmp arith_peak.c -o arith_peak && OMP_NUM_THREADS=2 ./arith_peak
 */
#include <omp.h>
#include <stdio.h>
#include <time.h>

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

#define ITERS 20000000L

static void fma_loop(void) {
    for (long k = 0; k < ITERS; ++k)
        __asm__ volatile("vfmadd231ps %%ymm14, %%ymm15, %%ymm0\n vfmadd231ps %%ymm14, %%ymm15, %%ymm1\n"
                         "vfmadd231ps %%ymm14, %%ymm15, %%ymm2\n vfmadd231ps %%ymm14, %%ymm15, %%ymm3\n"
                         "vfmadd231ps %%ymm14, %%ymm15, %%ymm4\n vfmadd231ps %%ymm14, %%ymm15, %%ymm5\n"
                         "vfmadd231ps %%ymm14, %%ymm15, %%ymm6\n vfmadd231ps %%ymm14, %%ymm15, %%ymm7\n"
                         "vfmadd231ps %%ymm14, %%ymm15, %%ymm8\n vfmadd231ps %%ymm14, %%ymm15, %%ymm9\n" ::
                             : "xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5", "xmm6", "xmm7", "xmm8", "xmm9");
}

static void maddubs_loop(void) { /* the products into fresh registers, then an int16 add per chain (as dot4) */
    for (long k = 0; k < ITERS; ++k)
        __asm__ volatile("vpmaddubsw %%ymm14, %%ymm15, %%ymm8\n vpaddw %%ymm8, %%ymm0, %%ymm0\n"
                         "vpmaddubsw %%ymm14, %%ymm15, %%ymm9\n vpaddw %%ymm9, %%ymm1, %%ymm1\n"
                         "vpmaddubsw %%ymm14, %%ymm15, %%ymm10\n vpaddw %%ymm10, %%ymm2, %%ymm2\n"
                         "vpmaddubsw %%ymm14, %%ymm15, %%ymm11\n vpaddw %%ymm11, %%ymm3, %%ymm3\n"
                         "vpmaddubsw %%ymm14, %%ymm15, %%ymm8\n vpaddw %%ymm8, %%ymm4, %%ymm4\n"
                         "vpmaddubsw %%ymm14, %%ymm15, %%ymm9\n vpaddw %%ymm9, %%ymm5, %%ymm5\n"
                         "vpmaddubsw %%ymm14, %%ymm15, %%ymm10\n vpaddw %%ymm10, %%ymm6, %%ymm6\n"
                         "vpmaddubsw %%ymm14, %%ymm15, %%ymm11\n vpaddw %%ymm11, %%ymm7, %%ymm7\n" ::
                             : "xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5", "xmm6", "xmm7", "xmm8", "xmm9",
                               "xmm10", "xmm11");
}

#if defined(__AVX512VNNI__) && defined(__AVX512VL__) && defined(__AVX512BW__) /* kernels.c's PF_VNNI condition */
#define HAVE_VNNI 1
#include <immintrin.h>
static volatile int vnni_sink;
static void vnni_loop(void) { /* intrinsics: the compiler picks the VEX or EVEX encoding the target has */
    __m256i a[8], w = _mm256_set1_epi8((char)vnni_sink + 3), x = _mm256_set1_epi8((char)vnni_sink + 5);
    for (int i = 0; i < 8; ++i) a[i] = _mm256_setzero_si256();
    for (long k = 0; k < ITERS; ++k) {
#pragma GCC unroll 8
        for (int i = 0; i < 8; ++i) a[i] = _mm256_dpbusd_epi32(a[i], w, x);
    }
    for (int i = 1; i < 8; ++i) a[0] = _mm256_add_epi32(a[0], a[i]);
    vnni_sink = _mm256_extract_epi32(a[0], 0);
}
#endif

/* the best of 3 rounds of every thread running `loop` at once; ops = operations per loop iteration */
static double rate(void (*loop)(void), double ops) {
    double best = 0;
    for (int r = 0; r < 3; ++r) {
        int nt = 1;
        double t = now();
#pragma omp parallel
        {
#pragma omp single
            nt = omp_get_num_threads();
            loop();
        }
        const double v = nt * ITERS * ops / (now() - t);
        best = v > best ? v : best;
    }
    return best / 1e9;
}

int main(void) {
    printf("fp32 GFLOP/s %.1f\n", rate(fma_loop, 10 * 16));
    printf("int8 GMAC/s %.1f\n", rate(maddubs_loop, 8 * 32));
#ifdef HAVE_VNNI
    printf("vnni GMAC/s %.1f\n", rate(vnni_loop, 8 * 32));
#endif
    return 0;
}
