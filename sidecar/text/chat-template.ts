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
 */
import { invalidRequest } from '../errors.ts';
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

/** Token ids of the prompt for `messages`, BOS first, ready for the model to write the next answer. */
export function renderChatPrompt(tokenizer: Tokenizer, messages: ChatMessage[], options: { safePrompt?: boolean } = {}): number[] {
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
