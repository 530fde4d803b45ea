/**
 * The Mixtral expert store (engine/experts/expert-store.ts) for a conversion: experts the source
 * already holds in the store's block format (a GGUF file's Q4_0 / Q8_0 experts) are copied byte
 * for byte, so they run exactly as llama.cpp runs them and are not quantised a second time; others
 * are quantised from fp32 as `buildExpertStore` does.
 */
import {
  allocateExpert,
  EXPERT_FORMATS,
  type ExpertBits,
  type ExpertStoreIndex,
  quantizeExpert,
  type RouterWeights,
  writeExpertStore,
} from '../engine/experts/expert-store.ts';
import { modelError } from '../errors.ts';
import type { ModelSource } from '../formats/model-source.ts';

export interface ExpertStoreBuild {
  index: ExpertStoreIndex;
  /** Experts whose blocks were copied from the source rather than quantised. */
  copied: number;
}

export async function buildExpertStoreFrom(source: ModelSource, storeDir: string, bits: ExpertBits): Promise<ExpertStoreBuild> {
  const { dim, hiddenDim: ffn, nLayers: layers, numExperts: experts, expertsPerToken: topK, normEps } = source.config;
  if (experts <= 0) throw modelError('cannot build an expert store for a dense model (no experts in its config)');
  const routers: RouterWeights = { norm: [], gate: [] };
  for (let layer = 0; layer < layers; layer++) {
    routers.norm.push(await source.read(`layers.${layer}.ffn_norm.weight`));
    routers.gate.push(await source.read(`layers.${layer}.feed_forward.gate.weight`));
  }
  let copied = 0;
  const index = await writeExpertStore(storeDir, { dim, ffn, layers, experts, topK, normEps }, bits, routers, async (layer, expert) => {
    const blocks = await source.expertBlocks?.(layer, expert, EXPERT_FORMATS[bits]);
    if (blocks) {
      const image = allocateExpert(dim, ffn, bits);
      const { w13, w2 } = image.weights;
      if (blocks.w1.byteLength + blocks.w3.byteLength !== w13.byteLength || blocks.w2.byteLength !== w2.byteLength) {
        throw modelError(`${source.path}: expert ${expert} of layer ${layer} has blocks of the wrong size for [${ffn}, ${dim}]`);
      }
      w13.set(blocks.w1);
      w13.set(blocks.w3, blocks.w1.byteLength);
      w2.set(blocks.w2);
      copied++;
      return image.bytes;
    }
    const prefix = `layers.${layer}.feed_forward.experts.${expert}`;
    const [w1, w3, w2] = await Promise.all(['w1', 'w3', 'w2'].map((w) => source.read(`${prefix}.${w}.weight`)));
    return quantizeExpert({ w1: w1!, w3: w3!, w2: w2! }, dim, ffn, bits).bytes;
  });
  return { index, copied };
}
