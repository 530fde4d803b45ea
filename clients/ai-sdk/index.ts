/** Vercel AI SDK provider for Sirocco's Mistral-compatible API. */
export { createSirocco, sirocco, SIROCCO_REGION_HEADER, type SiroccoProvider, type SiroccoProviderSettings } from './sirocco-provider.ts';
export {
  SiroccoChatLanguageModel,
  siroccoLanguageModelOptions,
  type SiroccoChatModelId,
  type SiroccoLanguageModelOptions,
} from './sirocco-chat-language-model.ts';
