// exp(x) on eight fp32 lanes: Cephes' expf (x clamped to ±87.3, x = n·ln2 + r, a degree-5
// polynomial in r, times 2^n), every fp32 step in the order of block-kernel.ts's WebAssembly exp, so
// the native experts' SwiGLU keeps that kernel's bits. Within ~2 ulp of exp over the clamped range.
#pragma once

#include <immintrin.h>

namespace sirocco {

__attribute__((target("avx2"))) inline __m256 expAvx2(__m256 x) {
  const __m256 limit = _mm256_set1_ps(87.3f), log2e = _mm256_set1_ps(1.4426950408889634f), half = _mm256_set1_ps(0.5f);
  const __m256 ln2High = _mm256_set1_ps(0.693359375f), ln2Low = _mm256_set1_ps(-2.1219444e-4f), one = _mm256_set1_ps(1.0f);
  const float polynomial[] = {1.98756915e-4f, 1.3981999507e-3f, 8.3334519073e-3f, 4.1665795894e-2f, 1.6666665459e-1f, 5.0000001201e-1f};
  const __m256 e = _mm256_min_ps(_mm256_max_ps(x, _mm256_sub_ps(_mm256_setzero_ps(), limit)), limit);
  const __m256 n = _mm256_floor_ps(_mm256_add_ps(_mm256_mul_ps(e, log2e), half));
  const __m256 r = _mm256_sub_ps(_mm256_sub_ps(e, _mm256_mul_ps(n, ln2High)), _mm256_mul_ps(n, ln2Low));
  __m256 y = _mm256_set1_ps(polynomial[0]);
  for (int k = 1; k < 6; k++) y = _mm256_add_ps(_mm256_mul_ps(y, r), _mm256_set1_ps(polynomial[k]));
  y = _mm256_add_ps(_mm256_add_ps(_mm256_mul_ps(y, _mm256_mul_ps(r, r)), r), one);
  const __m256i exponent = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvttps_epi32(n), _mm256_set1_epi32(127)), 23);
  return _mm256_mul_ps(y, _mm256_castsi256_ps(exponent));
}

}  // namespace sirocco
