/**
 * A request's own sampler: plain sampling, or — with `response_format` JSON — the same sampler
 * constrained to a JSON object (or the schema's shape). One constructor for the scheduler and for
 * the single-sequence generate(), so both decode a request identically.
 */

import type { Tokenizer } from '../text/tokenizer.ts';
import { createJsonModeSampler } from './json-mode.ts';
import { responseConstraint } from './json-schema-constraint.ts';
import { createSampler, type SamplingOptions, type SoftmaxWeights, softmaxWeights } from './sampler.ts';

export interface ResponseFormatOptions {
  /** Constrain the answer to one JSON object; it ends when the object closes. */
  jsonMode?: boolean;
  /** With jsonMode: the answer takes this object schema's shape; unsupported schemas give any object. */
  jsonSchema?: Record<string, unknown>;
}

export interface RequestSampler {
  /** The next token; `remaining` is the token budget left, this one included (JSON mode closes within it). */
  sample(logits: Float32Array, remaining: number): number;
  /** True once a JSON-mode answer is complete: generation must stop here. */
  readonly complete: boolean;
}

/** `weightsOf`: the softmax weights' implementation (createSampler's). */
export function createRequestSampler(
  tokenizer: Tokenizer,
  options: SamplingOptions & ResponseFormatOptions,
  weightsOf: SoftmaxWeights = softmaxWeights,
): RequestSampler {
  const sampler = createSampler({ temperature: options.temperature, topP: options.topP, seed: options.seed }, weightsOf);
  if (options.jsonMode) return createJsonModeSampler(tokenizer, sampler, responseConstraint(options.jsonSchema));
  return { sample: (logits) => sampler.sample(logits), complete: false };
}
