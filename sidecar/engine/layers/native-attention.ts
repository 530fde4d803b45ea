/**
 * Mixtral layers up to their experts in the native addon (engine/native/attention-layer.cc), on the
 * store's layer files (layer-store.ts): one call per layer, where an onnxruntime layer graph costs
 * ~0.3 ms of fixed overhead at decode whatever its size. With two threads the addon shares the
 * layer's large products, and its attention at long contexts, with a native helper thread (the same
 * bits). Token embeddings are looked up here (layer 0 takes token ids).
 */
import type { BlockFormat } from '../../formats/blocks.ts';
import type { ModelConfig } from '../../formats/model-config.ts';
import type { NativeGemm } from '../experts/native-gemm.ts';
import type { BatchStep } from '../kv-cache.ts';
import { RopeTable } from '../rope.ts';
import type { LayerAttention, StepAttention } from './layer-attention.ts';
import type { LayerStore } from './layer-store.ts';

export class NativeLayerAttention implements LayerAttention {
  readonly name: string;
  /** Each row's products and attention are its own (the same bits in any batch): no padding rows. */
  readonly rowMultiple = 1;
  private readonly rope: RopeTable;

  constructor(
    private readonly store: Omit<LayerStore, 'head'>,
    private readonly config: ModelConfig,
    private readonly native: NativeGemm,
    /** 2: large products and long attention shared with the addon's helper thread; 1: this thread alone. */
    private readonly threads: number,
  ) {
    this.rope = new RopeTable(config.headDim, config.ropeTheta);
    this.name = `native attention layers (${store.format}, ${native.isa})`;
  }

  forStep(step: BatchStep): StepAttention {
    const ropeRows = Math.max(step.positionCount, 1);
    // Views, not copies: growing the table for a longer step allocates new arrays and leaves these as they are.
    const { cos, sin } = this.rope.upTo(ropeRows);
    const shared = { cos, sin, positions: Int32Array.from(step.positions(), Number), mask: step.mask() };
    const { dim, nHeads, nKvHeads, headDim, numExperts, normEps } = this.config;
    const dims = Int32Array.of(
      this.native.isaCode,
      FORMAT_CODES[this.store.format],
      dim,
      nHeads,
      nKvHeads,
      headDim,
      numExperts,
      step.batch,
      step.seq,
      step.past,
      ropeRows,
      this.threads > 1 ? 2 : 1,
    );
    const rows = step.batch * step.seq;
    // A step's layers run one after the other, each reading the last one's residual stream: two
    // residual arrays taken in turn, and one FFN input, serve all of them.
    const residuals = [new Float32Array(rows * dim), new Float32Array(rows * dim)];
    const ffnIn = new Float32Array(rows * dim);
    return {
      run: async (layer, hidden) => {
        const residual = residuals[layer % 2]!;
        const router = new Float32Array(rows * numExperts);
        const newKeys = new Float32Array(step.batch * nKvHeads * step.seq * headDim);
        const newValues = new Float32Array(newKeys.length);
        this.native.attentionLayer(
          this.store.layers[layer]!,
          dims,
          normEps,
          hidden ?? this.embed(step.inputIds()),
          shared.cos,
          shared.sin,
          shared.positions,
          shared.mask,
          step.pastTensor(layer, 'keys'),
          step.pastTensor(layer, 'values'),
          residual,
          ffnIn,
          router,
          newKeys,
          newValues,
        );
        step.store(layer, 'keys', newKeys);
        step.store(layer, 'values', newValues);
        return { residual, ffnIn, router };
      },
    };
  }

  /** Rows of the embedding table for token ids [batch·seq] (validated by the runtime). */
  private embed(ids: BigInt64Array): Float32Array {
    const { dim } = this.config;
    const out = new Float32Array(ids.length * dim);
    for (let row = 0; row < ids.length; row++) {
      const id = Number(ids[row]!);
      out.set(this.store.embeddings.subarray(id * dim, (id + 1) * dim), row * dim);
    }
    return out;
  }

  async dispose(): Promise<void> {}
}

const FORMAT_CODES: Record<BlockFormat, number> = { q4_0: 1, q8_0: 0 };
