/**
 * What a conversion reads a model from: a checkpoint folder (checkpoint.ts) or a GGUF file
 * (gguf-model.ts), both behind Mistral's canonical tensor names in the canonical (rotate-half)
 * q/k row order, so convert.ts has one path for every source.
 */
import type { BlockFormat } from './blocks.ts';
import type { ModelConfig } from './model-config.ts';

/** One Mixtral expert's matrices as Q4_0 / Q8_0 blocks, [out, in] row-major like the fp32 ones. */
export interface ExpertBlocks {
  w1: Uint8Array;
  w3: Uint8Array;
  w2: Uint8Array;
}

/** A SentencePiece vocabulary: pieces in id order with their scores and types (1 normal, 2 unknown, 3 control, 6 byte…). */
export interface SentencePieceVocabulary {
  pieces: Array<{ piece: string; score: number; type: number }>;
  /** Whether text gets SentencePiece's leading "▁". */
  addDummyPrefix: boolean;
}

export interface ModelSource {
  readonly config: ModelConfig;
  /** Where it was read from (folder or file), for messages. */
  readonly path: string;
  /** The store name a conversion records when the caller gives none. */
  readonly defaultName: string;
  /** One tensor by canonical name as float32, [out, in], q/k rows in rotate-half order. */
  read(name: string): Promise<Float32Array>;
  /**
   * An expert's matrices when the source already holds them as `format` blocks (a GGUF file's
   * Q4_0 / Q8_0 experts), so they are copied rather than dequantised and quantised again;
   * undefined when it does not.
   */
  expertBlocks?(layer: number, expert: number, format: BlockFormat): Promise<ExpertBlocks | undefined>;
  /** The block format a tensor is stored in, when it is Q4_0 or Q8_0 (a GGUF file's). */
  blockFormatOf?(name: string): BlockFormat | undefined;
  /** A cheap fingerprint of the source, the key of its converted store in the cache. */
  sourceHash(): Promise<string>;
  /** Tokenizer files to copy into a store (tokenizer.json, tokenizer.model…), when the source has them. */
  tokenizerFiles(): Promise<string[]>;
  /** A SentencePiece vocabulary held in the source itself (GGUF), for the store's tokenizer.json. */
  vocabulary?(): SentencePieceVocabulary | undefined;
  /** A Jinja chat template held in the source itself (GGUF's `tokenizer.chat_template`). */
  chatTemplate?(): string | undefined;
  close(): Promise<void>;
}
