// The expert products of block-kernel.ts in native SIMD: the same arithmetic, bit for bit, with the
// x86 integer dot products WebAssembly cannot reach (AVX-512 VNNI's vpdpbusd, or AVX2's pmaddubsw
// on 256-bit registers). block-kernel.ts checks the results against its WebAssembly kernel before
// it uses them.
//
// Arithmetic (block-kernel.ts has the derivation): activations come as records of 32 int8 values,
// their fp32 scale dx and 8·Σx; Q4_0 weights in the four-row interleaved layout, in bands of 16
// rows (formats/blocks.ts), Q8_0 in GGUF's row order. For output row r and activation row i,
//   out[i·n + r] = Σ_blocks in order  fp32(isum) · (dw · dx)
// with isum exact and every fp32 step rounded as written: built with -ffp-contract=off, so no
// fused multiply-adds.

#include "block-gemm.h"

#include "attention-layer.h"
#include "expert-ffn.h"
#include "helper-thread.h"
#include "napi-args.h"
#include "softmax-weights.h"

#include <immintrin.h>
#include <math.h>
#include <node_api.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

namespace {

using sirocco::kBlock;
using sirocco::kRecordBytes;
using sirocco::Layout;
constexpr int kGroupRows = 4;
constexpr int kQ4GroupBytes = kGroupRows * 18;  // four fp16 scales, then four 16-byte slices
constexpr int kQ8BlockBytes = 34;
constexpr int kQ8GroupBytes = kGroupRows * kQ8BlockBytes;  // four fp16 scales, then four rows' 32 quants
/** How far ahead a band kernel prefetches: 16 block columns of a band. */
constexpr int kPrefetchBytes = 16 * 4 * kQ4GroupBytes;
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

/** Eight fp16 scales (words) as exact f32, groupScales' conversion. */
AVX2 inline __m256 scalesFromWords8(__m128i words) {
  const __m256i bits = _mm256_and_si256(_mm256_slli_epi32(_mm256_cvtepi16_epi32(words), 13), _mm256_set1_epi32(static_cast<int32_t>(0x8fffffff)));
  return _mm256_mul_ps(_mm256_castsi256_ps(bits), _mm256_set1_ps(0x1p112f));
}

/** Eight rows' fp16 scales, four contiguous at a and four at b, as exact f32. */
AVX2 inline __m256 eightScales(const uint8_t* a, const uint8_t* b) {
  return scalesFromWords8(_mm_unpacklo_epi64(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(a)), _mm_loadl_epi64(reinterpret_cast<const __m128i*>(b))));
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
AVX512_VNNI void q4GroupAvx512(const uint8_t* p, size_t blockStride, int nb, const uint8_t* records, size_t recordStride, float* out,
                               size_t outStride) {
  const __m512i lowNibbles = _mm512_set1_epi8(0x0f);
  const __m512i lowSpread = _mm512_set_epi32(3, 3, 3, 3, 2, 2, 2, 2, 1, 1, 1, 1, 0, 0, 0, 0);
  const __m512i highSpread = _mm512_add_epi32(lowSpread, _mm512_set1_epi32(4));
  __m128 acc[R];
  for (int r = 0; r < R; r++) acc[r] = _mm_setzero_ps();
  for (int b = 0; b < nb; b++, p += blockStride) {
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

/**
 * A whole band (four groups, 16 rows) at once, its block columns one after the other: the
 * activation spread is shared, the four groups' partial sums fold into one vector of 16 row sums
 * (two shuffle-and-add levels instead of two extract-and-add steps per group), and the fp32 steps
 * run on 16 rows per instruction. About half the instructions per weight byte of one
 * group at a time; each lane still adds its row's blocks in order, so the bits are the same.
 */
template <int R>
AVX512_VNNI void q4BandAvx512(const uint8_t* p, int nb, const uint8_t* records, size_t recordStride, float* out, size_t outStride) {
  const __m512i lowNibbles = _mm512_set1_epi8(0x0f);
  const __m512i lowSpread = _mm512_set_epi32(3, 3, 3, 3, 2, 2, 2, 2, 1, 1, 1, 1, 0, 0, 0, 0);
  const __m512i highSpread = _mm512_add_epi32(lowSpread, _mm512_set1_epi32(4));
  const __m512i signAndMagnitude = _mm512_set1_epi32(static_cast<int32_t>(0x8fffffff));
  const __m512 twoTo112 = _mm512_set1_ps(0x1p112f);
  constexpr int kPairs = _MM_SHUFFLE(2, 0, 2, 0);
  constexpr int kOthers = _MM_SHUFFLE(3, 1, 3, 1);
  const uint8_t* group[4] = {p, p + kQ4GroupBytes, p + 2 * kQ4GroupBytes, p + 3 * kQ4GroupBytes};
  __m512 acc[R];
  for (int r = 0; r < R; r++) acc[r] = _mm512_setzero_ps();
  for (int b = 0; b < nb; b++) {
    // The band's blocks 16 columns ahead: measured, a batch of 8 rows 20–25% faster (one row: within noise).
    for (int line = 0; line < 4 * kQ4GroupBytes; line += 64) _mm_prefetch(reinterpret_cast<const char*>(group[0] + kPrefetchBytes + line), _MM_HINT_T0);
    __m512i low[4], high[4];
    for (int g = 0; g < 4; g++) {
      const __m512i q = _mm512_loadu_si512(group[g] + 8);
      low[g] = _mm512_and_si512(q, lowNibbles);
      high[g] = _mm512_and_si512(_mm512_srli_epi16(q, 4), lowNibbles);
    }
    // The 16 rows' fp16 scales (8 bytes per group) as exact f32, as groupScales does for four.
    const __m128i scales01 = _mm_unpacklo_epi64(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(group[0])),
                                                _mm_loadl_epi64(reinterpret_cast<const __m128i*>(group[1])));
    const __m128i scales23 = _mm_unpacklo_epi64(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(group[2])),
                                                _mm_loadl_epi64(reinterpret_cast<const __m128i*>(group[3])));
    const __m512i words = _mm512_cvtepi16_epi32(_mm256_inserti128_si256(_mm256_castsi128_si256(scales01), scales23, 1));
    const __m512 dw = _mm512_mul_ps(_mm512_castsi512_ps(_mm512_and_si512(_mm512_slli_epi32(words, 13), signAndMagnitude)), twoTo112);
    for (int r = 0; r < R; r++) {
      const uint8_t* record = records + r * recordStride + b * kRecordBytes;
      const __m512i x = _mm512_broadcast_i64x4(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(record)));
      const __m512i xLow = _mm512_permutexvar_epi32(lowSpread, x);
      const __m512i xHigh = _mm512_permutexvar_epi32(highSpread, x);
      __m512i sums[4];
      for (int g = 0; g < 4; g++) sums[g] = _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(_mm512_setzero_si512(), low[g], xLow), high[g], xHigh);
      // [a0+a1, a2+a3, b0+b1, b2+b3] per pair of groups, then each group's four slices summed.
      const __m512i sums01 = _mm512_add_epi32(_mm512_shuffle_i32x4(sums[0], sums[1], kPairs), _mm512_shuffle_i32x4(sums[0], sums[1], kOthers));
      const __m512i sums23 = _mm512_add_epi32(_mm512_shuffle_i32x4(sums[2], sums[3], kPairs), _mm512_shuffle_i32x4(sums[2], sums[3], kOthers));
      const __m512i rows = _mm512_add_epi32(_mm512_shuffle_i32x4(sums01, sums23, kPairs), _mm512_shuffle_i32x4(sums01, sums23, kOthers));
      const __m512i exact = _mm512_sub_epi32(rows, _mm512_set1_epi32(recordOffset(record)));
      acc[r] = _mm512_add_ps(acc[r], _mm512_mul_ps(_mm512_cvtepi32_ps(exact), _mm512_mul_ps(dw, _mm512_set1_ps(recordScale(record)))));
    }
    for (int g = 0; g < 4; g++) group[g] += 4 * kQ4GroupBytes;
  }
  for (int r = 0; r < R; r++) _mm512_storeu_ps(out + r * outStride, acc[r]);
}

/** An activation block spread for AVX2: slices 0–1 and 2–3 against the low nibbles, then the high ones. */
struct SpreadAvx2 {
  __m256i low01, low23, high01, high23;
};

AVX2 inline SpreadAvx2 spreadAvx2(const uint8_t* record) {
  const __m256i spread01 = _mm256_set_epi32(1, 1, 1, 1, 0, 0, 0, 0);
  const __m256i spread23 = _mm256_set_epi32(3, 3, 3, 3, 2, 2, 2, 2);
  const __m256i four = _mm256_set1_epi32(4);
  const __m256i x = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(record));
  return {_mm256_permutevar8x32_epi32(x, spread01), _mm256_permutevar8x32_epi32(x, spread23),
          _mm256_permutevar8x32_epi32(x, _mm256_add_epi32(spread01, four)), _mm256_permutevar8x32_epi32(x, _mm256_add_epi32(spread23, four))};
}

/**
 * A group block's sums (Σ x·q over unsigned nibbles, before the offset) in eight lanes: row r's in
 * lanes r and 4 + r, one per half of the block.
 */
AVX2 inline __m256i groupHalfSumsAvx2(const uint8_t* p, const SpreadAvx2& x) {
  const __m256i lowNibbles = _mm256_set1_epi8(0x0f);
  const __m256i q01 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + 8));
  const __m256i q23 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + 40));
  // A pmaddubsw lane is ≤ 2·15·127, four of them ≤ 15,240: no i16 saturation.
  const __m256i pairs = _mm256_add_epi16(
      _mm256_add_epi16(_mm256_maddubs_epi16(_mm256_and_si256(q01, lowNibbles), x.low01),
                       _mm256_maddubs_epi16(_mm256_and_si256(q23, lowNibbles), x.low23)),
      _mm256_add_epi16(_mm256_maddubs_epi16(_mm256_and_si256(_mm256_srli_epi16(q01, 4), lowNibbles), x.high01),
                       _mm256_maddubs_epi16(_mm256_and_si256(_mm256_srli_epi16(q23, 4), lowNibbles), x.high23)));
  return _mm256_madd_epi16(pairs, _mm256_set1_epi16(1));
}

template <int R>
AVX2 void q4GroupAvx2(const uint8_t* p, size_t blockStride, int nb, const uint8_t* records, size_t recordStride, float* out,
                      size_t outStride) {
  __m128 acc[R];
  for (int r = 0; r < R; r++) acc[r] = _mm_setzero_ps();
  for (int b = 0; b < nb; b++, p += blockStride) {
    const __m128 dw = groupScales(p);
    for (int r = 0; r < R; r++) {
      const uint8_t* record = records + r * recordStride + b * kRecordBytes;
      const __m256i halves = groupHalfSumsAvx2(p, spreadAvx2(record));
      const __m128i rows = _mm_add_epi32(_mm256_castsi256_si128(halves), _mm256_extracti128_si256(halves, 1));
      acc[r] = accumulate(acc[r], _mm_sub_epi32(rows, _mm_set1_epi32(recordOffset(record))), dw, record);
    }
  }
  for (int r = 0; r < R; r++) _mm_storeu_ps(out + r * outStride, acc[r]);
}

/**
 * A whole band (four groups, 16 rows), its block columns read in order: one stream, one spread per
 * block, and two groups' eight rows per fp32 instruction (their halves folded by two lane swaps and
 * an add), about a fifth fewer instructions than a group at a time. Each lane still adds its row's
 * blocks in order, so the bits are the same. Used for a lone activation row, where the weights'
 * one read stream is what counts; batches go through q4BandPairsAvx2.
 */
template <int R>
AVX2 void q4BandAvx2(const uint8_t* p, int nb, const uint8_t* records, size_t recordStride, float* out, size_t outStride) {
  __m256 acc[R][2];
  for (int r = 0; r < R; r++) acc[r][0] = acc[r][1] = _mm256_setzero_ps();
  for (int b = 0; b < nb; b++, p += 4 * kQ4GroupBytes) {
    // The band's blocks 16 columns ahead, as q4BandAvx512 does: one row 10–25% faster here.
    for (int line = 0; line < 4 * kQ4GroupBytes; line += 64) _mm_prefetch(reinterpret_cast<const char*>(p + kPrefetchBytes + line), _MM_HINT_T0);
    // Groups 0–1's eight scales, then 2–3's.
    const __m256 dw[2] = {eightScales(p, p + kQ4GroupBytes), eightScales(p + 2 * kQ4GroupBytes, p + 3 * kQ4GroupBytes)};
    for (int r = 0; r < R; r++) {
      const uint8_t* record = records + r * recordStride + b * kRecordBytes;
      const SpreadAvx2 x = spreadAvx2(record);
      const __m256i offset = _mm256_set1_epi32(recordOffset(record));
      const __m256 dx = _mm256_set1_ps(recordScale(record));
      for (int h = 0; h < 2; h++) {
        const uint8_t* pair = p + 2 * h * kQ4GroupBytes;
        const __m256i first = groupHalfSumsAvx2(pair, x);
        const __m256i second = groupHalfSumsAvx2(pair + kQ4GroupBytes, x);
        const __m256i rows = _mm256_add_epi32(_mm256_permute2x128_si256(first, second, 0x20), _mm256_permute2x128_si256(first, second, 0x31));
        acc[r][h] = _mm256_add_ps(acc[r][h], _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_sub_epi32(rows, offset)), _mm256_mul_ps(dw[h], dx)));
      }
    }
  }
  for (int r = 0; r < R; r++)
    for (int h = 0; h < 2; h++) _mm256_storeu_ps(out + r * outStride + 8 * h, acc[r][h]);
}

/** Four bytes at p in every 32-bit lane: one broadcast load. */
AVX2 inline __m256i broadcastFour(const uint8_t* p) {
  return _mm256_castps_si256(_mm256_broadcast_ss(reinterpret_cast<const float*>(p)));
}

/**
 * Two groups of a band (eight rows) against R activation rows, for batches. A 32-byte vector holds
 * slice k of both groups (bytes 4k … 4k+3 of eight rows), so an activation's four values for that
 * slice are one broadcast load (no spread), and a block's eight pmaddubsw sum in i16 (each lane
 * ≤ 8·2·15·127 = 30,480) to one pmaddwd that gives the eight rows' sums directly (no fold): about
 * 21 instructions per activation row and 256 weights against the band kernel's ~37. The nibbles
 * are unpacked once per block for all R rows. Each lane adds its row's blocks in order, so the
 * bits are the same as every other kernel's.
 */
template <int R>
AVX2 void q4PairAvx2(const uint8_t* p, size_t blockStride, int nb, const uint8_t* records, size_t recordStride, float* out, size_t outStride) {
  const __m256i lowNibbles = _mm256_set1_epi8(0x0f);
  const __m256i ones = _mm256_set1_epi16(1);
  __m256 acc[R];
  for (int r = 0; r < R; r++) acc[r] = _mm256_setzero_ps();
  for (int b = 0; b < nb; b++, p += blockStride) {
    for (int line = 0; line < 2 * kQ4GroupBytes; line += 64) _mm_prefetch(reinterpret_cast<const char*>(p + 16 * blockStride + line), _MM_HINT_T0);
    const __m256 dw = eightScales(p, p + kQ4GroupBytes);
    __m256i q[8];
    for (int k = 0; k < 4; k++) {
      const __m256i packed = _mm256_inserti128_si256(_mm256_castsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p + 8 + 16 * k))),
                                                     _mm_loadu_si128(reinterpret_cast<const __m128i*>(p + kQ4GroupBytes + 8 + 16 * k)), 1);
      q[k] = _mm256_and_si256(packed, lowNibbles);
      q[4 + k] = _mm256_and_si256(_mm256_srli_epi16(packed, 4), lowNibbles);
    }
#pragma GCC unroll 8
    for (int r = 0; r < R; r++) {
      const uint8_t* record = records + r * recordStride + b * kRecordBytes;
      __m256i sum = _mm256_maddubs_epi16(q[0], broadcastFour(record));
#pragma GCC unroll 8
      for (int k = 1; k < 8; k++) sum = _mm256_add_epi16(sum, _mm256_maddubs_epi16(q[k], broadcastFour(record + 4 * k)));
      const __m256i rows = _mm256_sub_epi32(_mm256_madd_epi16(sum, ones), _mm256_set1_epi32(recordOffset(record)));
      acc[r] = _mm256_add_ps(acc[r], _mm256_mul_ps(_mm256_cvtepi32_ps(rows), _mm256_mul_ps(dw, _mm256_set1_ps(recordScale(record)))));
    }
  }
  for (int r = 0; r < R; r++) _mm256_storeu_ps(out + r * outStride, acc[r]);
}

/**
 * A band for batches: its two pairs of groups one after the other (q4PairAvx2). Measured (AVX2 EPYC,
 * 14336×2048, one thread): 4 rows 2.1 ms against 2.5 with the band kernel, 8 rows 3.6 against 5.0,
 * 16 rows in one pass 6.2 against 10.1; 2 rows about the same.
 */
template <int R>
AVX2 void q4BandPairsAvx2(const uint8_t* p, int nb, const uint8_t* records, size_t recordStride, float* out, size_t outStride) {
  q4PairAvx2<R>(p, 4 * kQ4GroupBytes, nb, records, recordStride, out, outStride);
  q4PairAvx2<R>(p + 2 * kQ4GroupBytes, 4 * kQ4GroupBytes, nb, records, recordStride, out + 8, outStride);
}

// ── Q8_0, four rows at a time ───────────────────────────────────────────────────────────────────

/**
 * Q8_0 rows in GGUF's order (the int8 expert files'): four rows `stride` bytes apart, a block
 * column 34 bytes on. The same blocks of the rows two passes on are prefetched: short rows (a
 * 1024-wide matrix's are 17 cache lines) end before the hardware prefetcher has learned their four
 * streams (measured: 5× on a 32000×1024 matrix, 2× on an 8x7B expert's).
 */
struct Q8Rows {
  static constexpr size_t kStep = kQ8BlockBytes;
  static const uint8_t* quants(const uint8_t* p, size_t stride, int k) { return p + k * stride + 2; }
  AVX2 static __m128 scales(const uint8_t* p, size_t stride) { return rowScales(p, stride); }
  static void prefetch(const uint8_t* p, size_t stride) {
    for (int k = 8; k < 12; k++) _mm_prefetch(reinterpret_cast<const char*>(p + k * stride), _MM_HINT_T0);
  }
};

/**
 * Q8_0 rows interleaved by four (the native layer and head files', formats/blocks.ts Q8_0X4): per
 * block column the four rows' fp16 scales, then their 32 quants each, 136 bytes. One read stream
 * instead of four, and one load for the scales: a 32000×1024 matrix on one thread read at
 * 16–18 GB/s against 11 in GGUF's order (measured, cold, standalone).
 */
struct Q8Groups {
  static constexpr size_t kStep = kQ8GroupBytes;
  static const uint8_t* quants(const uint8_t* p, size_t, int k) { return p + 2 * kGroupRows + kBlock * k; }
  AVX2 static __m128 scales(const uint8_t* p, size_t) { return groupScales(p); }
  static void prefetch(const uint8_t* p, size_t) {
    // 16 block columns ahead, all three cache lines a group block may touch.
    for (int line = 0; line < 3; line++) _mm_prefetch(reinterpret_cast<const char*>(p + 16 * kQ8GroupBytes + 64 * line), _MM_HINT_T0);
  }
};

/**
 * VNNI multiplies unsigned by signed bytes: (w + 128)·x summed, less 128·Σx (16 × the record's
 * 8·Σx), is Σ w·x exactly.
 */
template <int R, class Order>
AVX512_VNNI void q8Avx512(const uint8_t* p, size_t stride, int nb, const uint8_t* records, size_t recordStride, float* out,
                          size_t outStride) {
  const __m256i bias = _mm256_set1_epi8(static_cast<char>(0x80));
  __m128 acc[R];
  for (int r = 0; r < R; r++) acc[r] = _mm_setzero_ps();
  for (int b = 0; b < nb; b++, p += Order::kStep) {
    Order::prefetch(p, stride);
    __m256i w[4];
    for (int k = 0; k < 4; k++)
      w[k] = _mm256_xor_si256(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(Order::quants(p, stride, k))), bias);
    const __m128 dw = Order::scales(p, stride);
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
template <int R, class Order>
AVX2 void q8Avx2(const uint8_t* p, size_t stride, int nb, const uint8_t* records, size_t recordStride, float* out, size_t outStride) {
  const __m256i ones = _mm256_set1_epi16(1);
  __m128 acc[R];
  for (int r = 0; r < R; r++) acc[r] = _mm_setzero_ps();
  for (int b = 0; b < nb; b++, p += Order::kStep) {
    Order::prefetch(p, stride);
    __m256i w[4];
    for (int k = 0; k < 4; k++) w[k] = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(Order::quants(p, stride, k)));
    const __m128 dw = Order::scales(p, stride);
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

/** Eight Q8_0 rows as two groups interleaved by four (the layer and head files'): the second group's blocks `stride` bytes on. */
struct GroupPair {
  static constexpr size_t kStep = kQ8GroupBytes;
  static const uint8_t* quants(const uint8_t* p, size_t stride, int k) { return (k < 4 ? p : p + stride) + 2 * kGroupRows + kBlock * (k % 4); }
  AVX2 static __m256 scales(const uint8_t* p, size_t stride) { return eightScales(p, p + stride); }
  static void prefetch(const uint8_t* p, size_t stride) {
    for (int line = 0; line < 3; line++) {
      _mm_prefetch(reinterpret_cast<const char*>(p + 16 * kQ8GroupBytes + 64 * line), _MM_HINT_T0);
      _mm_prefetch(reinterpret_cast<const char*>(p + stride + 16 * kQ8GroupBytes + 64 * line), _MM_HINT_T0);
    }
  }
};

/** Eight Q8_0 rows in GGUF's order (the int8 expert files'), `stride` bytes apart. */
struct EightRows {
  static constexpr size_t kStep = kQ8BlockBytes;
  static const uint8_t* quants(const uint8_t* p, size_t stride, int k) { return p + k * stride + 2; }
  AVX2 static __m256 scales(const uint8_t* p, size_t stride) {
    int16_t h[8];
    for (int k = 0; k < 8; k++) memcpy(&h[k], p + k * stride, 2);
    return scalesFromWords8(_mm_loadu_si128(reinterpret_cast<const __m128i*>(h)));
  }
  // The same blocks of the next eight rows, as Q8Rows does for its next passes.
  static void prefetch(const uint8_t* p, size_t stride) {
    for (int k = 8; k < 16; k++) _mm_prefetch(reinterpret_cast<const char*>(p + k * stride), _MM_HINT_T0);
  }
};

/**
 * Eight Q8_0 rows (addressed by Pair) against R activation rows, for batches. A block holds each
 * row's 32 quants in a row, so the rows kernels above sum each row's lanes horizontally per block.
 * Here the eight rows' blocks are transposed in registers (24 unpacks and lane swaps, shared by the
 * R rows) into vectors s_j holding quants 4j … 4j+3 of all eight rows; an activation's four values
 * for them are one broadcast load, and the sums of the eight pmaddubsw (each lane ≤ 2·128·127,
 * after pmaddwd exact in i32) come out one row per lane: no horizontal sums. Each lane adds its
 * row's blocks in order, so the bits are the rows kernels'.
 */
template <int R, class Pair>
AVX2 void q8PairAvx2(const uint8_t* p, size_t stride, int nb, const uint8_t* records, size_t recordStride, float* out, size_t outStride) {
  const __m256i ones = _mm256_set1_epi16(1);
  __m256 acc[R];
  for (int r = 0; r < R; r++) acc[r] = _mm256_setzero_ps();
  for (int b = 0; b < nb; b++, p += Pair::kStep) {
    Pair::prefetch(p, stride);
    const __m256 dw = Pair::scales(p, stride);
    __m256i row[8];
    for (int k = 0; k < 8; k++) row[k] = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(Pair::quants(p, stride, k)));
    // s[j]: dword j of rows 0–3 in the low half, of rows 4–7 in the high half, row k in lane k % 4.
    __m256i s[8], magnitude[8];
    for (int half = 0; half < 2; half++) {
      const __m256i* r = row + 4 * half;
      const __m256i t0 = _mm256_unpacklo_epi32(r[0], r[1]), t1 = _mm256_unpackhi_epi32(r[0], r[1]);
      const __m256i t2 = _mm256_unpacklo_epi32(r[2], r[3]), t3 = _mm256_unpackhi_epi32(r[2], r[3]);
      // u[j] for j < 4: [dword j of rows 0–3 | dword j + 4 of rows 0–3] (of this half's four rows).
      __m256i* u = s + 4 * half;
      u[0] = _mm256_unpacklo_epi64(t0, t2);
      u[1] = _mm256_unpackhi_epi64(t0, t2);
      u[2] = _mm256_unpacklo_epi64(t1, t3);
      u[3] = _mm256_unpackhi_epi64(t1, t3);
    }
    for (int j = 0; j < 4; j++) {
      const __m256i low = s[j], high = s[4 + j];
      s[j] = _mm256_permute2x128_si256(low, high, 0x20);
      s[4 + j] = _mm256_permute2x128_si256(low, high, 0x31);
    }
    for (int j = 0; j < 8; j++) magnitude[j] = _mm256_abs_epi8(s[j]);
#pragma GCC unroll 8
    for (int r = 0; r < R; r++) {
      const uint8_t* record = records + r * recordStride + b * kRecordBytes;
      __m256i sum = _mm256_setzero_si256();
#pragma GCC unroll 8
      for (int j = 0; j < 8; j++)
        sum = _mm256_add_epi32(sum, _mm256_madd_epi16(_mm256_maddubs_epi16(magnitude[j], _mm256_sign_epi8(broadcastFour(record + 4 * j), s[j])), ones));
      acc[r] = _mm256_add_ps(acc[r], _mm256_mul_ps(_mm256_cvtepi32_ps(sum), _mm256_mul_ps(dw, _mm256_set1_ps(recordScale(record)))));
    }
  }
  for (int r = 0; r < R; r++) _mm256_storeu_ps(out + r * outStride, acc[r]);
}

// ── the products ─────────────────────────────────────────────────────────────────────────────

/**
 * Four output rows (their first block at p, the next block column `blockStride` bytes on) against
 * R activation rows.
 */
using RowsKernel = void (*)(const uint8_t* p, size_t blockStride, int nb, const uint8_t* records, size_t recordStride, float* out,
                            size_t outStride);
using Kernels = RowsKernel[kRowsPerPass];
/** A band of 16 interleaved Q4_0 rows (its first block at p) against R activation rows. */
using BandKernel = void (*)(const uint8_t* p, int nb, const uint8_t* records, size_t recordStride, float* out, size_t outStride);
/**
 * Activation rows sharing one pass over a band's weights where the band kernels go that far (AVX2's
 * keep their accumulators in memory, so a pass is not bound by registers; AVX-512's stop at
 * kRowsPerPass, the rest of their table empty).
 */
constexpr int kBandRowsPerPass = 16;
using BandKernels = BandKernel[kBandRowsPerPass];

constexpr int kBandRows = 4 * kGroupRows;
static_assert(sirocco::kSplitRows % kBandRows == 0, "a split must fall between bands");

/** Where four rows' first block is, and how far apart the rows are (Q8_0 in GGUF's order). */
struct FourRows {
  const uint8_t* p;
  size_t blockStride;
};

FourRows locate(const Product& job, Layout layout, int row) {
  if (layout == Layout::kQ8_0Rows) return {job.w + static_cast<size_t>(row) * job.nb * kQ8BlockBytes, static_cast<size_t>(job.nb) * kQ8BlockBytes};
  if (layout == Layout::kQ8_0Groups) return {job.w + static_cast<size_t>(row / kGroupRows) * job.nb * kQ8GroupBytes, 0};
  const int band = row - row % kBandRows;
  const int groups = job.n - band >= kBandRows ? 4 : (job.n - band) / kGroupRows;
  const size_t bandStart = static_cast<size_t>(band) * job.nb * (kQ4GroupBytes / kGroupRows);
  return {job.w + bandStart + static_cast<size_t>((row - band) / kGroupRows) * kQ4GroupBytes, static_cast<size_t>(groups) * kQ4GroupBytes};
}

/**
 * Whole bands 16 rows at a time where there is a band kernel (against up to kBandRowsPerPass
 * activation rows per pass where the table has them), the rest four rows at a time against up to
 * kRowsPerPass.
 */
void runProduct(const Product& job, Layout layout, const Kernels& kernels, const BandKernels* bands) {
  const size_t recordStride = static_cast<size_t>(kRecordBytes) * job.nb;
  for (int row = job.row; row < job.rowEnd;) {
    const bool wholeBand = bands && row % kBandRows == 0 && row + kBandRows <= job.rowEnd && row + kBandRows <= job.n;
    const FourRows at = locate(job, layout, row);
    const int perPass = wholeBand && (*bands)[kBandRowsPerPass - 1] ? kBandRowsPerPass : kRowsPerPass;
    for (int i = 0; i < job.m; i += perPass) {
      const int rows = job.m - i < perPass ? job.m - i : perPass;
      const uint8_t* x = job.x + i * recordStride;
      float* out = job.out + static_cast<size_t>(i) * job.n + row;
      if (wholeBand) (*bands)[rows - 1](at.p, job.nb, x, recordStride, out, job.n);
      else kernels[rows - 1](at.p, at.blockStride, job.nb, x, recordStride, out, job.n);
    }
    row += wholeBand ? kBandRows : kGroupRows;
  }
}

/**
 * Activation rows from which AVX2 runs Q8_0 eight rows at a time (q8PairAvx2): below, the transpose
 * costs more than the rows kernels' horizontal sums (measured on a 32000×2048 head in groups, two
 * threads: 4 rows 5.0 against 4.6 ms; 5 rows 5.7 against 6.5, 8 rows 7.5 against 9.1, 16 rows 11.5
 * against 18.0).
 */
constexpr int kQ8PairMinRows = 5;

void runQ8Pairs(const Product& job, Layout layout);

constexpr Kernels kQ4Avx512 = {q4GroupAvx512<1>, q4GroupAvx512<2>, q4GroupAvx512<3>, q4GroupAvx512<4>};
constexpr BandKernels kQ4Avx512Bands = {q4BandAvx512<1>, q4BandAvx512<2>, q4BandAvx512<3>, q4BandAvx512<4>};
constexpr Kernels kQ4Avx2 = {q4GroupAvx2<1>, q4GroupAvx2<2>, q4GroupAvx2<3>, q4GroupAvx2<4>};
constexpr BandKernels kQ4Avx2Bands = {q4BandAvx2<1>,       q4BandPairsAvx2<2>,  q4BandPairsAvx2<3>,  q4BandPairsAvx2<4>,
                                      q4BandPairsAvx2<5>,  q4BandPairsAvx2<6>,  q4BandPairsAvx2<7>,  q4BandPairsAvx2<8>,
                                      q4BandPairsAvx2<9>,  q4BandPairsAvx2<10>, q4BandPairsAvx2<11>, q4BandPairsAvx2<12>,
                                      q4BandPairsAvx2<13>, q4BandPairsAvx2<14>, q4BandPairsAvx2<15>, q4BandPairsAvx2<16>};
constexpr Kernels kQ8Avx512 = {q8Avx512<1, Q8Rows>, q8Avx512<2, Q8Rows>, q8Avx512<3, Q8Rows>, q8Avx512<4, Q8Rows>};
constexpr Kernels kQ8Avx2 = {q8Avx2<1, Q8Rows>, q8Avx2<2, Q8Rows>, q8Avx2<3, Q8Rows>, q8Avx2<4, Q8Rows>};
/** Eight Q8_0 rows (their first blocks at p, addressed with `stride` by the layout) against R activation rows. */
using PairKernel = void (*)(const uint8_t* p, size_t stride, int nb, const uint8_t* records, size_t recordStride, float* out, size_t outStride);
using PairKernels = PairKernel[kBandRowsPerPass];
template <class Pair>
constexpr PairKernels kQ8PairsAvx2 = {
    q8PairAvx2<1, Pair>,  q8PairAvx2<2, Pair>,  q8PairAvx2<3, Pair>,  q8PairAvx2<4, Pair>,  q8PairAvx2<5, Pair>,  q8PairAvx2<6, Pair>,
    q8PairAvx2<7, Pair>,  q8PairAvx2<8, Pair>,  q8PairAvx2<9, Pair>,  q8PairAvx2<10, Pair>, q8PairAvx2<11, Pair>, q8PairAvx2<12, Pair>,
    q8PairAvx2<13, Pair>, q8PairAvx2<14, Pair>, q8PairAvx2<15, Pair>, q8PairAvx2<16, Pair>};
constexpr Kernels kQ8GroupsAvx512 = {q8Avx512<1, Q8Groups>, q8Avx512<2, Q8Groups>, q8Avx512<3, Q8Groups>, q8Avx512<4, Q8Groups>};
constexpr Kernels kQ8GroupsAvx2 = {q8Avx2<1, Q8Groups>, q8Avx2<2, Q8Groups>, q8Avx2<3, Q8Groups>, q8Avx2<4, Q8Groups>};

/**
 * A Q8_0 product on AVX2 with several activation rows: eight output rows at a time (q8PairAvx2, up
 * to kBandRowsPerPass activation rows a pass), a last four by the rows kernels.
 */
void runQ8Pairs(const Product& job, Layout layout) {
  const bool groups = layout == Layout::kQ8_0Groups;
  const size_t recordStride = static_cast<size_t>(kRecordBytes) * job.nb;
  // Groups: the next group's blocks one group's bytes on; rows: the next row's one row's bytes on.
  const size_t stride = static_cast<size_t>(job.nb) * (groups ? kQ8GroupBytes : kQ8BlockBytes);
  const PairKernels& kernels = groups ? kQ8PairsAvx2<GroupPair> : kQ8PairsAvx2<EightRows>;
  int row = job.row;
  for (; row + 2 * kGroupRows <= job.rowEnd; row += 2 * kGroupRows) {
    const uint8_t* p = job.w + static_cast<size_t>(groups ? row / kGroupRows : row) * stride;
    for (int i = 0; i < job.m; i += kBandRowsPerPass) {
      const int rows = job.m - i < kBandRowsPerPass ? job.m - i : kBandRowsPerPass;
      kernels[rows - 1](p, stride, job.nb, job.x + i * recordStride, recordStride, job.out + static_cast<size_t>(i) * job.n + row, job.n);
    }
  }
  if (row < job.rowEnd)
    runProduct({job.w, row, job.rowEnd, job.m, job.x, job.out, job.n, job.nb}, layout, groups ? kQ8GroupsAvx2 : kQ8Avx2, nullptr);
}

bool hasAvx512Vnni() {
  return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl") &&
         __builtin_cpu_supports("avx512vnni");
}

/** AVX2 with FMA, which the attention layer's own sums use (every AVX2 CPU so far has both). */
bool hasAvx2() { return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"); }

// ── N-API ────────────────────────────────────────────────────────────────────────────────────

/** One export: a format on one instruction set, in the expert files' layout. */
struct Entry {
  const char* name;
  sirocco::Isa isa;
  Layout layout;  // Q4_0 bands, or Q8_0 rows
  const Kernels* kernels;
  const BandKernels* bands;  // a Q4_0 band's 16 rows at a time, where there is such a kernel
  bool (*supported)();
};

constexpr Entry kEntries[] = {
    {"q4_0_avx512vnni", sirocco::Isa::kAvx512Vnni, Layout::kQ4_0Bands, &kQ4Avx512, &kQ4Avx512Bands, hasAvx512Vnni},
    {"q4_0_avx2", sirocco::Isa::kAvx2, Layout::kQ4_0Bands, &kQ4Avx2, &kQ4Avx2Bands, hasAvx2},
    {"q8_0_avx512vnni", sirocco::Isa::kAvx512Vnni, Layout::kQ8_0Rows, &kQ8Avx512, nullptr, hasAvx512Vnni},
    {"q8_0_avx2", sirocco::Isa::kAvx2, Layout::kQ8_0Rows, &kQ8Avx2, nullptr, hasAvx2},
};

/** Weight bytes of the first `rows` rows of a matrix of `nb` blocks per row. */
uint64_t layoutBytes(Layout layout, uint64_t rows, uint64_t nb) {
  return rows * nb * (layout == Layout::kQ4_0Bands ? kQ4GroupBytes / kGroupRows : kQ8BlockBytes);
}

napi_value fail(napi_env env, const Entry& entry, const char* what) { return sirocco::throwKernelError(env, entry.name, what); }

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
  // Byte offsets are unsigned 32-bit, as WebAssembly reads its addresses: a memory may reach 4 GiB.
  uint32_t a[8];
  for (int k = 0; k < 8; k++)
    if (napi_get_value_uint32(env, argv[k + 1], &a[k]) != napi_ok) return fail(env, entry, "offsets must be numbers");
  const uint32_t w = a[1], x = a[5], out = a[6];
  const int32_t cols = static_cast<int32_t>(a[0]), row = static_cast<int32_t>(a[2]), rowEnd = static_cast<int32_t>(a[3]),
                m = static_cast<int32_t>(a[4]), n = static_cast<int32_t>(a[7]);
  if (cols <= 0 || cols % kBlock != 0 || row < 0 || row % kGroupRows != 0 || rowEnd % kGroupRows != 0 || row > rowEnd ||
      rowEnd > n || m < 0 || out % 4 != 0)
    return fail(env, entry, "shape or offsets out of range");
  const uint64_t nb = static_cast<uint64_t>(cols) / kBlock;
  // Rows below rowEnd lie in the bands that start below it (Q4_0), or in the first rowEnd rows (Q8_0).
  const bool q4 = entry.layout == Layout::kQ4_0Bands;
  const uint64_t bandsEnd = (static_cast<uint64_t>(rowEnd) + kBandRows - 1) / kBandRows * kBandRows;
  const uint64_t rowsTouched = q4 ? (bandsEnd < static_cast<uint64_t>(n) ? bandsEnd : n) : rowEnd;
  if (static_cast<uint64_t>(w) + layoutBytes(entry.layout, rowsTouched, nb) > length ||
      static_cast<uint64_t>(x) + static_cast<uint64_t>(m) * nb * kRecordBytes > length ||
      static_cast<uint64_t>(out) + 4 * static_cast<uint64_t>(m) * static_cast<uint64_t>(n) > length)
    return fail(env, entry, "the product does not fit in its memory");
  if (!entry.supported()) return fail(env, entry, "this CPU lacks the instruction set");
  uint8_t* base = static_cast<uint8_t*>(bytes);
  sirocco::blockProduct(entry.isa, entry.layout, base + w, n, cols, m, base + x, reinterpret_cast<float*>(base + out), row, rowEnd);
  return nullptr;
}

/**
 * A shared product's dims: isa (0 AVX-512 VNNI, 1 AVX2), layout (0 Q8_0 rows, 1 Q4_0 bands, 2 Q8_0
 * rows interleaved by four), cols, n, m, threads (1 or 2).
 */
constexpr int kSharedDims = 6;

/**
 * shared_product(memory, dims, w, x, out): the whole [n, cols] product on the bytes of `memory` (as
 * `product` takes them), its output rows shared with the addon's helper thread where dims asks for
 * two threads. The same bits as one `product` call over all rows.
 */
napi_value SharedProduct(napi_env env, napi_callback_info info) {
  size_t argc = 5;
  napi_value argv[5];
  napi_get_cb_info(env, info, &argc, argv, nullptr, nullptr);
  auto failWith = [&](const char* what) { return sirocco::throwKernelError(env, "shared_product", what); };
  if (argc != 5) return failWith("takes (memory, dims, w, x, out)");
  uint8_t* bytes = nullptr;
  const int32_t* dims = nullptr;
  size_t length = 0, dimCount = 0;
  if (!sirocco::typedArray(env, argv[0], napi_uint8_array, &bytes, &length)) return failWith("memory must be a Uint8Array");
  if (!sirocco::typedArray(env, argv[1], napi_int32_array, const_cast<int32_t**>(&dims), &dimCount) || dimCount != kSharedDims)
    return failWith("dims must be an Int32Array of 6");
  uint32_t offsets[3];
  for (int k = 0; k < 3; k++)
    if (napi_get_value_uint32(env, argv[k + 2], &offsets[k]) != napi_ok) return failWith("offsets must be numbers");
  const int32_t isaCode = dims[0], layoutCode = dims[1], cols = dims[2], n = dims[3], m = dims[4], threads = dims[5];
  if ((isaCode != 0 && isaCode != 1) || layoutCode < 0 || layoutCode > 2 || cols <= 0 || cols % kBlock != 0 || n <= 0 || n % kGroupRows != 0 ||
      m < 0 || (threads != 1 && threads != 2) || offsets[2] % 4 != 0)
    return failWith("shape or offsets out of range");
  const sirocco::Isa isa = isaCode == 0 ? sirocco::Isa::kAvx512Vnni : sirocco::Isa::kAvx2;
  const uint64_t nb = static_cast<uint64_t>(cols) / kBlock;
  const Layout layout = layoutCode == 0 ? Layout::kQ8_0Rows : layoutCode == 1 ? Layout::kQ4_0Bands : Layout::kQ8_0Groups;
  if (offsets[0] + layoutBytes(layout, n, nb) > length || offsets[1] + static_cast<uint64_t>(m) * nb * kRecordBytes > length ||
      offsets[2] + 4 * static_cast<uint64_t>(m) * static_cast<uint64_t>(n) > length)
    return failWith("the product does not fit in its memory");
  if (!sirocco::isaSupported(isa)) return failWith("this CPU lacks the instruction set");
  sirocco::sharedBlockProduct(isa, layout, bytes + offsets[0], n, cols, m, bytes + offsets[1], reinterpret_cast<float*>(bytes + offsets[2]),
                              threads == 2);
  return nullptr;
}

/** helper_chunks(): chunks of jobs the addon's helper thread has run in this process. */
napi_value HelperChunks(napi_env env, napi_callback_info) {
  napi_value count;
  napi_create_double(env, static_cast<double>(sirocco::helperChunksRun()), &count);
  return count;
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

namespace sirocco {

bool isaSupported(Isa isa) { return isa == Isa::kAvx512Vnni ? hasAvx512Vnni() : hasAvx2(); }

// Eight lanes of quantize_row_q8_0 as the scalar reference writes it: fmaxf ignores a NaN (vmaxps
// returns its second operand when the first is NaN, and the running maximum is never NaN), roundf
// rounds half away from zero (truncate; the dropped fraction, exact in fp32, steps away from zero
// from one half), and a NaN stores 0.
AVX2 void quantizeRecords(const float* x, int rows, int cols, uint8_t* records) {
  const __m256 signBit = _mm256_set1_ps(-0.0f), half = _mm256_set1_ps(0.5f), one = _mm256_set1_ps(1.0f);
  const __m256i packOrder = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
  const int blocks = rows * (cols / kBlock);
  for (int block = 0; block < blocks; block++, x += kBlock, records += kRecordBytes) {
    __m256 values[4];
    __m256 amax = _mm256_setzero_ps();
    for (int k = 0; k < 4; k++) {
      values[k] = _mm256_loadu_ps(x + 8 * k);
      amax = _mm256_max_ps(_mm256_andnot_ps(signBit, values[k]), amax);
    }
    __m128 four = _mm_max_ps(_mm256_extractf128_ps(amax, 1), _mm256_castps256_ps128(amax));
    four = _mm_max_ps(_mm_movehl_ps(four, four), four);
    four = _mm_max_ss(_mm_movehdup_ps(four), four);
    const float scale = _mm_cvtss_f32(four) / 127;
    const __m256 inverse = _mm256_set1_ps(scale != 0 ? 1 / scale : 0);
    __m256i q[4];
    for (int k = 0; k < 4; k++) {
      const __m256 scaled = _mm256_mul_ps(values[k], inverse);
      const __m256 truncated = _mm256_round_ps(scaled, _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC);
      const __m256 away = _mm256_and_ps(_mm256_cmp_ps(_mm256_andnot_ps(signBit, _mm256_sub_ps(scaled, truncated)), half, _CMP_GE_OQ),
                                        _mm256_or_ps(_mm256_and_ps(scaled, signBit), one));
      const __m256i rounded = _mm256_cvttps_epi32(_mm256_add_ps(truncated, away));
      q[k] = _mm256_and_si256(rounded, _mm256_castps_si256(_mm256_cmp_ps(scaled, scaled, _CMP_ORD_Q)));
    }
    const __m256i words = _mm256_packs_epi16(_mm256_packs_epi32(q[0], q[1]), _mm256_packs_epi32(q[2], q[3]));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(records), _mm256_permutevar8x32_epi32(words, packOrder));
    const __m256i sum8 = _mm256_add_epi32(_mm256_add_epi32(q[0], q[1]), _mm256_add_epi32(q[2], q[3]));
    __m128i sum = _mm_add_epi32(_mm256_castsi256_si128(sum8), _mm256_extracti128_si256(sum8, 1));
    sum = _mm_add_epi32(sum, _mm_shuffle_epi32(sum, _MM_SHUFFLE(1, 0, 3, 2)));
    sum = _mm_add_epi32(sum, _mm_shuffle_epi32(sum, _MM_SHUFFLE(2, 3, 0, 1)));
    const int32_t offset = 8 * _mm_cvtsi128_si32(sum);
    memcpy(records + kBlock, &scale, 4);
    memcpy(records + kBlock + 4, &offset, 4);
  }
}

void blockProduct(Isa isa, Layout layout, const uint8_t* w, int n, int cols, int m, const uint8_t* records, float* out, int rowBegin,
                  int rowEnd) {
  const Product job{w, rowBegin, rowEnd, m, records, out, n, cols / kBlock};
  const bool vnni = isa == Isa::kAvx512Vnni;
  if (layout != Layout::kQ4_0Bands && !vnni && m >= kQ8PairMinRows) return runQ8Pairs(job, layout);
  if (layout == Layout::kQ8_0Groups) return runProduct(job, layout, vnni ? kQ8GroupsAvx512 : kQ8GroupsAvx2, nullptr);
  const Entry& entry = kEntries[(layout == Layout::kQ4_0Bands ? 0 : 2) + (vnni ? 0 : 1)];
  runProduct(job, layout, *entry.kernels, entry.bands);
}

void sharedBlockProduct(Isa isa, Layout layout, const uint8_t* w, int n, int cols, int m, const uint8_t* records, float* out,
                        bool mayShare) {
  // Output rows per claimed chunk: far more work than a claim; below kShareMinBytes of weights, a
  // hand-off would cost about what it saves.
  constexpr int kChunkRows = 16 * kSplitRows;
  constexpr uint64_t kShareMinBytes = 512 * 1024;
  runChunks(mayShare && layoutBytes(layout, n, cols / kBlock) >= kShareMinBytes, (n + kChunkRows - 1) / kChunkRows, [&](int chunk) {
    const int end = (chunk + 1) * kChunkRows;
    blockProduct(isa, layout, w, n, cols, m, records, out, chunk * kChunkRows, end < n ? end : n);
  });
}

}  // namespace sirocco

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
  const struct {
    const char* name;
    napi_callback call;
  } more[] = {{"shared_product", SharedProduct},
              {"helper_chunks", HelperChunks},
              {"attention_layer", sirocco::AttentionLayer},
              {"expert_ffn", sirocco::ExpertFfn},
              {"softmax_weights", sirocco::SoftmaxWeights}};
  for (const auto& entry : more) {
    napi_value fn;
    napi_create_function(env, entry.name, NAPI_AUTO_LENGTH, entry.call, nullptr, &fn);
    napi_set_named_property(env, exports, entry.name, fn);
  }
  return exports;
}
