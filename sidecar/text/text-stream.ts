/**
 * Turns generated token ids into text as they arrive, and applies stop strings.
 *
 * Detokenization decodes a small window of recent ids twice (with and without the newest) and
 * emits the difference (the prefix/read-offset scheme of Hugging Face's text-generation-inference).
 * The window keeps SentencePiece's leading-space handling consistent, and text that ends in an
 * incomplete UTF-8 sequence (byte-fallback tokens of one character arriving one by one) is held
 * until the character is complete.
 *
 * Stop strings: text that could still turn into a stop string is held back; when a stop string
 * appears, the text before it is emitted, the stop string itself never is, and the stream ends.
 */
import type { Tokenizer } from './tokenizer.ts';

const REPLACEMENT_CHARACTER = '\uFFFD';
/**
 * A character is at most 4 byte tokens (plus a token or two that decode to nothing, such as a
 * leading "▁"); text still ending in U+FFFD after this many held tokens is invalid UTF-8 for good
 * and is released rather than held (and re-decoded) for ever.
 */
const MAX_HELD_TOKENS = 8;

export class TextStream {
  private readonly stop: string[];
  private readonly ids: number[] = [];
  /** Window start: ids before it are fully emitted and only kept for the window's context. */
  private prefixOffset = 0;
  /** Ids before this one have been turned into text already. */
  private readOffset = 0;
  /** Decoded text not yet emitted because it might be the start of a stop string. */
  private pending = '';
  private stopped = false;

  constructor(
    private readonly tokenizer: Tokenizer,
    stop: string[] = [],
  ) {
    this.stop = stop.filter((s) => s.length > 0);
  }

  /** True once a stop string was seen; later pushes return no text. */
  get isStopped(): boolean {
    return this.stopped;
  }

  push(tokenId: number): { text: string; stopped: boolean } {
    if (this.stopped) return { text: '', stopped: true };
    this.ids.push(tokenId);
    const before = this.tokenizer.decode(this.ids.slice(this.prefixOffset, this.readOffset));
    const after = this.tokenizer.decode(this.ids.slice(this.prefixOffset));
    const incomplete = after.endsWith(REPLACEMENT_CHARACTER) && this.ids.length - this.readOffset < MAX_HELD_TOKENS;
    if (after.length <= before.length || incomplete) {
      return { text: '', stopped: false }; // nothing new yet, or a character is still incomplete
    }
    this.prefixOffset = this.readOffset;
    this.readOffset = this.ids.length;
    return this.release(after.slice(before.length));
  }

  /** Emits everything still held (an incomplete character as U+FFFD, a partial stop-string match as text). */
  flush(): string {
    if (this.stopped) return '';
    const before = this.tokenizer.decode(this.ids.slice(this.prefixOffset, this.readOffset));
    const after = this.tokenizer.decode(this.ids.slice(this.prefixOffset));
    this.prefixOffset = this.readOffset = this.ids.length;
    const text = this.pending + after.slice(before.length);
    this.pending = '';
    return text;
  }

  private release(newText: string): { text: string; stopped: boolean } {
    const text = this.pending + newText;
    let stopAt = -1;
    for (const stop of this.stop) {
      const index = text.indexOf(stop);
      if (index !== -1 && (stopAt === -1 || index < stopAt)) stopAt = index;
    }
    if (stopAt !== -1) {
      this.stopped = true;
      this.pending = '';
      return { text: text.slice(0, stopAt), stopped: true };
    }
    const hold = this.longestStopPrefixSuffix(text);
    this.pending = text.slice(text.length - hold);
    return { text: text.slice(0, text.length - hold), stopped: false };
  }

  /** Length of the longest end of `text` that is a proper prefix of some stop string. */
  private longestStopPrefixSuffix(text: string): number {
    let best = 0;
    for (const stop of this.stop) {
      for (let length = Math.min(stop.length - 1, text.length); length > best; length--) {
        if (text.endsWith(stop.slice(0, length))) {
          best = length;
          break;
        }
      }
    }
    return best;
  }
}
