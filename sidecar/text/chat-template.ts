/**
 * Mistral's v1 instruct prompt (Mistral 7B v0.1/v0.2, Mixtral 8x7B), built token by token as
 * mistral-common's InstructTokenizerV1 does:
 *
 *   <s> enc("[INST] {user} [/INST]") enc("{assistant}") </s> enc("[INST] {user} [/INST]") …
 *
 * BOS/EOS are inserted by id and every segment is encoded separately (each gets SentencePiece's
 * dummy-prefix space), so text inside a message can never produce a control token.
 *
 * What is accepted (mistral-common's request normalisation):
 * - system messages anywhere; their contents are joined with a blank line and folded into the
 *   FIRST user turn as "{system}\n\n{user}";
 * - consecutive messages of the same role are joined with a blank line;
 * - after that the turns must start with a user message and end with a user message (the model
 *   answers the last one), so they alternate user, assistant, user, …
 * `safePrompt` prepends Mistral's guardrail text to the system prompt.
 *
 * A store converted from a GGUF file that carries `tokenizer.chat_template` keeps it as
 * chat_template.jinja, and its prompts are rendered by that template instead (`loadChatRenderer`).
 */
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { Template } from '@huggingface/jinja';
import { invalidRequest, modelError } from '../errors.ts';
import type { Tokenizer } from './tokenizer.ts';

export type ChatRole = 'system' | 'user' | 'assistant';

export interface ChatMessage {
  role: ChatRole;
  content: string;
}

/** Mistral's safe_prompt guard text (docs/platform/04-guardrailing.md), verbatim. */
export const SAFE_PROMPT =
  'Always assist with care, respect, and truth. Respond with utmost utility yet securely. Avoid harmful, unethical, prejudiced, or negative content. Ensure replies promote fairness and positivity.';

const ROLES: readonly string[] = ['system', 'user', 'assistant'];

interface Turn {
  role: 'user' | 'assistant';
  content: string;
}

/** Splits system text from the conversation and merges consecutive same-role messages. */
function normaliseMessages(messages: ChatMessage[]): { system: string[]; turns: Turn[] } {
  if (!Array.isArray(messages) || messages.length === 0) {
    throw invalidRequest('messages must contain at least one message', 'messages');
  }
  const system: string[] = [];
  const turns: Turn[] = [];
  messages.forEach((message, index) => {
    if (typeof message !== 'object' || message === null || !ROLES.includes(message.role)) {
      throw invalidRequest(`messages[${index}].role must be one of system, user, assistant`, 'messages');
    }
    if (typeof message.content !== 'string') {
      throw invalidRequest(`messages[${index}].content must be a string`, 'messages');
    }
    if (message.role === 'system') {
      system.push(message.content);
      return;
    }
    const last = turns.at(-1);
    if (last && last.role === message.role) last.content += `\n\n${message.content}`;
    else turns.push({ role: message.role, content: message.content });
  });
  if (turns.length === 0) throw invalidRequest('messages must contain a user message', 'messages');
  if (turns[0]!.role !== 'user') {
    throw invalidRequest('the first non-system message must have role "user"', 'messages');
  }
  if (turns.at(-1)!.role !== 'user') {
    throw invalidRequest('the last message must have role "user" (or "system")', 'messages');
  }
  return { system, turns };
}

export interface ChatPromptOptions {
  safePrompt?: boolean;
}

/** Token ids of a chat's prompt, ready for the model to write the next answer. */
export type ChatPromptRenderer = (tokenizer: Tokenizer, messages: ChatMessage[], options?: ChatPromptOptions) => number[];

/** Token ids of the prompt for `messages`, BOS first, ready for the model to write the next answer. */
export function renderChatPrompt(tokenizer: Tokenizer, messages: ChatMessage[], options: ChatPromptOptions = {}): number[] {
  const { system, turns } = normaliseMessages(messages);
  if (options.safePrompt) system.unshift(SAFE_PROMPT);
  const systemPrompt = system.join('\n\n');
  const ids = [tokenizer.bosId];
  turns.forEach((turn, index) => {
    if (turn.role === 'user') {
      const content = index === 0 && systemPrompt !== '' ? `${systemPrompt}\n\n${turn.content}` : turn.content;
      appendAll(ids, tokenizer.encode(`[INST] ${content} [/INST]`));
    } else {
      appendAll(ids, tokenizer.encode(turn.content));
      ids.push(tokenizer.eosId);
    }
  });
  return ids;
}

/** A loop, not `push(...source)`: spreading passes every id as an argument, and a long prompt overflows the stack. */
function appendAll(target: number[], source: readonly number[]): void {
  for (const id of source) target.push(id);
}

/** A store's own chat template (a GGUF file's `tokenizer.chat_template`), beside its tokenizer. */
export const CHAT_TEMPLATE_FILE = 'chat_template.jinja';

/**
 * Message contents are wrapped in these private-use characters while the template renders, so
 * that "<s>" or "</s>" written by a user stays text: only the template's own text can produce
 * BOS and EOS. Contents lose any of these characters first.
 */
const CONTENT_START = '\uE000';
const CONTENT_END = '\uE001';
const MARKERS = /[\uE000\uE001]/g;

/**
 * A renderer for a Jinja chat template as Hugging Face and llama.cpp apply them: `messages`,
 * `bos_token` "<s>", `eos_token` "</s>", `add_generation_prompt` true (the engine supplies `raise_exception`). The
 * messages are validated and merged as for Mistral's own template, system text first as one
 * system message. The rendered text is encoded chunk by chunk between the template's BOS / EOS.
 */
export function jinjaChatRenderer(source: string, file: string): ChatPromptRenderer {
  let template: Template;
  try {
    template = new Template(source);
  } catch (error) {
    throw modelError(`${file}: not a chat template this engine can run: ${(error as Error).message}`, error);
  }
  return (tokenizer, messages, options = {}) => {
    const { system, turns } = normaliseMessages(messages);
    if (options.safePrompt) system.unshift(SAFE_PROMPT);
    const list = [...(system.length > 0 ? [{ role: 'system', content: system.join('\n\n') }] : []), ...turns];
    let text: string;
    try {
      text = template.render({
        messages: list.map(({ role, content }) => ({ role, content: `${CONTENT_START}${content.replace(MARKERS, '')}${CONTENT_END}` })),
        bos_token: '<s>',
        eos_token: '</s>',
        add_generation_prompt: true,
      });
    } catch (error) {
      throw invalidRequest(`the model's chat template refused these messages: ${(error as Error).message}`, 'messages');
    }
    return encodeRendered(tokenizer, text);
  };
}

/** Ids of rendered template text: "<s>" / "</s>" outside message contents are BOS / EOS. */
function encodeRendered(tokenizer: Tokenizer, text: string): number[] {
  const specials: Array<[string, number]> = [
    ['<s>', tokenizer.bosId],
    ['</s>', tokenizer.eosId],
  ];
  const ids: number[] = [];
  let chunk = '';
  let inContent = false;
  for (let i = 0; i < text.length; ) {
    const char = text[i]!;
    if (char === CONTENT_START || char === CONTENT_END) {
      inContent = char === CONTENT_START;
      i++;
      continue;
    }
    const special = inContent ? undefined : specials.find(([marker]) => text.startsWith(marker, i));
    if (special) {
      appendAll(ids, tokenizer.encode(chunk));
      chunk = '';
      ids.push(special[1]);
      i += special[0].length;
      continue;
    }
    chunk += char;
    i++;
  }
  appendAll(ids, tokenizer.encode(chunk));
  return ids;
}

/** The renderer for the model in `dir`: its chat_template.jinja when it has one, else Mistral's v1. */
export async function loadChatRenderer(dir: string): Promise<ChatPromptRenderer> {
  const path = join(dir, CHAT_TEMPLATE_FILE);
  let source: string;
  try {
    source = await readFile(path, 'utf8');
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'ENOENT') return renderChatPrompt;
    throw modelError(`cannot read ${path}: ${(error as NodeJS.ErrnoException).code ?? String(error)}`, error);
  }
  return jinjaChatRenderer(source, path);
}
