// The expert products of block-kernel.ts in native SIMD: the same arithmetic, bit for bit, with the
// x86 integer dot products WebAssembly cannot reach (AVX-512 VNNI's vpdpbusd, or AVX2's pmaddubsw
// on 256-bit registers). block-kernel.ts checks the results against its WebAssembly kernel before
// it uses them.
//
// Arithmetic (block-kernel.ts has the derivation): activations come as records of 32 int8 values,
// their fp32 scale dx and 8·Σx; Q4_0 weights in the four-row interleaved layout (formats/blocks.ts),
// Q8_0 in GGUF's row order. For output row r and activation row i,
//   out[i·n + r] = Σ_blocks in order  fp32(isum) · (dw · dx)
// with isum exact and every fp32 step rounded as written: built with -ffp-contract=off, so no
// fused multiply-adds.

#include <immintrin.h>
#include <node_api.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

namespace {

constexpr int kBlock = 32;
constexpr int kRecordBytes = kBlock + 8;
constexpr int kGroupRows = 4;
constexpr int kQ4GroupBytes = kGroupRows * 18;  // four fp16 scales, then four 16-byte slices
constexpr int kQ8BlockBytes = 34;
/** Activation rows sharing one pass over four output rows' weights. */
constexpr int kRowsPerPass = 4;

/** One product: out[i·n + r] for output rows [row, rowEnd) and activation rows i < m. */
struct Product {
  const uint8_t* w;  // the matrix's first block
  int row, rowEnd;
  int m;
  const uint8_t* x;  // m · nb activation records
  float* out;
  int n;
  int nb;  // blocks per row
};

inline float recordScale(const uint8_t* record) {
  float value;
  memcpy(&value, record + kBlock, 4);
  return value;
}

/** 8 · Σ of the record's values (Q4_0's offset of 8, folded out once per block). */
inline int32_t recordOffset(const uint8_t* record) {
  int32_t value;
  memcpy(&value, record + kBlock + 4, 4);
  return value;
}

#define AVX512_VNNI __attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni")))
#define AVX2 __attribute__((target("avx2")))

/**
 * Four fp16 scales as exact f32 from their words sign-extended to i32: shifted left by 13, bits
 * 30–28 cleared, times 2^112 — the WebAssembly kernel's own conversion, so infinities and NaNs map
 * the same way.
 */
AVX2 inline __m128 scalesFromWords(__m128i signExtended) {
  const __m128i bits = _mm_and_si128(_mm_slli_epi32(signExtended, 13), _mm_set1_epi32(static_cast<int32_t>(0x8fffffff)));
  return _mm_mul_ps(_mm_castsi128_ps(bits), _mm_set1_ps(0x1p112f));
}

/** The interleaved group's four scales, 8 contiguous bytes at p. */
AVX2 inline __m128 groupScales(const uint8_t* p) {
  return scalesFromWords(_mm_cvtepi16_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p))));
}

/** The scales of four Q8_0 rows' blocks, `stride` bytes apart from p. */
AVX2 inline __m128 rowScales(const uint8_t* p, size_t stride) {
  int16_t h[4];
  for (int k = 0; k < 4; k++) memcpy(&h[k], p + k * stride, 2);
  return scalesFromWords(_mm_setr_epi32(h[0], h[1], h[2], h[3]));
}

/** acc += fp32(sums) · (dw · dx): the order every variant and the reference use. */
AVX2 inline __m128 accumulate(__m128 acc, __m128i sums, __m128 dw, const uint8_t* record) {
  return _mm_add_ps(acc, _mm_mul_ps(_mm_cvtepi32_ps(sums), _mm_mul_ps(dw, _mm_set1_ps(recordScale(record)))));
}

/** The i32 sums of four vectors' lanes, one per output lane: [Σa, Σb, Σc, Σd]. */
AVX2 inline __m128i sumEach(__m256i a, __m256i b, __m256i c, __m256i d) {
  const __m256i all = _mm256_hadd_epi32(_mm256_hadd_epi32(a, b), _mm256_hadd_epi32(c, d));
  return _mm_add_epi32(_mm256_castsi256_si128(all), _mm256_extracti128_si256(all, 1));
}

// ── Q4_0, four interleaved rows at a time ───────────────────────────────────────────────────────
//
// A group block holds, for slice k, bytes 4k … 4k+3 of rows 0–3 (low nibbles: values 4k …, high:
// 16 + 4k …). The activations are spread to match: 32-bit lane 4k + r holds values 4k … 4k+3.

template <int R>
AVX512_VNNI void q4GroupAvx512(const uint8_t* p, int nb, const uint8_t* records, size_t recordStride, float* out, size_t outStride) {
  const __m512i lowNibbles = _mm512_set1_epi8(0x0f);
  const __m512i lowSpread = _mm512_set_epi32(3, 3, 3, 3, 2, 2, 2, 2, 1, 1, 1, 1, 0, 0, 0, 0);
  const __m512i highSpread = _mm512_add_epi32(lowSpread, _mm512_set1_epi32(4));
  __m128 acc[R];
  for (int r = 0; r < R; r++) acc[r] = _mm_setzero_ps();
  for (int b = 0; b < nb; b++, p += kQ4GroupBytes) {
#ifdef PREFETCH_BYTES
    _mm_prefetch(reinterpret_cast<const char*>(p + PREFETCH_BYTES), _MM_HINT_T0);
#endif
    const __m512i q = _mm512_loadu_si512(p + 8);
    const __m512i low = _mm512_and_si512(q, lowNibbles);
    const __m512i high = _mm512_and_si512(_mm512_srli_epi16(q, 4), lowNibbles);
    const __m128 dw = groupScales(p);
    for (int r = 0; r < R; r++) {
      const uint8_t* record = records + r * recordStride + b * kRecordBytes;
      const __m512i x = _mm512_broadcast_i64x4(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(record)));
      __m512i sums = _mm512_dpbusd_epi32(_mm512_setzero_si512(), low, _mm512_permutexvar_epi32(lowSpread, x));
      sums = _mm512_dpbusd_epi32(sums, high, _mm512_permutexvar_epi32(highSpread, x));
      const __m256i half = _mm256_add_epi32(_mm512_castsi512_si256(sums), _mm512_extracti64x4_epi64(sums, 1));
      const __m128i rows = _mm_add_epi32(_mm256_castsi256_si128(half), _mm256_extracti128_si256(half, 1));
      acc[r] = accumulate(acc[r], _mm_sub_epi32(rows, _mm_set1_epi32(recordOffset(record))), dw, record);
    }
  }
  for (int r = 0; r < R; r++) _mm_storeu_ps(out + r * outStride, acc[r]);
}

template <int R>
AVX2 void q4GroupAvx2(const uint8_t* p, int nb, const uint8_t* records, size_t recordStride, float* out, size_t outStride) {
  const __m256i lowNibbles = _mm256_set1_epi8(0x0f);
  const __m256i ones = _mm256_set1_epi16(1);
  const __m256i spread01 = _mm256_set_epi32(1, 1, 1, 1, 0, 0, 0, 0);
  const __m256i spread23 = _mm256_set_epi32(3, 3, 3, 3, 2, 2, 2, 2);
  const __m256i four = _mm256_set1_epi32(4);
  __m128 acc[R];
  for (int r = 0; r < R; r++) acc[r] = _mm_setzero_ps();
  for (int b = 0; b < nb; b++, p += kQ4GroupBytes) {
    const __m256i q01 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + 8));
    const __m256i q23 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + 40));
    const __m256i low01 = _mm256_and_si256(q01, lowNibbles);
    const __m256i low23 = _mm256_and_si256(q23, lowNibbles);
    const __m256i high01 = _mm256_and_si256(_mm256_srli_epi16(q01, 4), lowNibbles);
    const __m256i high23 = _mm256_and_si256(_mm256_srli_epi16(q23, 4), lowNibbles);
    const __m128 dw = groupScales(p);
    for (int r = 0; r < R; r++) {
      const uint8_t* record = records + r * recordStride + b * kRecordBytes;
      const __m256i x = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(record));
      // A pmaddubsw lane is ≤ 2·15·127, four of them ≤ 15,240: no i16 saturation.
      const __m256i pairs = _mm256_add_epi16(
          _mm256_add_epi16(_mm256_maddubs_epi16(low01, _mm256_permutevar8x32_epi32(x, spread01)),
                           _mm256_maddubs_epi16(low23, _mm256_permutevar8x32_epi32(x, spread23))),
          _mm256_add_epi16(_mm256_maddubs_epi16(high01, _mm256_permutevar8x32_epi32(x, _mm256_add_epi32(spread01, four))),
                           _mm256_maddubs_epi16(high23, _mm256_permutevar8x32_epi32(x, _mm256_add_epi32(spread23, four)))));
      const __m256i sums = _mm256_madd_epi16(pairs, ones);
      const __m128i rows = _mm_add_epi32(_mm256_castsi256_si128(sums), _mm256_extracti128_si256(sums, 1));
      acc[r] = accumulate(acc[r], _mm_sub_epi32(rows, _mm_set1_epi32(recordOffset(record))), dw, record);
    }
  }
  for (int r = 0; r < R; r++) _mm_storeu_ps(out + r * outStride, acc[r]);
}

// ── Q8_0, four rows in GGUF's order at a time ───────────────────────────────────────────────────

/**
 * VNNI multiplies unsigned by signed bytes: (w + 128)·x summed, less 128·Σx (16 × the record's
 * 8·Σx), is Σ w·x exactly.
 */
template <int R>
AVX512_VNNI void q8RowsAvx512(const uint8_t* p, int nb, const uint8_t* records, size_t recordStride, float* out, size_t outStride) {
  const size_t stride = static_cast<size_t>(kQ8BlockBytes) * nb;
  const __m256i bias = _mm256_set1_epi8(static_cast<char>(0x80));
  __m128 acc[R];
  for (int r = 0; r < R; r++) acc[r] = _mm_setzero_ps();
  for (int b = 0; b < nb; b++, p += kQ8BlockBytes) {
    __m256i w[4];
    for (int k = 0; k < 4; k++) w[k] = _mm256_xor_si256(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + k * stride + 2)), bias);
    const __m128 dw = rowScales(p, stride);
    for (int r = 0; r < R; r++) {
      const uint8_t* record = records + r * recordStride + b * kRecordBytes;
      const __m256i x = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(record));
      const __m256i zero = _mm256_setzero_si256();
      const __m128i sums = sumEach(_mm256_dpbusd_epi32(zero, w[0], x), _mm256_dpbusd_epi32(zero, w[1], x),
                                   _mm256_dpbusd_epi32(zero, w[2], x), _mm256_dpbusd_epi32(zero, w[3], x));
      acc[r] = accumulate(acc[r], _mm_sub_epi32(sums, _mm_set1_epi32(16 * recordOffset(record))), dw, record);
    }
  }
  for (int r = 0; r < R; r++) _mm_storeu_ps(out + r * outStride, acc[r]);
}

/** pmaddubsw on |w| and x carrying w's sign: each i16 lane ≤ 2·128·127, no saturation. */
template <int R>
AVX2 void q8RowsAvx2(const uint8_t* p, int nb, const uint8_t* records, size_t recordStride, float* out, size_t outStride) {
  const size_t stride = static_cast<size_t>(kQ8BlockBytes) * nb;
  const __m256i ones = _mm256_set1_epi16(1);
  __m128 acc[R];
  for (int r = 0; r < R; r++) acc[r] = _mm_setzero_ps();
  for (int b = 0; b < nb; b++, p += kQ8BlockBytes) {
    __m256i w[4];
    for (int k = 0; k < 4; k++) w[k] = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + k * stride + 2));
    const __m128 dw = rowScales(p, stride);
    for (int r = 0; r < R; r++) {
      const uint8_t* record = records + r * recordStride + b * kRecordBytes;
      const __m256i x = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(record));
      __m256i dots[4];
      for (int k = 0; k < 4; k++)
        dots[k] = _mm256_madd_epi16(_mm256_maddubs_epi16(_mm256_sign_epi8(w[k], w[k]), _mm256_sign_epi8(x, w[k])), ones);
      acc[r] = accumulate(acc[r], sumEach(dots[0], dots[1], dots[2], dots[3]), dw, record);
    }
  }
  for (int r = 0; r < R; r++) _mm_storeu_ps(out + r * outStride, acc[r]);
}

// ── the products ─────────────────────────────────────────────────────────────────────────────

/** Four output rows (their first block at p) against R activation rows. */
using RowsKernel = void (*)(const uint8_t* p, int nb, const uint8_t* records, size_t recordStride, float* out, size_t outStride);
using Kernels = RowsKernel[kRowsPerPass];

/** Four output rows at a time, each against up to kRowsPerPass activation rows per pass. */
void runProduct(const Product& job, size_t fourRowsBytes, const Kernels& kernels) {
  const size_t recordStride = static_cast<size_t>(kRecordBytes) * job.nb;
  for (int row = job.row; row < job.rowEnd; row += kGroupRows) {
    const uint8_t* p = job.w + (row / kGroupRows) * fourRowsBytes;
    for (int i = 0; i < job.m; i += kRowsPerPass) {
      const int rows = job.m - i < kRowsPerPass ? job.m - i : kRowsPerPass;
      kernels[rows - 1](p, job.nb, job.x + i * recordStride, recordStride, job.out + static_cast<size_t>(i) * job.n + row, job.n);
    }
  }
}

constexpr Kernels kQ4Avx512 = {q4GroupAvx512<1>, q4GroupAvx512<2>, q4GroupAvx512<3>, q4GroupAvx512<4>};
constexpr Kernels kQ4Avx2 = {q4GroupAvx2<1>, q4GroupAvx2<2>, q4GroupAvx2<3>, q4GroupAvx2<4>};
constexpr Kernels kQ8Avx512 = {q8RowsAvx512<1>, q8RowsAvx512<2>, q8RowsAvx512<3>, q8RowsAvx512<4>};
constexpr Kernels kQ8Avx2 = {q8RowsAvx2<1>, q8RowsAvx2<2>, q8RowsAvx2<3>, q8RowsAvx2<4>};

bool hasAvx512Vnni() {
  return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl") &&
         __builtin_cpu_supports("avx512vnni");
}

bool hasAvx2() { return __builtin_cpu_supports("avx2"); }

// ── N-API ────────────────────────────────────────────────────────────────────────────────────

/** One export: a format on one instruction set. */
struct Entry {
  const char* name;
  bool q4;  // Q4_0 (interleaved groups) or Q8_0 (rows)
  const Kernels* kernels;
  bool (*supported)();
};

constexpr Entry kEntries[] = {
    {"q4_0_avx512vnni", true, &kQ4Avx512, hasAvx512Vnni},
    {"q4_0_avx2", true, &kQ4Avx2, hasAvx2},
    {"q8_0_avx512vnni", false, &kQ8Avx512, hasAvx512Vnni},
    {"q8_0_avx2", false, &kQ8Avx2, hasAvx2},
};

napi_value fail(napi_env env, const Entry& entry, const char* what) {
  char message[160];
  snprintf(message, sizeof message, "%s: %s", entry.name, what);
  napi_throw_error(env, "ERR_SIROCCO_NATIVE_KERNEL", message);
  return nullptr;
}

/**
 * product(memory, cols, w, row, rowEnd, m, x, out, n): the WebAssembly kernel's <format>_<cols>
 * export on the bytes of `memory` (a Uint8Array over a whole, possibly shared, wasm memory), whose
 * offsets are byte addresses in it as in the module. Everything is checked against the memory.
 */
napi_value RunProduct(napi_env env, napi_callback_info info) {
  size_t argc = 9;
  napi_value argv[9];
  void* data = nullptr;
  napi_get_cb_info(env, info, &argc, argv, nullptr, &data);
  const Entry& entry = *static_cast<const Entry*>(data);
  if (argc != 9) return fail(env, entry, "takes (memory, cols, w, row, rowEnd, m, x, out, n)");
  napi_typedarray_type type;
  size_t length = 0;
  void* bytes = nullptr;
  if (napi_get_typedarray_info(env, argv[0], &type, &length, &bytes, nullptr, nullptr) != napi_ok || type != napi_uint8_array)
    return fail(env, entry, "memory must be a Uint8Array");
  int32_t a[8];
  for (int k = 0; k < 8; k++)
    if (napi_get_value_int32(env, argv[k + 1], &a[k]) != napi_ok) return fail(env, entry, "offsets must be numbers");
  const int32_t cols = a[0], w = a[1], row = a[2], rowEnd = a[3], m = a[4], x = a[5], out = a[6], n = a[7];
  if (cols <= 0 || cols % kBlock != 0 || row < 0 || row % kGroupRows != 0 || rowEnd % kGroupRows != 0 || row > rowEnd ||
      rowEnd > n || m < 0 || w < 0 || x < 0 || out < 0 || out % 4 != 0)
    return fail(env, entry, "shape or offsets out of range");
  const uint64_t nb = static_cast<uint64_t>(cols) / kBlock;
  const uint64_t fourRowsBytes = nb * (entry.q4 ? kQ4GroupBytes : kGroupRows * kQ8BlockBytes);
  if (static_cast<uint64_t>(w) + static_cast<uint64_t>(rowEnd / kGroupRows) * fourRowsBytes > length ||
      static_cast<uint64_t>(x) + static_cast<uint64_t>(m) * nb * kRecordBytes > length ||
      static_cast<uint64_t>(out) + 4 * static_cast<uint64_t>(m) * static_cast<uint64_t>(n) > length)
    return fail(env, entry, "the product does not fit in its memory");
  if (!entry.supported()) return fail(env, entry, "this CPU lacks the instruction set");
  uint8_t* base = static_cast<uint8_t*>(bytes);
  const Product job{base + w, row, rowEnd, m, base + x, reinterpret_cast<float*>(base + out), n, static_cast<int>(nb)};
  runProduct(job, fourRowsBytes, *entry.kernels);
  return nullptr;
}

/** The instruction sets this CPU runs, best first ("avx512vnni", "avx2"). */
napi_value Supported(napi_env env, napi_callback_info) {
  napi_value list;
  napi_create_array(env, &list);
  uint32_t count = 0;
  const char* names[] = {hasAvx512Vnni() ? "avx512vnni" : nullptr, hasAvx2() ? "avx2" : nullptr};
  for (const char* name : names) {
    if (!name) continue;
    napi_value value;
    napi_create_string_utf8(env, name, NAPI_AUTO_LENGTH, &value);
    napi_set_element(env, list, count++, value);
  }
  return list;
}

}  // namespace

NAPI_MODULE_INIT() {
  __builtin_cpu_init();
  for (const Entry& entry : kEntries) {
    napi_value fn;
    napi_create_function(env, entry.name, NAPI_AUTO_LENGTH, RunProduct, const_cast<Entry*>(&entry), &fn);
    napi_set_named_property(env, exports, entry.name, fn);
  }
  napi_value supported;
  napi_create_function(env, "supported", NAPI_AUTO_LENGTH, Supported, nullptr, &supported);
  napi_set_named_property(env, exports, "supported", supported);
  return exports;
}
