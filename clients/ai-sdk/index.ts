/** Vercel AI SDK provider for Sirocco's Mistral-compatible API. */

export {
  SiroccoChatLanguageModel,
  type SiroccoChatModelId,
  type SiroccoLanguageModelOptions,
  siroccoLanguageModelOptions,
} from './sirocco-chat-language-model.ts';
export { createSirocco, SIROCCO_REGION_HEADER, type SiroccoProvider, type SiroccoProviderSettings, sirocco } from './sirocco-provider.ts';
