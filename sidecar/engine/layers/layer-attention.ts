/**
 * A Mixtral layer up to its experts, as the runtime's MoE step sees it: onnxruntime's layer graph
 * (model-runtime.ts) or the native attention layer (native-attention.ts), whichever the store and
 * this host allow. Both store the step's new keys and values in the step.
 */
import type { BatchStep } from '../kv-cache.ts';

/**
 * One layer's outputs, the caller's to change until the step's next layer runs (`residual` until the
 * one after, which reads it): a layer may reuse its arrays there. The runtime adds the experts' sums
 * into `residual` in place.
 */
export interface LayerOutputs {
  /** The residual stream after attention [batch·seq, dim]. */
  residual: Float32Array;
  /** The FFN's normed input [batch·seq, dim]. */
  ffnIn: Float32Array;
  /** fp32 router logits [batch·seq, experts]. */
  router: Float32Array;
}

export interface LayerAttention {
  /** Which path runs, for the load log. */
  readonly name: string;
  /**
   * A step's rows (batch × seq) must be a multiple of this: MIN_MATMUL_ROWS for onnxruntime's
   * graphs (a lone row rounds differently, see kv-cache.ts), 1 where each row's arithmetic is its own.
   */
  readonly rowMultiple: number;
  /** What every layer of `step` shares (RoPE rows, positions, mask), prepared once; steps may overlap. */
  forStep(step: BatchStep): StepAttention;
  dispose(): Promise<void>;
}

export interface StepAttention {
  /** One layer of the step; `hidden` is null at layer 0, whose input is the step's token ids. */
  run(layer: number, hidden: Float32Array | null): Promise<LayerOutputs>;
}
