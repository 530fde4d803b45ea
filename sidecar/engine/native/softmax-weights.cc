// The softmax weights of one sampled row, e^−((max − logit) / T) per token, and their sum in token
// order: sampling/sampler.ts's loop with sampling/exp-negative.ts's exp, the same float64 steps in
// the same order (no fused multiply-adds: the addon is built with -ffp-contract=off), four tokens
// per AVX2 instruction. The sum stays one addition per token in order, as the JavaScript adds it,
// so the sampler draws the same tokens with or without the addon; tests compare every bit.
//
// Why native: a 32000-token row took ~0.4–0.6 ms in JavaScript, once per sequence per decode step,
// on the thread that then runs the next step.

#include "softmax-weights.h"

#include <immintrin.h>
#include <math.h>
#include <stdint.h>

#include "block-gemm.h"
#include "napi-args.h"

namespace sirocco {
namespace {

#define AVX2 __attribute__((target("avx2")))

// exp-negative.ts's constants, as JavaScript rounds them.
constexpr double kLog2e = 1.4426950408889634;
constexpr double kLn2High = 0.6931471803691238;
constexpr double kLn2Low = 1.9082149292705877e-10;
constexpr double kRounding = 6755399441055744.0;
constexpr double kUnderflow = 745.2;
constexpr double kC2 = 1.0 / 2, kC3 = 1.0 / 6, kC4 = 1.0 / 24, kC5 = 1.0 / 120, kC6 = 1.0 / 720, kC7 = 1.0 / 5040, kC8 = 1.0 / 40320,
                 kC9 = 1.0 / 362880, kC10 = 1.0 / 3628800, kC11 = 1.0 / 39916800, kC12 = 1.0 / 479001600;
/** Past this d the vector path's 2^−k could leave the normal range: those tokens take the scalar path. */
constexpr double kVectorLimit = 700.0;

/** exp-negative.ts's expNegative, step for step. */
double expNegative(double d) {
  if (!(d <= kUnderflow)) return isnan(d) ? d : 0.0;
  const double k = d * kLog2e + kRounding - kRounding;
  const double y = k * kLn2High - d + k * kLn2Low;
  const double y2 = y * y, y4 = y2 * y2, y8 = y4 * y4;
  const double poly = 1 + y + y2 * (kC2 + y * kC3) + y4 * (kC4 + y * kC5 + y2 * (kC6 + y * kC7)) +
                      y8 * (kC8 + y * kC9 + y2 * (kC10 + y * kC11) + y4 * kC12);
  const int power = static_cast<int>(k);
  if (power > 1020) return poly * ldexp(1.0, -1020) * ldexp(1.0, -(power - 1020));
  return poly * ldexp(1.0, -power);
}

/** A token's weight as sampler.ts takes it, from its distance (max − logit) / T: NaN (a NaN logit) counts as 0. */
double weightAt(double distance) {
  const double w = expNegative(distance);
  return isnan(w) ? 0.0 : w;
}

/**
 * The sampler's nucleus buckets: a token's is ⌊distance · perNat⌋ below count / perNat nats, the last
 * past it (or for NaN), and each bucket's weights are added in token order.
 */
struct Buckets {
  double perNat;
  uint16_t* ids;
  double* mass;
  int count;

  void note(int token, double distance, double weight) const {
    const int bucket = distance < count / perNat ? static_cast<int>(floor(distance * perNat)) : count - 1;
    ids[token] = static_cast<uint16_t>(bucket);
    mass[bucket] += weight;
  }
};

/** Tokens [from, count) one at a time, their weights added to `total` in order. */
double scalarWeights(const float* logits, int from, int count, double max, double temperature, double* weights, const Buckets* buckets,
                     double total) {
  for (int i = from; i < count; i++) {
    const double distance = (max - static_cast<double>(logits[i])) / temperature;
    total += weights[i] = weightAt(distance);
    if (buckets) buckets->note(i, distance, weights[i]);
  }
  return total;
}

/** a + y·b, as JavaScript rounds it. */
AVX2 inline __m256d term(__m256d y, double a, double b) { return _mm256_add_pd(_mm256_set1_pd(a), _mm256_mul_pd(y, _mm256_set1_pd(b))); }

AVX2 double avx2Weights(const float* logits, int count, double max, double temperature, double* weights, const Buckets* buckets) {
  const __m256d maxes = _mm256_set1_pd(max), temperatures = _mm256_set1_pd(temperature);
  const __m256d log2e = _mm256_set1_pd(kLog2e), rounding = _mm256_set1_pd(kRounding), ln2High = _mm256_set1_pd(kLn2High),
                ln2Low = _mm256_set1_pd(kLn2Low), one = _mm256_set1_pd(1.0), limit = _mm256_set1_pd(kVectorLimit);
  double total = 0;
  int i = 0;
  for (; i + 4 <= count; i += 4) {
    const __m256d d = _mm256_div_pd(_mm256_sub_pd(maxes, _mm256_cvtps_pd(_mm_loadu_ps(logits + i))), temperatures);
    const __m256d k = _mm256_sub_pd(_mm256_add_pd(_mm256_mul_pd(d, log2e), rounding), rounding);
    const __m256d y = _mm256_add_pd(_mm256_sub_pd(_mm256_mul_pd(k, ln2High), d), _mm256_mul_pd(k, ln2Low));
    const __m256d y2 = _mm256_mul_pd(y, y), y4 = _mm256_mul_pd(y2, y2), y8 = _mm256_mul_pd(y4, y4);
    __m256d poly = _mm256_add_pd(one, y);
    poly = _mm256_add_pd(poly, _mm256_mul_pd(y2, term(y, kC2, kC3)));
    poly = _mm256_add_pd(poly, _mm256_mul_pd(y4, _mm256_add_pd(term(y, kC4, kC5), _mm256_mul_pd(y2, term(y, kC6, kC7)))));
    poly = _mm256_add_pd(poly, _mm256_mul_pd(y8, _mm256_add_pd(_mm256_add_pd(term(y, kC8, kC9), _mm256_mul_pd(y2, term(y, kC10, kC11))),
                                                               _mm256_mul_pd(y4, _mm256_set1_pd(kC12)))));
    // 2^−k for 0 ≤ k ≤ 1010 (d ≤ 700): its exponent field, 1023 − k, and a zero mantissa.
    const __m256i powers = _mm256_slli_epi64(_mm256_sub_epi64(_mm256_set1_epi64x(1023), _mm256_cvtepi32_epi64(_mm256_cvtpd_epi32(k))), 52);
    alignas(32) double lanes[4], distances[4];
    _mm256_store_pd(lanes, _mm256_mul_pd(poly, _mm256_castsi256_pd(powers)));
    _mm256_store_pd(distances, d);
    // Lanes past the limit, and NaN ones (NaN ≤ limit is false), go through the scalar steps.
    const int scalar = _mm256_movemask_pd(_mm256_cmp_pd(d, limit, _CMP_NLE_UQ));
    for (int lane = 0; lane < 4; lane++) {
      const double w = scalar >> lane & 1 ? weightAt(distances[lane]) : lanes[lane];
      weights[i + lane] = w;
      total += w;
      if (buckets) buckets->note(i + lane, distances[lane], w);
    }
  }
  return scalarWeights(logits, i, count, max, temperature, weights, buckets, total);
}

}  // namespace

/**
 * softmax_weights(logits, max, temperature, weights[, perNat, ids, mass]): weights[i] =
 * e^−((max − logits[i]) / temperature) (0 for NaN), returning their sum in order; with the last
 * three, each token's nucleus bucket in ids and each bucket's mass added to mass (Buckets).
 * logits a Float32Array, weights a Float64Array and ids a Uint16Array as long, mass a Float64Array.
 */
napi_value SoftmaxWeights(napi_env env, napi_callback_info info) {
  size_t argc = 7;
  napi_value argv[7];
  napi_get_cb_info(env, info, &argc, argv, nullptr, nullptr);
  auto failWith = [&](const char* what) { return throwKernelError(env, "softmax_weights", what); };
  if (argc != 4 && argc != 7) return failWith("takes (logits, max, temperature, weights[, perNat, ids, mass])");
  float* logits = nullptr;
  double* weights = nullptr;
  size_t tokens = 0, weightCount = 0;
  double max = 0, temperature = 0;
  if (!typedArray(env, argv[0], napi_float32_array, &logits, &tokens)) return failWith("logits must be a Float32Array");
  if (napi_get_value_double(env, argv[1], &max) != napi_ok || napi_get_value_double(env, argv[2], &temperature) != napi_ok)
    return failWith("max and temperature must be numbers");
  if (!typedArray(env, argv[3], napi_float64_array, &weights, &weightCount) || weightCount != tokens)
    return failWith("weights must be a Float64Array as long as logits");
  Buckets buckets{};
  if (argc == 7) {
    size_t idCount = 0, bucketCount = 0;
    if (napi_get_value_double(env, argv[4], &buckets.perNat) != napi_ok || !(buckets.perNat > 0)) return failWith("perNat must be a positive number");
    if (!typedArray(env, argv[5], napi_uint16_array, &buckets.ids, &idCount) || idCount != tokens)
      return failWith("ids must be a Uint16Array as long as logits");
    if (!typedArray(env, argv[6], napi_float64_array, &buckets.mass, &bucketCount) || bucketCount == 0 || bucketCount > 65536)
      return failWith("mass must be a Float64Array of 1 to 65536 buckets");
    buckets.count = static_cast<int>(bucketCount);
  }
  if (tokens > INT32_MAX) return failWith("the row is too long");
  const int n = static_cast<int>(tokens);
  const Buckets* withBuckets = argc == 7 ? &buckets : nullptr;
  const double total = isaSupported(Isa::kAvx2) ? avx2Weights(logits, n, max, temperature, weights, withBuckets)
                                                : scalarWeights(logits, 0, n, max, temperature, weights, withBuckets, 0);
  napi_value result;
  napi_create_double(env, total, &result);
  return result;
}

}  // namespace sirocco
