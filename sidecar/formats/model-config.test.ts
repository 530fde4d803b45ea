/**
 * Both config layouts normalise to the same ModelConfig, with Mistral's documented pitfalls:
 * rope_theta missing from v0.1 params.json means 1e4 for dense Mistral (not mistral-inference's
 * 1e6 fallback), sliding_window null means full attention, head_dim defaults to dim / n_heads.
 */

import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { SidecarError } from '../errors.ts';
import { parseHfConfig, parseNativeParams, readModelConfig } from './model-config.ts';

const GOLDEN = new URL('../../test/fixtures/golden/', import.meta.url).pathname;

const mistral7bParams = {
  dim: 4096,
  n_layers: 32,
  head_dim: 128,
  hidden_dim: 14336,
  n_heads: 32,
  n_kv_heads: 8,
  norm_eps: 1e-5,
  sliding_window: 4096,
  vocab_size: 32000,
};
const mixtralHf = {
  architectures: ['MixtralForCausalLM'],
  model_type: 'mixtral',
  hidden_size: 4096,
  intermediate_size: 14336,
  num_attention_heads: 32,
  num_hidden_layers: 32,
  num_key_value_heads: 8,
  rms_norm_eps: 1e-5,
  rope_theta: 1e6,
  sliding_window: null,
  vocab_size: 32000,
  max_position_embeddings: 32768,
  num_local_experts: 8,
  num_experts_per_tok: 2,
};

function expectModelError(fn: () => unknown, ...fragments: string[]) {
  try {
    fn();
  } catch (error) {
    expect(error).toBeInstanceOf(SidecarError);
    expect((error as SidecarError).type).toBe('model_error');
    for (const f of fragments) expect((error as Error).message).toContain(f);
    return;
  }
  throw new Error('expected a model_error');
}

describe('Mistral native params.json', () => {
  it('reads Mistral 7B v0.1 (no rope_theta → 1e4, window 4096)', () => {
    expect(parseNativeParams(mistral7bParams, 'params.json')).toEqual({
      architecture: 'mistral',
      dim: 4096,
      nLayers: 32,
      nHeads: 32,
      nKvHeads: 8,
      headDim: 128,
      hiddenDim: 14336,
      vocabSize: 32000,
      normEps: 1e-5,
      ropeTheta: 10000,
      slidingWindow: 4096,
      contextLength: 32768,
      bosId: 1,
      eosId: 2,
      numExperts: 0,
      expertsPerToken: 0,
      tieEmbeddings: false,
    });
  });

  it('reads Mixtral (moe block → mixtral, rope_theta default 1e6, no window)', () => {
    const { sliding_window: _, ...rest } = mistral7bParams;
    const config = parseNativeParams({ ...rest, moe: { num_experts: 8, num_experts_per_tok: 2 } }, 'params.json');
    expect(config).toMatchObject({ architecture: 'mixtral', ropeTheta: 1e6, slidingWindow: null, numExperts: 8, expertsPerToken: 2 });
  });

  it('derives head_dim from dim / n_heads when absent', () => {
    const { head_dim: _, ...rest } = mistral7bParams;
    expect(parseNativeParams(rest, 'params.json').headDim).toBe(128);
  });

  it('names the file and field at fault', () => {
    expectModelError(
      () => parseNativeParams({ ...mistral7bParams, n_layers: undefined }, '/x/params.json'),
      '/x/params.json',
      '"n_layers"',
      'missing',
    );
    expectModelError(() => parseNativeParams({ ...mistral7bParams, dim: 'big' }, 'params.json'), '"dim"', 'integer');
    expectModelError(() => parseNativeParams({ ...mistral7bParams, n_kv_heads: 5 }, 'params.json'), 'multiple of n_kv_heads');
    expectModelError(
      () => parseNativeParams({ ...mistral7bParams, vision_encoder: {} }, 'params.json'),
      'unsupported architecture',
      'vision_encoder',
    );
  });
});

describe('Hugging Face config.json', () => {
  it('reads Mixtral', () => {
    expect(parseHfConfig(mixtralHf, 'config.json')).toMatchObject({
      architecture: 'mixtral',
      headDim: 128,
      ropeTheta: 1e6,
      slidingWindow: null,
      contextLength: 32768,
      numExperts: 8,
      expertsPerToken: 2,
    });
  });

  it('reads Mistral with a missing rope_theta as 1e4 and head_dim null as dim / heads', () => {
    const config = parseHfConfig(
      {
        ...mixtralHf,
        architectures: ['MistralForCausalLM'],
        model_type: 'mistral',
        rope_theta: undefined,
        head_dim: null,
        sliding_window: 4096,
      },
      'config.json',
    );
    expect(config).toMatchObject({ architecture: 'mistral', ropeTheta: 1e4, headDim: 128, slidingWindow: 4096, numExperts: 0 });
  });

  it('rejects unknown architectures and activations by name', () => {
    expectModelError(
      () => parseHfConfig({ ...mixtralHf, model_type: 'llama', architectures: ['LlamaForCausalLM'] }, '/m/config.json'),
      '/m/config.json',
      'unknown architecture',
      'llama',
    );
    expectModelError(() => parseHfConfig({ ...mixtralHf, hidden_act: 'gelu' }, 'config.json'), 'hidden_act', 'gelu');
  });
});

describe('readModelConfig', () => {
  it('gives the same config for both layouts of the golden checkpoints (context length aside)', async () => {
    for (const model of ['tiny-mistral', 'tiny-mixtral']) {
      const native = await readModelConfig(join(GOLDEN, model, 'native'));
      const hf = await readModelConfig(join(GOLDEN, model, 'hf'));
      expect(native.layout).toBe('native');
      expect(hf.layout).toBe('hf');
      expect({ ...native.config, contextLength: 0 }).toEqual({ ...hf.config, contextLength: 0 });
    }
  });

  it('explains a folder that is not a model', async () => {
    await expect(readModelConfig(GOLDEN)).rejects.toThrow(/no manifest.json .*params.json .*config.json/);
    await expect(readModelConfig(join(GOLDEN, 'nope'))).rejects.toThrow(/does not exist/);
  });
});
