/** Converts the AI SDK's prompt into Mistral chat messages (text only: the Sirocco models have no vision or tools). */
import { type LanguageModelV3Prompt, UnsupportedFunctionalityError } from '@ai-sdk/provider';
import type { SiroccoChatMessage } from './sirocco-api.ts';

export function convertToSiroccoMessages(prompt: LanguageModelV3Prompt): SiroccoChatMessage[] {
  return prompt.map(convertMessage);
}

function convertMessage(message: LanguageModelV3Prompt[number]): SiroccoChatMessage {
  switch (message.role) {
    case 'system':
      return { role: 'system', content: message.content };
    case 'user':
      return {
        role: 'user',
        content: message.content
          .map((part) => {
            if (part.type === 'text') return part.text;
            throw new UnsupportedFunctionalityError({ functionality: `file parts (${part.mediaType}) in user messages` });
          })
          .join(''),
      };
    case 'assistant':
      return {
        role: 'assistant',
        content: message.content
          .map((part) => {
            // Earlier reasoning is not replayed to the model, the way chat templates drop it.
            if (part.type === 'text') return part.text;
            if (part.type === 'reasoning') return '';
            throw new UnsupportedFunctionalityError({ functionality: `${part.type} parts in assistant messages` });
          })
          .join(''),
      };
    case 'tool':
      throw new UnsupportedFunctionalityError({ functionality: 'tool messages' });
  }
}
