/**
 * A dense model's source seen as a one-expert Mixtral's (model-config.ts `asOneExpert`): its FFN
 * under the expert's names and a zero router, so the same writers build the native layer, expert
 * and head files for dense models.
 */
import { asOneExpert } from './model-config.ts';
import type { ModelSource } from './model-source.ts';

const EXPERT_TENSOR = /^layers\.(\d+)\.feed_forward\.experts\.0\.(w[123])\.weight$/;
const ROUTER_TENSOR = /^layers\.\d+\.feed_forward\.gate\.weight$/;

/** The dense tensor a one-expert name stands for (the name itself when it is not an expert's). */
function denseName(name: string): string {
  const expert = EXPERT_TENSOR.exec(name);
  return expert ? `layers.${expert[1]}.feed_forward.${expert[2]}.weight` : name;
}

export function oneExpertSource(source: ModelSource): ModelSource {
  const config = asOneExpert(source.config);
  return {
    config,
    path: source.path,
    defaultName: source.defaultName,
    read: (name) => (ROUTER_TENSOR.test(name) ? Promise.resolve(new Float32Array(config.dim)) : source.read(denseName(name))),
    ...(source.blockFormatOf && { blockFormatOf: (name: string) => source.blockFormatOf?.(denseName(name)) }),
    sourceHash: () => source.sourceHash(),
    tokenizerFiles: () => source.tokenizerFiles(),
    close: () => source.close(),
  };
}
