// A layer's routed experts in one native call: for each expert, y = w2(silu(w1·x) ⊙ w3·x) on its
// rows, every step of block-kernel.ts's `swiglu` in the same order with the same roundings, so the
// outputs are the WebAssembly kernel's bits (block-kernel.ts checks them before it uses this).
//
// Two threads: where there are two experts or more, each of one pass of rows (a decode step's
// top-2), whole experts are the chunks the calling thread and the addon's helper thread claim, with
// no hand-off per product; otherwise the experts run one after the other, their products' rows
// shared. Weights are read in place from the expert cache's buffers (a wasm memory's bytes).

#include "expert-ffn.h"

#include <immintrin.h>
#include <stdint.h>
#include <string.h>

#include <vector>

#include "block-gemm.h"
#include "exp-avx2.h"
#include "helper-thread.h"
#include "napi-args.h"

namespace sirocco {
namespace {

#define AVX2 __attribute__((target("avx2")))

/** Activation rows per pass through an expert: its scratch's size (block-kernel.ts's ROWS_PER_PASS). */
constexpr int kPassRows = 16;

/**
 * hidden[i·ffn + c] = silu(gate) · up for rows i < m, gate = out[i·2ffn + c], up = out[i·2ffn + ffn + c];
 * silu(g) = g / (1 + exp(−g)) with block-kernel.ts's exp (expAvx2), each fp32 step in its order.
 */
AVX2 void swiglu(const float* out, float* hidden, int ffn, int m) {
  const __m256 one = _mm256_set1_ps(1.0f);
  for (int i = 0; i < m; i++) {
    const float* gates = out + static_cast<size_t>(i) * 2 * ffn;
    const float* ups = gates + ffn;
    float* to = hidden + static_cast<size_t>(i) * ffn;
    for (int c = 0; c < ffn; c += 8) {
      const __m256 g = _mm256_loadu_ps(gates + c);
      const __m256 e = expAvx2(_mm256_sub_ps(_mm256_setzero_ps(), g));
      _mm256_storeu_ps(to + c, _mm256_mul_ps(_mm256_div_ps(g, _mm256_add_ps(one, e)), _mm256_loadu_ps(ups + c)));
    }
  }
}

struct Expert {
  Layout layout;  // the expert files': Q4_0 bands or Q8_0 rows
  const uint8_t *w13, *w2;
  int rows;
  const float* x;  // [rows, dim]
  float* y;        // [rows, dim]
};

/** One expert on this thread, its products shared with the helper where `shareProducts`. */
void runExpert(Isa isa, int dim, int ffn, const Expert& e, bool shareProducts) {
  // Per thread, reused: a pass's activation records, products and hidden values.
  thread_local std::vector<uint8_t> records;
  thread_local std::vector<float> out, hidden;
  records.resize(static_cast<size_t>(kPassRows) * ((dim > ffn ? dim : ffn) / kBlock) * kRecordBytes);
  out.resize(static_cast<size_t>(kPassRows) * (2 * ffn > dim ? 2 * ffn : dim));
  hidden.resize(static_cast<size_t>(kPassRows) * ffn);
  for (int first = 0; first < e.rows; first += kPassRows) {
    const int m = e.rows - first < kPassRows ? e.rows - first : kPassRows;
    quantizeRecords(e.x + static_cast<size_t>(first) * dim, m, dim, records.data());
    sharedBlockProduct(isa, e.layout, e.w13, 2 * ffn, dim, m, records.data(), out.data(), shareProducts);
    swiglu(out.data(), hidden.data(), ffn, m);
    quantizeRecords(hidden.data(), m, ffn, records.data());
    sharedBlockProduct(isa, e.layout, e.w2, dim, ffn, m, records.data(), out.data(), shareProducts);
    memcpy(e.y + static_cast<size_t>(first) * dim, out.data(), sizeof(float) * m * dim);
  }
}

napi_value fail(napi_env env, const char* what) { return throwKernelError(env, "expert_ffn", what); }

}  // namespace

/**
 * expert_ffn(memory, dims, experts, x, y)
 * memory: a Uint8Array over the expert buffers' wasm memory. dims: Int32Array [isa (0 AVX-512 VNNI,
 * 1 AVX2), dim, ffn, threads (1 or 2)]. experts: Uint32Array of [q4 (1 Q4_0, 0 Q8_0), w13 offset,
 * w2 offset, rows] per expert, offsets into memory. x, y: Float32Arrays of Σrows·dim, each expert's
 * rows after the previous one's.
 */
napi_value ExpertFfn(napi_env env, napi_callback_info info) {
  size_t argc = 5;
  napi_value argv[5];
  napi_get_cb_info(env, info, &argc, argv, nullptr, nullptr);
  if (argc != 5) return fail(env, "takes (memory, dims, experts, x, y)");
  uint8_t* memory;
  const int32_t* dims;
  const uint32_t* table;
  const float* x;
  float* y;
  size_t memoryBytes, dimCount, tableLength, xLength, yLength;
  if (!typedArray(env, argv[0], napi_uint8_array, &memory, &memoryBytes)) return fail(env, "memory must be a Uint8Array");
  if (!typedArray(env, argv[1], napi_int32_array, const_cast<int32_t**>(&dims), &dimCount) || dimCount != 4)
    return fail(env, "dims must be an Int32Array of 4");
  if (!typedArray(env, argv[2], napi_uint32_array, const_cast<uint32_t**>(&table), &tableLength) || tableLength % 4 != 0)
    return fail(env, "experts must be a Uint32Array of 4 per expert");
  if (!typedArray(env, argv[3], napi_float32_array, const_cast<float**>(&x), &xLength)) return fail(env, "x must be a Float32Array");
  if (!typedArray(env, argv[4], napi_float32_array, &y, &yLength)) return fail(env, "y must be a Float32Array");
  const int isaCode = dims[0], dim = dims[1], ffn = dims[2], threads = dims[3];
  if ((isaCode != 0 && isaCode != 1) || dim <= 0 || dim % kBlock != 0 || ffn <= 0 || ffn % kBlock != 0 || (threads != 1 && threads != 2))
    return fail(env, "bad dims");
  const Isa isa = isaCode == 0 ? Isa::kAvx512Vnni : Isa::kAvx2;
  if (!isaSupported(isa)) return fail(env, "this CPU lacks the instruction set");

  std::vector<Expert> experts(tableLength / 4);
  size_t rowsSeen = 0;
  int mostRows = 0;
  for (size_t k = 0; k < experts.size(); k++) {
    const uint32_t* entry = table + 4 * k;
    const bool q4 = entry[0] == 1;
    const uint64_t blockBytes = q4 ? 18 : 34, blocks = 2ull * ffn * (dim / kBlock);
    if ((entry[0] != 0 && entry[0] != 1) || entry[3] == 0) return fail(env, "an expert has an unknown format or no rows");
    if (entry[1] + blocks * blockBytes > memoryBytes || entry[2] + blocks / 2 * blockBytes > memoryBytes)
      return fail(env, "an expert's weights do not fit in the memory");
    experts[k] = {q4 ? Layout::kQ4_0Bands : Layout::kQ8_0Rows, memory + entry[1], memory + entry[2], static_cast<int>(entry[3]), x + rowsSeen * dim, y + rowsSeen * dim};
    rowsSeen += entry[3];
    if (static_cast<int>(entry[3]) > mostRows) mostRows = static_cast<int>(entry[3]);
  }
  if (xLength != rowsSeen * dim || yLength != rowsSeen * dim) return fail(env, "x and y must hold every expert's rows (Σrows·dim)");

  if (threads == 2 && experts.size() >= 2 && mostRows <= kPassRows) {
    runChunks(true, static_cast<int>(experts.size()), [&](int k) { runExpert(isa, dim, ffn, experts[k], false); });
  } else {
    for (const Expert& e : experts) runExpert(isa, dim, ffn, e, threads == 2);
  }
  return nullptr;
}

}  // namespace sirocco
