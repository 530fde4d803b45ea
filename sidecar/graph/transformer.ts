/**
 * The Mistral/Mixtral building blocks as ONNX subgraphs: RMSNorm, linear layers at each precision,
 * rotate-half RoPE, grouped-query attention over a past KV cache plus the step's new keys, SwiGLU FFN.
 *
 * Shapes: hidden [batch, seq, dim]; rope_cos/rope_sin [rows, head_dim/2], a table by absolute
 * position (engine/rope.ts) that positions [batch, seq] index; attention_mask [batch, 1, seq, total]
 * additive (0 or -inf); past KV [batch, kv_heads, past, head_dim] (unused slots zero and masked) →
 * new KV [batch, kv_heads, seq, head_dim].
 */
import type { ModelConfig } from '../formats/model-config.ts';
import { type Precision, type QuantizationPlan, quantizationPlan, quantizeMatrix, schemeFor } from '../formats/quantize.ts';
import { type GraphBuilder, MS_DOMAIN, type OutputNames } from './onnx-graph.ts';

/** Where weights come from, by canonical name, already in the rotate-half layout. */
export interface WeightSource {
  read(name: string): Promise<Float32Array>;
}

/** MatMulNBits accuracy level 4 quantizes activations to int8 per block: the fast CPU path. */
const ACCURACY_LEVEL = 4;

export interface AttentionInputs {
  cos: string;
  sin: string;
  positions: string;
  mask: string;
}

export class TransformerGraph {
  /** Per-tensor quantization schemes; null at fp32. */
  private readonly quantization: QuantizationPlan | null;

  constructor(
    readonly g: GraphBuilder,
    readonly config: ModelConfig,
    readonly precision: Precision,
    private readonly weights: WeightSource,
    /** The store's plan when it differs from the precision's default one (see convert.ts). */
    plan?: QuantizationPlan,
  ) {
    this.quantization = precision === 'fp32' ? null : (plan ?? quantizationPlan(precision));
  }

  /** y = x · Wᵀ for a PyTorch-layout weight [n, k]; quantized unless `keepFp32`. */
  async linear(x: string, name: string, n: number, k: number, keepFp32 = false): Promise<string> {
    return this.matmul(x, name, await this.weights.read(name), n, k, keepFp32);
  }

  /**
   * Several linears on the same input as ONE matmul over their stacked rows, split afterwards
   * (Q|K|V, w1|w3): fewer, wider kernels keep both threads busy at decode. Quantization blocks run
   * along each row, so stacking changes no value.
   */
  async linears<const Ns extends readonly number[]>(x: string, names: string[], ns: Ns, k: number): Promise<OutputNames<Ns>> {
    return this.g.split(
      await this.stackedLinear(
        x,
        names,
        ns.reduce((a, b) => a + b, 0),
        k,
      ),
      ns,
      -1,
    );
  }

  /** The stacked matmul of `linears`, unsplit: [.., n] for `names` of n rows in all. */
  private async stackedLinear(x: string, names: string[], n: number, k: number): Promise<string> {
    const stacked = new Float32Array(n * k);
    let offset = 0;
    for (const name of names) {
      const weight = await this.weights.read(name);
      stacked.set(weight, offset);
      offset += weight.length;
    }
    return this.matmul(x, names.join('+'), stacked, n, k, false);
  }

  private matmul(x: string, name: string, weight: Float32Array, n: number, k: number, keepFp32: boolean): string {
    if (!this.quantization || keepFp32) {
      const transposed = new Float32Array(k * n);
      for (let row = 0; row < n; row++) for (let col = 0; col < k; col++) transposed[col * n + row] = weight[row * k + col]!;
      return this.g.op('MatMul', [x, this.g.initializer(name, 'float32', [k, n], transposed)]);
    }
    const scheme = schemeFor(this.quantization, name);
    const q = quantizeMatrix(weight, n, k, scheme);
    const blocks = q.scales.length / n;
    const packed = this.g.initializer(`${name}.q${q.bits}`, 'uint8', [n, blocks, q.packed.length / n / blocks], q.packed);
    const scales = this.g.initializer(`${name}.scales`, 'float32', [n * blocks], q.scales);
    return this.g.op(
      'MatMulNBits',
      [x, packed, scales],
      { K: k, N: n, bits: q.bits, block_size: q.blockSize, accuracy_level: ACCURACY_LEVEL },
      MS_DOMAIN,
    );
  }

  async rmsNorm(x: string, name: string): Promise<string> {
    const weight = this.g.initializer(name, 'float32', [this.config.dim], await this.weights.read(name));
    return this.g.op('SimplifiedLayerNormalization', [x, weight], { axis: -1, epsilon: { float: this.config.normEps } });
  }

  async embed(inputIds: string): Promise<string> {
    const { vocabSize, dim } = this.config;
    const table = this.g.initializer(
      'tok_embeddings.weight',
      'float32',
      [vocabSize, dim],
      await this.weights.read('tok_embeddings.weight'),
    );
    return this.g.op('Gather', [table, inputIds], { axis: 0 });
  }

  /**
   * Pre-norm attention sublayer; returns the residual sum and this step's new keys/values
   * [batch, kv_heads, seq, head_dim] (the caller appends them to its cache).
   */
  async attention(x: string, layer: number, inputs: AttentionInputs, pastKey: string, pastValue: string) {
    const { g } = this;
    const { dim, nHeads, nKvHeads, headDim } = this.config;
    const group = nHeads / nKvHeads;
    const p = `layers.${layer}`;
    const h = await this.rmsNorm(x, `${p}.attention_norm.weight`);
    // Q and K side by side as one [batch, seq, (heads + kv_heads)·head_dim] tensor: one fused
    // rotate-half RoPE node for both (onnxruntime's RotaryEmbedding, the table rows picked by position).
    const qkv = await this.stackedLinear(
      h,
      [`${p}.attention.wq.weight`, `${p}.attention.wk.weight`, `${p}.attention.wv.weight`],
      (nHeads + 2 * nKvHeads) * headDim,
      dim,
    );
    const [qk, vFlat] = g.split(qkv, [(nHeads + nKvHeads) * headDim, nKvHeads * headDim], -1);
    const rotated = g.op('RotaryEmbedding', [qk, inputs.positions, inputs.cos, inputs.sin], { interleaved: 0 }, MS_DOMAIN);
    const [qRotated, kRotated] = g.split(rotated, [nHeads * headDim, nKvHeads * headDim], -1);
    const kNew = g.op('Transpose', [g.op('Reshape', [kRotated, g.ints([0, 0, nKvHeads, headDim])])], { perm: [0, 2, 1, 3] });
    const vNew = g.op('Transpose', [g.op('Reshape', [vFlat, g.ints([0, 0, nKvHeads, headDim])])], { perm: [0, 2, 1, 3] });

    // Query heads grouped per KV head and flattened to rows [batch, kv, group×seq, hd]: every score
    // and value product is one matmul per KV head with M = group×seq rows (never M=1, whose kernel
    // rounds differently; see MIN_MATMUL_ROWS), and K/V are used as they are, never repeated.
    // The cache is never concatenated (that copy grows with the context): scores against past and
    // new keys are computed apart and joined (O(rows × total) floats), the softmax is split again
    // for the two value products. q·Kᵀ/√hd by FusedMatMul (transB, alpha): no transposed copy.
    const qRows = g.op('Reshape', [
      g.op('Transpose', [g.op('Reshape', [qRotated, g.ints([0, 0, nKvHeads, group, headDim])])], { perm: [0, 2, 3, 1, 4] }),
      g.ints([0, 0, -1, headDim]),
    ]);
    const scoresAgainst = (keys: string) =>
      g.op('FusedMatMul', [qRows, keys], { transA: 0, transB: 1, alpha: { float: 1 / Math.sqrt(headDim) } }, MS_DOMAIN);
    const raw = g.op('Concat', [scoresAgainst(pastKey), scoresAgainst(kNew)], { axis: -1 });
    const mask =
      group === 1
        ? inputs.mask
        : g.op(
            'Concat',
            Array.from({ length: group }, () => inputs.mask),
            { axis: 2 },
          ); // [batch, 1, group×seq, total]
    const probs = g.op('Softmax', [g.op('Add', [raw, mask])], { axis: -1 });
    const pastLength = g.op('Shape', [pastKey], { start: 2, end: 3 });
    const probsPast = g.op('Slice', [probs, g.ints([0]), pastLength, g.ints([-1])]);
    const probsNew = g.op('Slice', [probs, pastLength, g.ints([2 ** 53]), g.ints([-1])]);
    const context = g.op('Add', [g.op('MatMul', [probsPast, pastValue]), g.op('MatMul', [probsNew, vNew])]);
    const grouped = g.op('Reshape', [context, g.ints([0, 0, group, -1, headDim])]); // [batch, kv, group, seq, hd]
    const merged = g.op('Reshape', [g.op('Transpose', [grouped], { perm: [0, 3, 1, 2, 4] }), g.ints([0, 0, nHeads * headDim])]);
    const out = g.op('Add', [x, await this.linear(merged, `${p}.attention.wo.weight`, dim, nHeads * headDim)]);
    return { out, newKey: kNew, newValue: vNew };
  }

  /** SwiGLU: w2(silu(w1·x) * w3·x), with weights under `prefix` (dense FFN or one expert). */
  async feedForward(x: string, prefix: string): Promise<string> {
    const { dim, hiddenDim } = this.config;
    const [gate, up] = await this.linears(x, [`${prefix}.w1.weight`, `${prefix}.w3.weight`], [hiddenDim, hiddenDim], dim);
    const activated = this.g.op('Mul', [this.g.op('Mul', [gate, this.g.op('Sigmoid', [gate])]), up]);
    return this.linear(activated, `${prefix}.w2.weight`, dim, hiddenDim);
  }

  /** Final norm and lm_head on the rows named by `logit_rows` (flat indices into batch×seq). */
  async head(hidden: string, rows: string): Promise<string> {
    const { dim, vocabSize } = this.config;
    const normed = await this.rmsNorm(hidden, 'norm.weight');
    const picked = this.g.op('Gather', [this.g.op('Reshape', [normed, this.g.ints([-1, dim])]), rows], { axis: 0 });
    return this.linear(picked, 'output.weight', vocabSize, dim);
  }
}
