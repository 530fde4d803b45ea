/**
 * JSON mode (response_format json_object / json_schema): token masking that keeps a local model's
 * answer a valid JSON prefix at every step and stops as soon as the root object is complete.
 *
 * Each vocabulary token's text is decoded once per tokenizer (cached). A token is allowed when its
 * text keeps the answer a valid JSON prefix (json-constraint.ts). Per step the top CANDIDATES
 * tokens by logit are checked first; only when none fits are all tokens checked, grouped by first
 * character so a rejected first character rules out its whole group at once. Disallowed logits
 * become −∞ and the request's own sampler picks among the rest, so seeds stay reproducible and
 * greedy stays greedy. Tokens that decode to nothing (control tokens) or to an incomplete UTF-8
 * character (lone byte-fallback tokens ≥ 0x80) are never allowed; EOS is never needed, because the
 * answer ends at the object's closing brace.
 *
 * Budget: a token is allowed only if the shortest completion after it (closingText) still fits in
 * the tokens left after it, one character per token. Checking this at every step, not only near
 * the end, matters: a single token such as `:{"` can lengthen the completion by several
 * characters. So the object closes within max_tokens whenever single-character tokens for the
 * closers exist (they do in the Mistral vocabulary). With a max_tokens too small for even the
 * shortest object, the answer ends with finish_reason "length" and is not complete JSON.
 */
import { modelError } from '../errors.ts';
import type { Tokenizer } from '../text/tokenizer.ts';
import { advanceText, closingText, initialJsonState, isJsonComplete, type JsonState } from './json-constraint.ts';
import type { Sampler } from './sampler.ts';

/** Tokens examined per step before falling back to a full vocabulary scan. */
export const CANDIDATES = 64;
/**
 * More completion characters than one token can add (a token is at most a few dozen characters and
 * each character adds at most a few closers): with more tokens left than the completion plus this,
 * the budget cannot bind.
 */
const UNBOUNDED_GROWTH = 256;
/** Full-scan results remembered per vocabulary (states outside strings recur constantly). */
const SCAN_CACHE_ENTRIES = 512;
/** Only results this small are remembered (inside strings nearly every token is allowed). */
const SCAN_CACHE_MAX_TOKENS = 4096;

/** Each token's decoded text ('' = never allowed), and token ids grouped by their first character. */
export interface JsonVocabulary {
  readonly pieces: readonly string[];
  /** Full-scan results by state and closing limit: the allowed tokens and their next states. */
  readonly scanCache: Map<string, ReadonlyMap<number, unknown>>;
  /** Keyed by the text up to the first non-whitespace character (see groupKey). */
  readonly byFirstChar: ReadonlyMap<string, readonly number[]>;
}

const vocabularies = new WeakMap<Tokenizer, JsonVocabulary>();

/**
 * The text each token adds when it follows other text. `decode` drops the SentencePiece dummy
 * space at the very start, so each token is decoded after an anchor token and the anchor's text is
 * removed.
 */
export function jsonVocabulary(tokenizer: Tokenizer): JsonVocabulary {
  const cached = vocabularies.get(tokenizer);
  if (cached) return cached;
  const anchor = tokenizer.encode('a');
  const anchorText = tokenizer.decode(anchor);
  const pieces: string[] = [];
  const byFirstChar = new Map<string, number[]>();
  for (let id = 0; id < tokenizer.vocabSize; id++) {
    const decoded = tokenizer.decode([...anchor, id]);
    const piece = decoded.startsWith(anchorText) ? decoded.slice(anchorText.length) : '';
    const usable = piece !== '' && !piece.includes('\uFFFD') && id !== tokenizer.eosId;
    pieces.push(usable ? piece : '');
    if (!usable) continue;
    const first = groupKey(piece);
    let group = byFirstChar.get(first);
    if (!group) {
      group = [];
      byFirstChar.set(first, group);
    }
    group.push(id);
  }
  const vocabulary = { pieces, byFirstChar, scanCache: new Map<string, ReadonlyMap<number, unknown>>() };
  vocabularies.set(tokenizer, vocabulary);
  return vocabulary;
}

/**
 * A token's group: its text up to and including the first non-whitespace character, so the ~20000
 * pieces that start with a space are not all checked whenever whitespace is allowed.
 */
function groupKey(piece: string): string {
  const match = /^\s*\S?/u.exec(piece);
  return match && match[0] !== '' ? match[0] : piece[0]!;
}

/** Indices of the `count` largest finite logits, largest first (a small min-heap over one pass). */
export function topCandidates(logits: Float32Array, count: number): number[] {
  const heap: number[] = [];
  const less = (a: number, b: number) => logits[a]! < logits[b]! || (logits[a] === logits[b] && a > b);
  const siftDown = (start: number) => {
    let i = start;
    for (;;) {
      const left = 2 * i + 1;
      const right = left + 1;
      let smallest = i;
      if (left < heap.length && less(heap[left]!, heap[smallest]!)) smallest = left;
      if (right < heap.length && less(heap[right]!, heap[smallest]!)) smallest = right;
      if (smallest === i) return;
      [heap[i], heap[smallest]] = [heap[smallest]!, heap[i]!];
      i = smallest;
    }
  };
  for (let id = 0; id < logits.length; id++) {
    if (!(logits[id]! > -Infinity)) continue;
    if (heap.length < count) {
      heap.push(id);
      for (let i = heap.length - 1; i > 0; ) {
        const parent = (i - 1) >> 1;
        if (!less(heap[i]!, heap[parent]!)) break;
        [heap[i], heap[parent]] = [heap[parent]!, heap[i]!];
        i = parent;
      }
    } else if (less(heap[0]!, id)) {
      heap[0] = id;
      siftDown(0);
    }
  }
  return heap.sort((a, b) => (less(a, b) ? 1 : less(b, a) ? -1 : 0));
}

/**
 * A prefix-closed language over characters with immutable states: JSON objects here, a schema's
 * shape in json-schema-constraint.ts.
 */
export interface TextConstraint<S> {
  /** Names the language in the shared scan cache (equal ids ⇒ equal languages). */
  readonly id: string;
  readonly initial: S;
  /** The state after `text`, or null when no accepted text starts with the prefix plus `text`. */
  advance(state: S, text: string): S | null;
  /** The shortest text that completes an accepted text from `state`. */
  closing(state: S): string;
  isComplete(state: S): boolean;
}

/** Any JSON object (response_format json_object). */
export const jsonObjectConstraint: TextConstraint<JsonState> = {
  id: 'json_object',
  initial: initialJsonState({ rootObject: true }),
  advance: advanceText,
  closing: closingText,
  isComplete: isJsonComplete,
};

export interface JsonModeSampler {
  /** The next token (always one that keeps the answer a JSON prefix); `remaining` = tokens left including this one. */
  sample(logits: Float32Array, remaining: number): number;
  /** True once the root object is closed: the answer must end here. */
  readonly complete: boolean;
}

/** Wraps a request's sampler so its answer is a JSON object (or, given a schema constraint, that schema's shape). */
export function createJsonModeSampler<S = JsonState>(
  tokenizer: Tokenizer,
  sampler: Sampler,
  constraint: TextConstraint<S> = jsonObjectConstraint as unknown as TextConstraint<S>,
): JsonModeSampler {
  const vocabulary = jsonVocabulary(tokenizer);
  let state: S = constraint.initial;
  let masked = new Float32Array(0);

  /** Allowed tokens with their next states; with a limit, only those whose completion fits in it. */
  const allowed = (ids: Iterable<number>, closeWithin: number | null): Map<number, S> => {
    const found = new Map<number, S>();
    for (const id of ids) {
      const piece = vocabulary.pieces[id];
      if (!piece) continue;
      const after = constraint.advance(state, piece);
      if (after === null) continue;
      if (closeWithin !== null && constraint.closing(after).length > closeWithin) continue;
      found.set(id, after);
    }
    return found;
  };

  const fullScan = (closeWithin: number | null): ReadonlyMap<number, S> => {
    // The result depends only on the language, the state and the limit, so it is shared across steps and requests.
    const cacheKey = `${constraint.id}|${JSON.stringify(state)}|${closeWithin}`;
    const cached = vocabulary.scanCache.get(cacheKey) as ReadonlyMap<number, S> | undefined;
    if (cached) return cached;
    const found = new Map<number, S>();
    for (const [key, ids] of vocabulary.byFirstChar) {
      if (constraint.advance(state, key) === null) continue;
      for (const [id, after] of allowed(ids, closeWithin)) found.set(id, after);
    }
    if (found.size <= SCAN_CACHE_MAX_TOKENS) {
      if (vocabulary.scanCache.size >= SCAN_CACHE_ENTRIES) vocabulary.scanCache.clear();
      vocabulary.scanCache.set(cacheKey, found);
    }
    return found;
  };

  return {
    get complete() {
      return constraint.isComplete(state);
    },
    sample(logits: Float32Array, remaining: number): number {
      // The completion after this token must fit in the tokens left after it. Far from the end the
      // limit cannot bind (no token lengthens the completion by that much): full scans then share
      // one cache entry per state instead of one per remaining count.
      const tokensAfter = Math.max(0, remaining - 1);
      const closeWithin = tokensAfter < constraint.closing(state).length + UNBOUNDED_GROWTH ? tokensAfter : null;
      let choices: ReadonlyMap<number, S> = allowed(topCandidates(logits, CANDIDATES), closeWithin);
      if (choices.size === 0) choices = fullScan(closeWithin);
      // No token keeps the completion within the budget (an unusual vocabulary): any valid token.
      if (choices.size === 0 && closeWithin !== null) choices = fullScan(null);
      if (choices.size === 0)
        throw modelError(`JSON mode: no token of the model's vocabulary can continue the JSON answer (${constraint.id})`);
      if (masked.length !== logits.length) masked = new Float32Array(logits.length);
      masked.fill(-Infinity);
      // Allowed tokens keep their logits; −∞ everywhere else. A non-finite allowed logit becomes a
      // very low finite one so the sampler can still pick it when nothing else is allowed.
      for (const id of choices.keys()) masked[id] = Number.isFinite(logits[id]!) ? logits[id]! : -1e30;
      let token = sampler.sample(masked);
      if (!choices.has(token)) token = choices.keys().next().value!; // defensive: a sampler must pick among finite logits
      state = choices.get(token)!;
      return token;
    },
  };
}
