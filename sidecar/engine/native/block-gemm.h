// The block products of block-gemm.cc for the other native code in this addon (attention-layer.cc, expert-ffn.cc).
#pragma once
#include <stdint.h>

namespace sirocco {

constexpr int kBlock = 32;
/** An activation record: 32 int8 values, their fp32 scale, then 8·Σ of the values as an int32. */
constexpr int kRecordBytes = kBlock + 8;

enum class Isa { kAvx512Vnni, kAvx2 };

bool isaSupported(Isa isa);

/** ggml's quantize_row_q8_0 on `rows` rows of `cols` values (a multiple of 32) into activation records. */
void quantizeRecords(const float* x, int rows, int cols, uint8_t* records);

/** How a matrix's blocks are laid out. */
enum class Layout {
  kQ4_0Bands,   // Q4_0, rows interleaved by four in bands of 16 (the expert files')
  kQ8_0Rows,    // Q8_0 in GGUF's row order (the int8 expert files')
  kQ8_0Groups,  // Q8_0, rows interleaved by four: per block column four scales, then four rows' quants (layer and head files)
};

/** Output rows a product can be split at: whole Q4_0 bands (and so whole Q8_0 groups of four). */
constexpr int kSplitRows = 16;

/**
 * out[i·n + r] = row r of the [n, cols] matrix at w (in `layout`) · activation row i, for i < m and
 * rowBegin ≤ r < rowEnd; n a multiple of 4, rowBegin a multiple of kSplitRows, rowEnd one too or n.
 * Each row's arithmetic is the same whatever the range and layout, so split products give the same bits.
 */
void blockProduct(Isa isa, Layout layout, const uint8_t* w, int n, int cols, int m, const uint8_t* records, float* out, int rowBegin,
                  int rowEnd);

/**
 * blockProduct over all n output rows, in chunks shared with the addon's helper thread when
 * `mayShare` and the matrix is large enough to gain from it (the same bits either way).
 */
void sharedBlockProduct(Isa isa, Layout layout, const uint8_t* w, int n, int cols, int m, const uint8_t* records, float* out,
                        bool mayShare);

}  // namespace sirocco
