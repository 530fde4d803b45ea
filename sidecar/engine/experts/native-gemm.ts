/**
 * The native expert products (engine/native/block-gemm.cc, built by `npm ci` through node-gyp): the
 * WebAssembly kernel's products with x86's integer dot products, which WebAssembly cannot reach
 * (AVX-512 VNNI's vpdpbusd, or AVX2's pmaddubsw on 256-bit registers). Same arithmetic, same bits;
 * block-kernel.ts checks them against its plain module before it uses them.
 *
 * Absent where the addon was not built (no C++ toolchain at install) or the CPU has neither
 * instruction set; the WebAssembly kernel then runs everything. SIROCCO_NATIVE_KERNEL=off turns it
 * off, for comparing the two.
 */

import { existsSync } from 'node:fs';
import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';
import type { BlockFormat } from '../../formats/blocks.ts';

export type NativeIsa = 'avx512vnni' | 'avx2';

/**
 * One product on the bytes of a whole wasm memory: out[i·n + r] for output rows [row, rowEnd)
 * and activation rows i < m, the WebAssembly export `<format>_<cols>`'s arguments after `cols`.
 */
export type NativeProduct = (
  memory: Uint8Array,
  cols: number,
  w: number,
  row: number,
  rowEnd: number,
  m: number,
  x: number,
  out: number,
  n: number,
) => void;

/**
 * A Mixtral layer up to its experts (engine/native/attention-layer.cc): dims are [isa (0 AVX-512 VNNI,
 * 1 AVX2), q4 (1 Q4_0 bands, 0 Q8_0 rows interleaved by four), dim, heads, kvHeads, headDim, experts, batch, seq, past, ropeRows,
 * threads (2: large products and long attention shared with the addon's helper thread, the same bits; 1: this thread alone)].
 */
export type NativeAttentionLayer = (
  weights: Uint8Array,
  dims: Int32Array,
  eps: number,
  hidden: Float32Array,
  cos: Float32Array,
  sin: Float32Array,
  positions: Int32Array,
  mask: Float32Array,
  pastKeys: Float32Array,
  pastValues: Float32Array,
  hiddenOut: Float32Array,
  ffnIn: Float32Array,
  router: Float32Array,
  newKeys: Float32Array,
  newValues: Float32Array,
) => void;

/**
 * Whole experts (engine/native/expert-ffn.cc): y = w2(silu(w1·x) ⊙ w3·x) per expert, the
 * WebAssembly kernel's steps and bits. dims: [isa (0 AVX-512 VNNI, 1 AVX2), dim, ffn, threads (2:
 * experts, or their products' rows, shared with the addon's helper thread; 1: this thread alone)].
 * experts: [q4 (1 Q4_0, 0 Q8_0, as the expert files lay them out), w13 offset, w2 offset, rows] per expert, offsets into `memory`;
 * x and y hold each expert's rows after the previous one's.
 */
export type NativeExpertFfn = (memory: Uint8Array, dims: Int32Array, experts: Uint32Array, x: Float32Array, y: Float32Array) => void;

/**
 * One whole product on `memory` as `NativeProduct` takes it, its output rows shared with the addon's
 * helper thread: dims [isa, layout (0 Q8_0 rows, 1 Q4_0 bands, 2 Q8_0 rows interleaved by four: the
 * layer and head files'), cols, n, m, threads (1 or 2)]; the same bits as one call over all rows.
 */
export type NativeSharedProduct = (memory: Uint8Array, dims: Int32Array, w: number, x: number, out: number) => void;

/**
 * A sampled row's softmax weights (engine/native/softmax-weights.cc): weights[i] =
 * e^−((max − logits[i]) / temperature), 0 for NaN, returning their sum in order; with `buckets`,
 * each token's nucleus bucket and each bucket's mass too. The bits of sampling/sampler.ts's
 * JavaScript `softmaxWeights`.
 */
export type NativeSoftmaxWeights = (
  logits: Float32Array,
  max: number,
  temperature: number,
  weights: Float64Array,
  buckets?: { perNat: number; ids: Uint16Array; mass: Float64Array },
) => number;

type AddonSoftmaxWeights = (
  logits: Float32Array,
  max: number,
  temperature: number,
  weights: Float64Array,
  ...buckets: [perNat: number, ids: Uint16Array, mass: Float64Array] | []
) => number;

type Addon = Record<`${BlockFormat}_${NativeIsa}`, NativeProduct> & {
  supported(): NativeIsa[];
  attention_layer: NativeAttentionLayer;
  expert_ffn: NativeExpertFfn;
  shared_product: NativeSharedProduct;
  helper_chunks(): number;
  softmax_weights: AddonSoftmaxWeights;
};

export interface NativeGemm {
  /** The instruction set the products use. */
  isa: NativeIsa;
  /** The addon's file, for a worker thread to load it too. */
  path: string;
  product(format: BlockFormat): NativeProduct;
  /** The attention layer on this instruction set (its `isa` dim must name it). */
  attentionLayer: NativeAttentionLayer;
  /** Whole experts on this instruction set (its `isa` dim must name it). */
  expertFfn: NativeExpertFfn;
  sharedProduct: NativeSharedProduct;
  /** The `isa` dim that names this instruction set in the calls above. */
  isaCode: number;
  /** Chunks of jobs (products, attention, experts) the addon's one helper thread has run in this process. */
  helperChunks(): number;
  softmaxWeights: NativeSoftmaxWeights;
}

/** Where node-gyp puts the addon: build/Release under the package root. */
export const NATIVE_ADDON_PATH = fileURLToPath(new URL('../../../build/Release/block_gemm.node', import.meta.url));

/**
 * The native products on the best instruction set this CPU runs (or on `isa`), or why there are
 * none here.
 */
export function loadNativeGemm(isa?: NativeIsa): { gemm: NativeGemm | null; note: string | null } {
  if (process.env.SIROCCO_NATIVE_KERNEL === 'off') return { gemm: null, note: 'turned off by SIROCCO_NATIVE_KERNEL=off' };
  if (!existsSync(NATIVE_ADDON_PATH)) return { gemm: null, note: 'the native kernel was not built (npm run build:native)' };
  let addon: Addon;
  try {
    addon = createRequire(import.meta.url)(NATIVE_ADDON_PATH) as Addon;
  } catch (error) {
    return { gemm: null, note: `the native kernel did not load: ${(error as Error).message}` };
  }
  const supported = addon.supported();
  const chosen = isa ?? supported[0];
  if (chosen === undefined || !supported.includes(chosen))
    return { gemm: null, note: `this CPU has ${isa ? `no ${isa}` : 'neither AVX-512 VNNI nor AVX2'} for the native kernel` };
  return {
    gemm: {
      isa: chosen,
      path: NATIVE_ADDON_PATH,
      product: (format) => addon[`${format}_${chosen}`],
      attentionLayer: addon.attention_layer,
      expertFfn: addon.expert_ffn,
      sharedProduct: addon.shared_product,
      isaCode: chosen === 'avx512vnni' ? 0 : 1,
      helperChunks: addon.helper_chunks,
      softmaxWeights: (logits, max, temperature, weights, buckets) =>
        buckets
          ? addon.softmax_weights(logits, max, temperature, weights, buckets.perNat, buckets.ids, buckets.mass)
          : addon.softmax_weights(logits, max, temperature, weights),
    },
    note: null,
  };
}

let softmaxWeightsHere: NativeSoftmaxWeights | null | undefined;

/**
 * The addon's softmax weights where it loads on this CPU (the sampler's own steps and bits, ~4×
 * faster), else undefined: the sampler then keeps its JavaScript loop.
 */
export function nativeSoftmaxWeights(): NativeSoftmaxWeights | undefined {
  softmaxWeightsHere ??= loadNativeGemm().gemm?.softmaxWeights ?? null;
  return softmaxWeightsHere ?? undefined;
}
