/** Seeded test data: the engine's own generator (sampling/sampler.ts), shaped as the tests need it. */
import { createRandom } from '../../sidecar/sampling/sampler.ts';

/** `length` Gaussian values (Box–Muller) of standard deviation `scale`, the same for the same seed. */
export function gaussianValues(seed: number, length: number, scale = 1): Float32Array {
  const random = createRandom(seed);
  return Float32Array.from({ length }, () => scale * Math.sqrt(-2 * Math.log(1 - random())) * Math.cos(2 * Math.PI * random()));
}
