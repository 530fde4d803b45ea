// One Mixtral layer up to its experts, in one native call: RMSNorm, the Q|K|V product, rotate-half
// RoPE, grouped-query attention over the past keys and values plus the step's own, the output
// product and the residual sum, then the FFN norm and the fp32 router logits. The same work as the
// store's ONNX layer graph (graph/transformer.ts), with the block products of block-gemm.cc on Q4_0
// or Q8_0 weights and activations rounded per block to int8 as the experts' are: at decode an
// onnxruntime run costs ~0.3 ms per layer whatever its size, this call a fraction of that. With two
// threads the Q|K|V and output products share their rows with a helper thread (helper-thread.cc): an
// 8x7B-shaped layer (45 MB of Q8_0) 3.7–4.1 → 2.3–2.4 ms on the AVX2 EPYC, the same bits. At long
// contexts the attention itself outweighs the products and is shared too, a (row, KV head) per
// chunk, each KV head's keys and values read once for its query heads: the same layer at 4,096
// past slots 8.3–9.4 → 4.9–5.0 ms.
//
// Shapes (row-major): hidden [batch·seq, dim]; positions [batch·seq] rows of the cos/sin tables
// [ropeRows, headDim/2]; mask [batch·seq, past + seq], additive (0 or -inf); past keys/values
// [batch, kvHeads, past, headDim]; new keys/values [batch, kvHeads, seq, headDim].
//
// Weights (layer-store.ts writes them): attention_norm f32[dim], ffn_norm f32[dim], gate
// f32[experts·dim], then Q|K|V blocks [(heads + 2·kvHeads)·headDim, dim] and wo blocks
// [dim, heads·headDim]: Q8_0 with rows interleaved four at a time (Layout::kQ8_0Groups), or Q4_0
// in the expert files' bands.

#include "attention-layer.h"

#include <immintrin.h>
#include <math.h>
#include <stdio.h>
#include <string.h>

#include <algorithm>
#include <vector>

#include "block-gemm.h"
#include "exp-avx2.h"
#include "helper-thread.h"
#include "napi-args.h"

namespace sirocco {
namespace {

#define AVX2 __attribute__((target("avx2")))
// The attention's own dot products and weighted sums: fused multiply-adds (every AVX2 CPU has FMA;
// the block products, which must match the WebAssembly kernel's bits, never use them).
#define AVX2_FMA __attribute__((target("avx2,fma")))

/** The eight lanes of a dot product's accumulator summed, then its tail (i ≥ the last whole eight) added one by one. */
AVX2 inline float finishDot(__m256 acc, const float* a, const float* b, int i, int n) {
  __m128 sum = _mm_add_ps(_mm256_castps256_ps128(acc), _mm256_extractf128_ps(acc, 1));
  sum = _mm_add_ps(sum, _mm_movehl_ps(sum, sum));
  sum = _mm_add_ss(sum, _mm_shuffle_ps(sum, sum, 1));
  float total = _mm_cvtss_f32(sum);
  for (; i < n; i++) total += a[i] * b[i];
  return total;
}

/** Σ a[i]·b[i], eight lanes at a time (the tail one by one). */
AVX2 float dot(const float* a, const float* b, int n) {
  __m256 acc = _mm256_setzero_ps();
  int i = 0;
  for (; i + 8 <= n; i += 8) acc = _mm256_add_ps(acc, _mm256_mul_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i)));
  return finishDot(acc, a, b, i, n);
}

/**
 * dots[k] = dot(q + k·n, key, n) for k < C: the query heads that share one key, each key loaded
 * once for all of them. Each head keeps dot()'s lanes and order, so the bits are dot()'s; side by
 * side, the C add chains overlap instead of one waiting on the last add's latency.
 */
template <int C>
AVX2_FMA void dotHeads(const float* q, const float* key, int n, float* dots) {
  __m256 acc[C];
  for (int k = 0; k < C; k++) acc[k] = _mm256_setzero_ps();
  int i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256 k8 = _mm256_loadu_ps(key + i);
    for (int k = 0; k < C; k++) acc[k] = _mm256_fmadd_ps(_mm256_loadu_ps(q + k * n + i), k8, acc[k]);
  }
  for (int k = 0; k < C; k++) dots[k] = finishDot(acc[k], q + k * n, key, i, n);
}

/** dots[k] = dot(q + k·n, key, n) for k < count, four heads at a time. */
void dotGroup(const float* q, const float* key, int n, int count, float* dots) {
  int k = 0;
  for (; k + 4 <= count; k += 4) dotHeads<4>(q + k * n, key, n, dots + k);
  switch (count - k) {
    case 3: dotHeads<3>(q + k * n, key, n, dots + k); break;
    case 2: dotHeads<2>(q + k * n, key, n, dots + k); break;
    case 1: dotHeads<1>(q + k * n, key, n, dots + k); break;
    default: break;
  }
}

/** A KV head's slots: the past ones, then the step's own. */
struct Slots {
  const float* past;
  const float* fresh;
  int pastCount, headDim;
  const float* at(int j) const {
    return j < pastCount ? past + static_cast<size_t>(j) * headDim : fresh + static_cast<size_t>(j - pastCount) * headDim;
  }
};

/**
 * out_h[i] = Σ_j in slot order weights_h[j] · value_j[d + i] for G query heads h (weights_h at
 * weights + h·total, out_h at out + h·headDim) and i < 8·C (C = 0: one dim), the slots the mask
 * hides skipped: the heads' contexts held in registers across the slots, and each value's bytes
 * read once for all the heads that share it (one head at a time read a long context's values once
 * per head). Each dim adds its products in slot order whatever C and G, so the bits do not depend
 * on them.
 */
template <int G, int C>
AVX2_FMA void weightedValues(const float* weights, const float* mask, int total, const Slots& values, int d, float* out) {
  const int headDim = values.headDim;
  if (C == 0) {
    for (int h = 0; h < G; h++) {
      float acc = 0;
      for (int j = 0; j < total; j++)
        if (mask[j] != -INFINITY) acc = fmaf(weights[h * total + j], values.at(j)[d], acc);
      out[h * headDim] = acc;
    }
    return;
  }
  constexpr int kLanes = C > 0 ? C : 1;
  __m256 acc[G][kLanes];
  for (int h = 0; h < G; h++)
    for (int i = 0; i < kLanes; i++) acc[h][i] = _mm256_setzero_ps();
  for (int j = 0; j < total; j++) {
    if (mask[j] == -INFINITY) continue;
    const float* value = values.at(j) + d;
    __m256 v[kLanes];
    for (int i = 0; i < kLanes; i++) v[i] = _mm256_loadu_ps(value + 8 * i);
    for (int h = 0; h < G; h++) {
      const __m256 w = _mm256_set1_ps(weights[h * total + j]);
      for (int i = 0; i < kLanes; i++) acc[h][i] = _mm256_fmadd_ps(w, v[i], acc[h][i]);
    }
  }
  for (int h = 0; h < G; h++)
    for (int i = 0; i < kLanes; i++) _mm256_storeu_ps(out + h * headDim + 8 * i, acc[h][i]);
}

/** weightedValues over every dim of G heads: 16 dims a pass, then 8, then one. */
template <int G>
void headContexts(const float* weights, const float* mask, int total, const Slots& values, float* out) {
  int d = 0;
  for (; d + 16 <= values.headDim; d += 16) weightedValues<G, 2>(weights, mask, total, values, d, out + d);
  for (; d + 8 <= values.headDim; d += 8) weightedValues<G, 1>(weights, mask, total, values, d, out + d);
  for (; d < values.headDim; d++) weightedValues<G, 0>(weights, mask, total, values, d, out + d);
}

/** out = x / √(mean(x²) + eps) · weight, per row. */
void rmsNorm(const float* x, const float* weight, int rows, int dim, float eps, float* out) {
  for (int r = 0; r < rows; r++, x += dim, out += dim) {
    const float inverse = 1.0f / sqrtf(dot(x, x, dim) / dim + eps);
    for (int d = 0; d < dim; d++) out[d] = x[d] * inverse * weight[d];
  }
}

/** Rotate-half RoPE on one head: pairs (i, i + half). */
void rotate(float* v, const float* cos, const float* sin, int half) {
  for (int i = 0; i < half; i++) {
    const float x0 = v[i], x1 = v[i + half];
    v[i] = x0 * cos[i] - x1 * sin[i];
    v[i + half] = x1 * cos[i] + x0 * sin[i];
  }
}

struct Shape {
  Isa isa;
  bool q4;
  int dim, heads, kvHeads, headDim, experts, batch, seq, past, ropeRows;
  /** 2: large products and long attention are shared with the helper thread; 1: this thread alone (the same bits). */
  int threads;

  int rows() const { return batch * seq; }
  int qkvRows() const { return (heads + 2 * kvHeads) * headDim; }
  int total() const { return past + seq; }
  size_t blockBytes(int n, int cols) const { return static_cast<size_t>(n) * (cols / kBlock) * (q4 ? 18 : 34); }
  size_t weightBytes() const {
    return 4 * (2 * static_cast<size_t>(dim) + static_cast<size_t>(experts) * dim) + blockBytes(qkvRows(), dim) +
           blockBytes(dim, heads * headDim);
  }
};

/** out = the [n, cols] matrix at w times m rows of records, shared with the helper thread where `s` has two threads. */
void product(const Shape& s, const uint8_t* w, int n, int cols, int m, const uint8_t* records, float* out) {
  sharedBlockProduct(s.isa, s.q4 ? Layout::kQ4_0Bands : Layout::kQ8_0Groups, w, n, cols, m, records, out, s.threads >= 2);
}

struct Tensors {
  const uint8_t* weights;
  const float *hidden, *cos, *sin, *mask, *pastKeys, *pastValues;
  const int32_t* positions;
  float *hiddenOut, *ffnIn, *router, *newKeys, *newValues;
};

/** exp(s − best) of eight scores, 0 where a score is −∞ (a hidden slot). */
AVX2 inline __m256 expScore8(__m256 s, __m256 best) {
  return _mm256_andnot_ps(_mm256_cmp_ps(s, _mm256_set1_ps(-INFINITY), _CMP_EQ_OQ), expAvx2(_mm256_sub_ps(s, best)));
}

/**
 * scores[j] = exp(scores[j] − best) for j < n (0 where the score is −∞), eight at a time, the tail
 * padded with hidden slots; returns their sum, added in slot order: a sequence's slots sit at other
 * indices when a longer one pads its batch, and zeros added in order leave the sum's bits alone,
 * where lanes would not. A prompt's attention takes ~10⁶ of these exps per layer.
 */
AVX2 float expScores(float* scores, int n, float best) {
  const __m256 bestLanes = _mm256_set1_ps(best);
  int j = 0;
  for (; j + 8 <= n; j += 8) _mm256_storeu_ps(scores + j, expScore8(_mm256_loadu_ps(scores + j), bestLanes));
  if (j < n) {
    float tail[8];
    for (int i = 0; i < 8; i++) tail[i] = j + i < n ? scores[j + i] : -INFINITY;
    _mm256_storeu_ps(tail, expScore8(_mm256_loadu_ps(tail), bestLanes));
    memcpy(scores + j, tail, sizeof(float) * (n - j));
  }
  float sum = 0;
  for (j = 0; j < n; j++) sum += scores[j];
  return sum;
}

/** weights[j] /= sum for j < n, eight at a time (the same quotients as one at a time). */
AVX2 void divide(float* weights, int n, float sum) {
  const __m256 lanes = _mm256_set1_ps(sum);
  int j = 0;
  for (; j + 8 <= n; j += 8) _mm256_storeu_ps(weights + j, _mm256_div_ps(_mm256_loadu_ps(weights + j), lanes));
  for (; j < n; j++) weights[j] /= sum;
}

/**
 * Query heads times slots below which a layer's attention runs on one thread: ~50 µs of work, a few
 * times a hand-off to the polling helper. (At 16 Ki, a 1.0B dense decode over 512 slots kept its
 * attention on one thread: 28.7 against 29.9 ms a token, three alternating pairs.)
 */
constexpr size_t kSplitMinScores = 2 * 1024;

/**
 * Row `row`'s query heads that read KV head g: softmax(q·K / √headDim + mask) · V into their slots
 * of `context` (zero where the mask hides every slot). Each key and value is loaded once for the
 * group (dotGroup, weightedValues); every head's own steps and their order are those of one head
 * at a time, and a hidden slot adds nothing, so a row's bits do not depend on its batch.
 */
void attend(const Shape& s, const Tensors& t, const float* qkv, int row, int g, float* context) {
  const int group = s.heads / s.kvHeads, total = s.total(), b = row / s.seq;
  const float scale = 1.0f / sqrtf(static_cast<float>(s.headDim));
  // Per thread, reused: a chunk's scores are group × total floats (2 MiB at 8 heads and 64k slots).
  thread_local std::vector<float> scores, dots, best;
  scores.resize(static_cast<size_t>(group) * total);
  dots.resize(group);
  best.resize(group);
  const float* mask = t.mask + static_cast<size_t>(row) * total;
  const float* q = qkv + static_cast<size_t>(row) * s.qkvRows() + static_cast<size_t>(g) * group * s.headDim;
  const size_t kv = static_cast<size_t>(b) * s.kvHeads + g;
  const Slots keys{t.pastKeys + kv * s.past * s.headDim, t.newKeys + kv * s.seq * s.headDim, s.past, s.headDim};
  const Slots values{t.pastValues + kv * s.past * s.headDim, t.newValues + kv * s.seq * s.headDim, s.past, s.headDim};
  // scores[k · total + j]: query head g·group + k against slot j.
  for (int k = 0; k < group; k++) best[k] = -INFINITY;
  for (int j = 0; j < total; j++) {
    // A masked slot is skipped, not computed: padding may hold anything, even NaN.
    if (mask[j] == -INFINITY) {
      for (int k = 0; k < group; k++) scores[static_cast<size_t>(k) * total + j] = -INFINITY;
      continue;
    }
    dotGroup(q, keys.at(j), s.headDim, group, dots.data());
    for (int k = 0; k < group; k++) {
      const float score = dots[k] * scale + mask[j];
      scores[static_cast<size_t>(k) * total + j] = score;
      if (score > best[k]) best[k] = score;
    }
  }
  float* out = context + static_cast<size_t>(row) * s.heads * s.headDim + static_cast<size_t>(g) * group * s.headDim;
  // Softmax weights; a head that sees no slot (a padding row, which the mask hides entirely) keeps
  // a zero context.
  bool seesAny = false;
  for (int k = 0; k < group; k++) {
    float* weights = scores.data() + static_cast<size_t>(k) * total;
    if (best[k] == -INFINITY) {
      std::fill(weights, weights + total, 0.0f);
      continue;
    }
    divide(weights, total, expScores(weights, total, best[k]));
    seesAny = true;
  }
  if (!seesAny) return;
  for (int k = 0; k < group; k += 4) {
    const float* weights = scores.data() + static_cast<size_t>(k) * total;
    float* heads = out + static_cast<size_t>(k) * s.headDim;
    switch (group - k < 4 ? group - k : 4) {
      case 4: headContexts<4>(weights, mask, total, values, heads); break;
      case 3: headContexts<3>(weights, mask, total, values, heads); break;
      case 2: headContexts<2>(weights, mask, total, values, heads); break;
      default: headContexts<1>(weights, mask, total, values, heads); break;
    }
  }
}

/** The layer; every length was checked against `s` by the caller. Returns an error message or null. */
const char* runLayer(const Shape& s, const Tensors& t, float eps) {
  const int rows = s.rows(), half = s.headDim / 2, width = s.heads * s.headDim;
  const float* attentionNorm = reinterpret_cast<const float*>(t.weights);
  const float* ffnNorm = attentionNorm + s.dim;
  const float* gate = ffnNorm + s.dim;
  const uint8_t* wqkv = t.weights + 4 * (2 * static_cast<size_t>(s.dim) + static_cast<size_t>(s.experts) * s.dim);
  const uint8_t* wo = wqkv + s.blockBytes(s.qkvRows(), s.dim);

  std::vector<float> normed(static_cast<size_t>(rows) * s.dim), qkv(static_cast<size_t>(rows) * s.qkvRows());
  std::vector<float> context(static_cast<size_t>(rows) * width, 0.0f), projected(static_cast<size_t>(rows) * s.dim);
  std::vector<uint8_t> records(static_cast<size_t>(rows) * ((s.dim > width ? s.dim : width) / kBlock) * kRecordBytes);

  rmsNorm(t.hidden, attentionNorm, rows, s.dim, eps, normed.data());
  quantizeRecords(normed.data(), rows, s.dim, records.data());
  product(s, wqkv, s.qkvRows(), s.dim, rows, records.data(), qkv.data());

  for (int b = 0; b < s.batch; b++) {
    for (int i = 0; i < s.seq; i++) {
      const int row = b * s.seq + i;
      const int position = t.positions[row];
      if (position < 0 || position >= s.ropeRows) return "a position is outside the RoPE table";
      float* q = qkv.data() + static_cast<size_t>(row) * s.qkvRows();
      for (int head = 0; head < s.heads + s.kvHeads; head++)
        rotate(q + head * s.headDim, t.cos + static_cast<size_t>(position) * half, t.sin + static_cast<size_t>(position) * half, half);
      for (int g = 0; g < s.kvHeads; g++) {
        const size_t at = ((static_cast<size_t>(b) * s.kvHeads + g) * s.seq + i) * s.headDim;
        memcpy(t.newKeys + at, q + (s.heads + g) * s.headDim, 4 * s.headDim);
        memcpy(t.newValues + at, q + (s.heads + s.kvHeads + g) * s.headDim, 4 * s.headDim);
      }
    }
  }

  // The attention itself, one (row, KV head) at a time: at long contexts the largest part of a
  // layer (an 8x7B layer at 4,096 past slots: ~5 ms beside ~2 ms of products), so shared with the
  // helper thread like a product. Each chunk writes only its own heads' context.
  const size_t scores = static_cast<size_t>(rows) * s.heads * s.total();
  runChunks(s.threads >= 2 && scores >= kSplitMinScores, rows * s.kvHeads,
            [&](int chunk) { attend(s, t, qkv.data(), chunk / s.kvHeads, chunk % s.kvHeads, context.data()); });

  quantizeRecords(context.data(), rows, width, records.data());
  product(s, wo, s.dim, width, rows, records.data(), projected.data());
  for (size_t k = 0; k < projected.size(); k++) t.hiddenOut[k] = t.hidden[k] + projected[k];
  rmsNorm(t.hiddenOut, ffnNorm, rows, s.dim, eps, t.ffnIn);
  for (int r = 0; r < rows; r++)
    for (int e = 0; e < s.experts; e++)
      t.router[static_cast<size_t>(r) * s.experts + e] = dot(t.ffnIn + static_cast<size_t>(r) * s.dim, gate + static_cast<size_t>(e) * s.dim, s.dim);
  return nullptr;
}

napi_value fail(napi_env env, const char* what) { return throwKernelError(env, "attention_layer", what); }

}  // namespace

/**
 * attention_layer(weights, dims, eps, hidden, cos, sin, positions, mask, pastKeys, pastValues,
 *                 hiddenOut, ffnIn, router, newKeys, newValues)
 * dims: Int32Array [isa (0 AVX-512 VNNI, 1 AVX2), q4 (1 Q4_0 bands, 0 Q8_0 rows interleaved by four), dim, heads, kvHeads, headDim,
 * experts, batch, seq, past, ropeRows, threads (1 or 2)]. Every length is checked against them.
 */
napi_value AttentionLayer(napi_env env, napi_callback_info info) {
  size_t argc = 15;
  napi_value argv[15];
  napi_get_cb_info(env, info, &argc, argv, nullptr, nullptr);
  if (argc != 15) return fail(env, "takes 15 arguments (weights, dims, eps, hidden, …, newValues)");
  const uint8_t* weights;
  const int32_t* dims;
  size_t weightBytes, dimCount;
  if (!typedArray(env, argv[0], napi_uint8_array, const_cast<uint8_t**>(&weights), &weightBytes)) return fail(env, "weights must be a Uint8Array");
  if (!typedArray(env, argv[1], napi_int32_array, const_cast<int32_t**>(&dims), &dimCount) || dimCount != 12)
    return fail(env, "dims must be an Int32Array of 12");
  double eps;
  if (napi_get_value_double(env, argv[2], &eps) != napi_ok || !(eps > 0)) return fail(env, "eps must be a positive number");
  const Shape s{dims[0] == 0 ? Isa::kAvx512Vnni : Isa::kAvx2, dims[1] == 1, dims[2], dims[3], dims[4], dims[5],
                dims[6], dims[7], dims[8], dims[9], dims[10], dims[11]};
  if ((dims[0] != 0 && dims[0] != 1) || (dims[1] != 0 && dims[1] != 1)) return fail(env, "unknown instruction set or format");
  if (s.dim <= 0 || s.dim % kBlock != 0 || s.heads <= 0 || s.kvHeads <= 0 || s.heads % s.kvHeads != 0 || s.headDim <= 0 ||
      s.headDim % 2 != 0 || (s.heads * s.headDim) % kBlock != 0 || s.dim % 4 != 0 || s.qkvRows() % 4 != 0 || s.experts < 0 ||
      s.batch <= 0 || s.seq <= 0 || s.past < 0 || s.ropeRows <= 0 || (s.threads != 1 && s.threads != 2))
    return fail(env, "bad shape");
  if (!isaSupported(s.isa)) return fail(env, "this CPU lacks the instruction set");
  if (weightBytes != s.weightBytes()) return fail(env, "weights have the wrong size for this shape");
  if (reinterpret_cast<uintptr_t>(weights) % 4 != 0) return fail(env, "weights must start on a 4-byte boundary");

  Tensors t{};
  t.weights = weights;
  const size_t rows = s.rows(), kv = static_cast<size_t>(s.batch) * s.kvHeads * s.headDim;
  struct Expected {
    int index;
    size_t length;
    const char* name;
  };
  const float** inputs[] = {&t.hidden, &t.cos, &t.sin, &t.mask, &t.pastKeys, &t.pastValues};
  const Expected inputSizes[] = {{3, rows * s.dim, "hidden"},
                                 {4, static_cast<size_t>(s.ropeRows) * (s.headDim / 2), "cos"},
                                 {5, static_cast<size_t>(s.ropeRows) * (s.headDim / 2), "sin"},
                                 {7, rows * s.total(), "mask"},
                                 {8, kv * s.past, "pastKeys"},
                                 {9, kv * s.past, "pastValues"}};
  for (int k = 0; k < 6; k++) {
    size_t length;
    float* data;
    if (!typedArray(env, argv[inputSizes[k].index], napi_float32_array, &data, &length) || length != inputSizes[k].length) {
      char message[120];
      snprintf(message, sizeof message, "%s must be a Float32Array of %zu", inputSizes[k].name, inputSizes[k].length);
      return fail(env, message);
    }
    *inputs[k] = data;
  }
  size_t positionCount;
  if (!typedArray(env, argv[6], napi_int32_array, const_cast<int32_t**>(&t.positions), &positionCount) || positionCount != rows)
    return fail(env, "positions must be an Int32Array of batch·seq");
  float** outputs[] = {&t.hiddenOut, &t.ffnIn, &t.router, &t.newKeys, &t.newValues};
  const Expected outputSizes[] = {{10, rows * s.dim, "hiddenOut"},
                                  {11, rows * s.dim, "ffnIn"},
                                  {12, rows * s.experts, "router"},
                                  {13, kv * s.seq, "newKeys"},
                                  {14, kv * s.seq, "newValues"}};
  for (int k = 0; k < 5; k++) {
    size_t length;
    if (!typedArray(env, argv[outputSizes[k].index], napi_float32_array, outputs[k], &length) || length != outputSizes[k].length) {
      char message[120];
      snprintf(message, sizeof message, "%s must be a Float32Array of %zu", outputSizes[k].name, outputSizes[k].length);
      return fail(env, message);
    }
  }
  if (const char* problem = runLayer(s, t, static_cast<float>(eps))) return fail(env, problem);
  return nullptr;
}

}  // namespace sirocco
