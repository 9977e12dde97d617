/* The core clock and the vector units' throughput of one core, measured (the peak in docs/speed.md).

     gcc -O2 -mavx512f -mavx512bf16 -o /tmp/cpu_peak benchmarks/cpu_peak.c && /tmp/cpu_peak
     gcc -O2 -mavx2 -mfma -o /tmp/cpu_peak benchmarks/cpu_peak.c && /tmp/cpu_peak   # an AVX2-only CPU

   clock: a chain of dependent integer adds retires one per cycle, so adds per second = cycles per second.
   fp32: 12 independent chains of 512-bit FMAs (16 lanes x 2 flops), enough to hide the FMA latency.
   bf16: the same with VDPBF16PS (32 bf16 products summed pairwise into 16 fp32 lanes: 64 flops).
   Built without AVX-512 (an AVX2-only CPU): fp32 with 256-bit FMAs (8 lanes x 2 flops); built without
   AVX512-BF16 (-mavx512bf16): no bf16 line. */
#include <immintrin.h>
#include <stdio.h>
#include <time.h>

static double now(void) {
  struct timespec t;
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t);  // CPU time: a shared core's time slices do not count
  return t.tv_sec + t.tv_nsec * 1e-9;
}

int main(void) {
  const long n = 200000000L;
  unsigned long x = 0;
  double t = now();
  for (long i = 0; i < n; i++) __asm__ volatile("add $1, %0\n\tadd $1, %0\n\tadd $1, %0\n\tadd $1, %0" : "+r"(x));
  double ghz = 4.0 * n / (now() - t) / 1e9;

#ifdef __AVX512F__
  __m512 acc[12], a = _mm512_set1_ps(1.0000001f), b = _mm512_set1_ps(0.9999999f);
  for (int k = 0; k < 12; k++) acc[k] = _mm512_setzero_ps();
  t = now();
  for (long i = 0; i < n; i++)
#pragma GCC unroll 12
    for (int k = 0; k < 12; k++) acc[k] = _mm512_fmadd_ps(a, acc[k], b);
  double fp32 = 12.0 * n * 32 / (now() - t) / 1e9;
  float sink = 0;
  for (int k = 0; k < 12; k++) sink += _mm512_reduce_add_ps(acc[k]);
#ifdef __AVX512BF16__
  __m512 dot[12];
  __m512bh p = (__m512bh)_mm512_set1_epi16(0x3f80), q = (__m512bh)_mm512_set1_epi16(0x3f80);
  for (int k = 0; k < 12; k++) dot[k] = _mm512_setzero_ps();
  t = now();
  for (long i = 0; i < n; i++)
#pragma GCC unroll 12
    for (int k = 0; k < 12; k++) dot[k] = _mm512_dpbf16_ps(dot[k], p, q);
  double bf16 = 12.0 * n * 64 / (now() - t) / 1e9;
  for (int k = 0; k < 12; k++) sink += _mm512_reduce_add_ps(dot[k]);
#endif
#else
  __m256 acc[12], a = _mm256_set1_ps(1.0000001f), b = _mm256_set1_ps(0.9999999f);
  for (int k = 0; k < 12; k++) acc[k] = _mm256_setzero_ps();
  t = now();
  for (long i = 0; i < n; i++)
#pragma GCC unroll 12
    for (int k = 0; k < 12; k++) acc[k] = _mm256_fmadd_ps(a, acc[k], b);
  double fp32 = 12.0 * n * 16 / (now() - t) / 1e9;

  float lanes[8], sink = 0;
  for (int k = 0; k < 12; k++) {
    _mm256_storeu_ps(lanes, acc[k]);
    for (int j = 0; j < 8; j++) sink += lanes[j];
  }
#endif
  printf("clock %.2f GHz (x=%lu)\n", ghz, x);
  printf("fp32 FMA:  %.1f GFLOP/s per core = %.1f flops/cycle\n", fp32, fp32 / ghz);
#ifdef __AVX512BF16__
  printf("bf16 DPBF16PS: %.1f GFLOP/s per core = %.1f flops/cycle (sink %g)\n", bf16, bf16 / ghz, sink);
#else
  printf("(built without AVX512-BF16: no bf16 units measured; sink %g)\n", sink);
#endif
  return 0;
}
