/**
 * The graphs a store holds. Dense Mistral: one decoder graph (embedding → layers → norm → lm_head).
 * Mixtral: one attention graph per layer (also emitting the FFN-normed hidden state and fp32 router
 * logits), one graph per expert — its own .onnx/.bin so it can be loaded alone — and a head graph.
 * Each graph writes `<base>.onnx` plus its weights in `<base>.bin`.
 */
import { join } from 'node:path';
import type { ModelConfig } from '../formats/model-config.ts';
import type { Precision, QuantizationPlan } from '../formats/quantize.ts';
import { ExternalDataWriter, GraphBuilder } from './onnx-graph.ts';
import { type AttentionInputs, TransformerGraph, type WeightSource } from './transformer.ts';

/** Input/output names shared by the graphs and the runtime. */
export const IO = {
  inputIds: 'input_ids',
  hidden: 'hidden',
  cos: 'rope_cos',
  sin: 'rope_sin',
  positions: 'positions',
  mask: 'attention_mask',
  logitRows: 'logit_rows',
  logits: 'logits',
  hiddenOut: 'hidden_out',
  ffnIn: 'ffn_in',
  routerLogits: 'router_logits',
  expertIn: 'x',
  expertOut: 'y',
  pastKey: (layer: number) => `past_key.${layer}`,
  pastValue: (layer: number) => `past_value.${layer}`,
  /** This step's keys/values only [batch, kv_heads, seq, head_dim]; the runtime appends them. */
  newKey: (layer: number) => `new_key.${layer}`,
  newValue: (layer: number) => `new_value.${layer}`,
} as const;

export interface GraphFiles {
  graph: string;
  data: string;
}

export interface BuildContext {
  dir: string;
  config: ModelConfig;
  precision: Precision;
  weights: WeightSource;
  /** Quantization plan for int8/int4; default: the precision's own (quantize.ts). */
  quantization?: QuantizationPlan;
}

async function buildGraph(ctx: BuildContext, base: string, body: (t: TransformerGraph) => Promise<void>): Promise<GraphFiles> {
  const files = { graph: `${base}.onnx`, data: `${base}.bin` };
  const external = new ExternalDataWriter(join(ctx.dir, files.data));
  try {
    const builder = new GraphBuilder(base, external);
    await body(new TransformerGraph(builder, ctx.config, ctx.precision, ctx.weights, ctx.quantization));
    builder.save(join(ctx.dir, files.graph));
  } finally {
    external.close();
  }
  return files;
}

function attentionInputs(t: TransformerGraph): AttentionInputs {
  const half = t.config.headDim / 2;
  return {
    cos: t.g.input(IO.cos, 'float32', ['rope_rows', half]),
    sin: t.g.input(IO.sin, 'float32', ['rope_rows', half]),
    positions: t.g.input(IO.positions, 'int64', ['batch', 'seq']),
    mask: t.g.input(IO.mask, 'float32', ['batch', 1, 'seq', 'total']),
  };
}

function kvInputs(t: TransformerGraph, layer: number) {
  const { nKvHeads, headDim } = t.config;
  return {
    key: t.g.input(IO.pastKey(layer), 'float32', ['batch', nKvHeads, 'past', headDim]),
    value: t.g.input(IO.pastValue(layer), 'float32', ['batch', nKvHeads, 'past', headDim]),
  };
}

function kvOutputs(t: TransformerGraph, layer: number, key: string, value: string): void {
  const { nKvHeads, headDim } = t.config;
  t.g.output(key, IO.newKey(layer), 'float32', ['batch', nKvHeads, 'seq', headDim]);
  t.g.output(value, IO.newValue(layer), 'float32', ['batch', nKvHeads, 'seq', headDim]);
}

/** Dense Mistral in one graph. */
export function buildDecoderGraph(ctx: BuildContext): Promise<GraphFiles> {
  return buildGraph(ctx, 'decoder', async (t) => {
    const ids = t.g.input(IO.inputIds, 'int64', ['batch', 'seq']);
    const attention = attentionInputs(t);
    const rows = t.g.input(IO.logitRows, 'int64', ['rows']);
    let x = await t.embed(ids);
    for (let layer = 0; layer < t.config.nLayers; layer++) {
      const past = kvInputs(t, layer);
      const { out, newKey, newValue } = await t.attention(x, layer, attention, past.key, past.value);
      x = t.g.op('Add', [
        out,
        await t.feedForward(await t.rmsNorm(out, `layers.${layer}.ffn_norm.weight`), `layers.${layer}.feed_forward`),
      ]);
      kvOutputs(t, layer, newKey, newValue);
    }
    t.g.output(await t.head(x, rows), IO.logits, 'float32', ['rows', t.config.vocabSize]);
  });
}

/** Mixtral layer: attention sublayer, then the FFN norm and router logits for the JS expert step. */
export function buildMoeLayerGraph(ctx: BuildContext, layer: number): Promise<GraphFiles> {
  return buildGraph(ctx, `layer.${layer}`, async (t) => {
    const { dim, numExperts } = t.config;
    // Layer 0 starts from token ids; later layers from the previous layer's output.
    const x =
      layer === 0
        ? await t.embed(t.g.input(IO.inputIds, 'int64', ['batch', 'seq']))
        : t.g.input(IO.hidden, 'float32', ['batch', 'seq', dim]);
    const attention = attentionInputs(t);
    const past = kvInputs(t, layer);
    const { out, newKey, newValue } = await t.attention(x, layer, attention, past.key, past.value);
    const ffnIn = await t.rmsNorm(out, `layers.${layer}.ffn_norm.weight`);
    // The router stays fp32 whatever the precision: expert choices must match the reference.
    const router = await t.linear(ffnIn, `layers.${layer}.feed_forward.gate.weight`, numExperts, dim, true);
    t.g.output(out, IO.hiddenOut, 'float32', ['batch', 'seq', dim]);
    t.g.output(ffnIn, IO.ffnIn, 'float32', ['batch', 'seq', dim]);
    t.g.output(router, IO.routerLogits, 'float32', ['batch', 'seq', numExperts]);
    kvOutputs(t, layer, newKey, newValue);
  });
}

/** One expert's SwiGLU FFN on a batch of rows [rows, dim]. */
export function buildExpertGraph(ctx: BuildContext, layer: number, expert: number): Promise<GraphFiles> {
  return buildGraph(ctx, `expert.${layer}.${expert}`, async (t) => {
    const x = t.g.input(IO.expertIn, 'float32', ['rows', t.config.dim]);
    t.g.output(await t.feedForward(x, `layers.${layer}.feed_forward.experts.${expert}`), IO.expertOut, 'float32', ['rows', t.config.dim]);
  });
}

/** Final norm + lm_head for Mixtral. */
export function buildHeadGraph(ctx: BuildContext): Promise<GraphFiles> {
  return buildGraph(ctx, 'head', async (t) => {
    const hidden = t.g.input(IO.hidden, 'float32', ['batch', 'seq', t.config.dim]);
    const rows = t.g.input(IO.logitRows, 'int64', ['rows']);
    t.g.output(await t.head(hidden, rows), IO.logits, 'float32', ['rows', t.config.vocabSize]);
  });
}
