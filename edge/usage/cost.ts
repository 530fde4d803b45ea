/**
 * What a request costs, in integer micro-units of the price table's currency.
 *
 * Rounding: a request's cost is (prompt × input + completion × output micro-units per million) / 1,000,000,
 * computed exactly in BigInt and rounded up to a whole micro-unit, once per request. So a request is never
 * billed below the table, by less than one micro-unit, and a rollup is exactly the sum of its events.
 */
import { resolveModelId } from '../../shared/api.ts';
import type { ModelPrice, PriceTable } from '../config/index.ts';

const TOKENS_PER_PRICE_UNIT = 1_000_000n;

/** Exact cost of a request's tokens at `price`, rounded up to a whole micro-unit (see the module comment). */
export function costMicros(price: ModelPrice, promptTokens: number, completionTokens: number): number {
  const numerator =
    BigInt(promptTokens) * BigInt(price.inputMicrosPerMillion) + BigInt(completionTokens) * BigInt(price.outputMicrosPerMillion);
  return Number((numerator + TOKENS_PER_PRICE_UNIT - 1n) / TOKENS_PER_PRICE_UNIT);
}

const warnedUnpriced = new Set<string>();

/**
 * The price of a model by the name the ledger records (a local id or an UPSTREAMS name), also found under a local
 * model's aliases. Unpriced: undefined, with one warning per model and isolate (its requests cost 0).
 */
export function priceOf(prices: PriceTable, model: string): ModelPrice | undefined {
  const local = resolveModelId(model);
  const price = prices.models[model] ?? (local ? prices.models[local] : undefined);
  if (!price && !warnedUnpriced.has(model)) {
    warnedUnpriced.add(model);
    console.warn(JSON.stringify({ level: 'warn', event: 'model_unpriced', model, message: 'no PRICES entry: its requests cost 0' }));
  }
  return price;
}

/** The cost of a request to `model` (0 for an unpriced model). */
export function requestCostMicros(prices: PriceTable, model: string, promptTokens: number, completionTokens: number): number {
  const price = priceOf(prices, model);
  return price ? costMicros(price, promptTokens, completionTokens) : 0;
}
