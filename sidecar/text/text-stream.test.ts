import { beforeAll, describe, expect, it } from 'vitest';
import { TextStream } from './text-stream.ts';
import { loadTokenizer, type Tokenizer } from './tokenizer.ts';

let tokenizer: Tokenizer;
beforeAll(async () => {
  tokenizer = await loadTokenizer('/nonexistent-sirocco-dir', 32000); // the bundled Mistral v1 vocabulary
});

/** Pushes `ids` one by one; returns every chunk (flush last) and whether a stop string ended it. */
function stream(ids: number[], stop: string[] = []) {
  const textStream = new TextStream(tokenizer, stop);
  const chunks: string[] = [];
  let stopped = false;
  for (const id of ids) {
    const step = textStream.push(id);
    chunks.push(step.text);
    if (step.stopped) {
      stopped = true;
      break;
    }
  }
  chunks.push(textStream.flush());
  return { chunks, text: chunks.join(''), stopped };
}

describe('TextStream detokenization', () => {
  it.each([
    'Hello world! How are you today?',
    '  two leading spaces, and   runs   of spaces  ',
    'lines\nand\ttabs\r\n',
    'emoji 🦙 and Ꙋ fall back to bytes 👩‍👩‍👧',
    '镇 Привет こんにちは',
  ])('streams %j to exactly the text of decoding all ids at once', (text) => {
    const ids = tokenizer.encode(text);
    const { chunks, text: streamed } = stream(ids);
    expect(streamed).toBe(tokenizer.decode(ids));
    expect(streamed).toBe(text);
    expect(chunks.join('')).not.toContain('\uFFFD');
  });

  it('holds the bytes of a character until the character is complete', () => {
    const ids = tokenizer.encode('🦙!');
    // "▁", then four byte-fallback tokens for the llama, then "!".
    expect(ids.length).toBe(6);
    const textStream = new TextStream(tokenizer, []);
    const chunks = ids.map((id) => textStream.push(id).text);
    expect(chunks.slice(0, 4)).toEqual(['', '', '', '']);
    expect(chunks[4]).toBe('🦙');
    expect(chunks[5]).toBe('!');
  });

  it('drops the dummy-prefix space of the first token only', () => {
    const ids = tokenizer.encode('Sure thing');
    const { chunks } = stream(ids);
    expect(chunks.filter((c) => c !== '')).toEqual(['Sure', ' thing']);
  });

  it('releases invalid UTF-8 instead of holding it for ever', () => {
    const leadByte = tokenizer.encode('🦙')[1]!; // <0xF0>, which never completes here
    const ids = new Array<number>(20).fill(leadByte);
    const textStream = new TextStream(tokenizer, []);
    const released = ids.map((id) => textStream.push(id).text).join('');
    expect(released.length).toBeGreaterThan(0);
    expect(released + textStream.flush()).toBe(tokenizer.decode(ids));
  });

  it('emits an unfinished character as U+FFFD on flush', () => {
    const llama = tokenizer.encode('🦙');
    const { text } = stream(llama.slice(0, 3));
    expect(text).toBe('\uFFFD');
  });
});

describe('TextStream stop strings', () => {
  it('stops at a stop string and never emits it', () => {
    const { text, stopped, chunks } = stream(tokenizer.encode('The answer is 42. END of story.'), ['END']);
    expect(stopped).toBe(true);
    expect(text).toBe('The answer is 42. ');
    expect(chunks.at(-1)).toBe(''); // nothing is released after the stop
  });

  it('finds a stop string split across tokens and ends at the earliest of several', () => {
    const ids = tokenizer.encode('alpha beta\n\nUser: gamma');
    expect(stream(ids, ['\n\nUser:', 'gamma']).text).toBe('alpha beta');
    expect(stream(ids, ['ta\n']).text).toBe('alpha be');
  });

  it('holds back text that could start a stop string, and releases it when it does not', () => {
    const ids = tokenizer.encode('hello world war');
    const textStream = new TextStream(tokenizer, ['world peace']);
    const released: string[] = [];
    for (const id of ids) released.push(textStream.push(id).text);
    const beforeWar = released.slice(0, -1).join('');
    expect(beforeWar).toBe('hello '); // "world" might still become "world peace"
    expect(released.join('') + textStream.flush()).toBe('hello world war');
  });

  it('emits a partial match that the stream ends on at flush', () => {
    const { text, stopped } = stream(tokenizer.encode('see you lat'), ['later!']);
    expect(stopped).toBe(false);
    expect(text).toBe('see you lat');
  });

  it('ignores empty stop strings and stays stopped after a stop', () => {
    const textStream = new TextStream(tokenizer, ['', 'x']);
    const ids = tokenizer.encode('ab x cd');
    const results = ids.map((id) => textStream.push(id));
    expect(results.map((r) => r.text).join('')).toBe('ab ');
    expect(results.at(-1)).toEqual({ text: '', stopped: true });
    expect(textStream.isStopped).toBe(true);
  });
});
