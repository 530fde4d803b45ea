/** `createSirocco()`: the AI SDK provider for a Sirocco edge (or a single sidecar), shaped like `createMistral()`. */
import { type LanguageModelV3, NoSuchModelError, type ProviderV3 } from '@ai-sdk/provider';
import { type FetchFunction, loadApiKey, loadOptionalSetting, withoutTrailingSlash, withUserAgentSuffix } from '@ai-sdk/provider-utils';
import { SiroccoChatLanguageModel, type SiroccoChatModelId } from './sirocco-chat-language-model.ts';

export const SIROCCO_REGION_HEADER = 'x-sirocco-region';
const DEFAULT_BASE_URL = 'http://localhost:8787/v1';

export interface SiroccoProviderSettings {
  /** API prefix including `/v1`, e.g. `https://sirocco.example.workers.dev/v1`. Default: env SIROCCO_BASE_URL, else http://localhost:8787/v1. */
  baseURL?: string;
  /** Sent as `Authorization: Bearer …`. Default: env SIROCCO_API_KEY (read on each call; pass it explicitly on Workers). */
  apiKey?: string;
  /** Extra headers for every request. */
  headers?: Record<string, string>;
  /** Preferred sidecar region (sent as `x-sirocco-region`), e.g. `eu-west`. */
  region?: string;
  /** Custom fetch, e.g. for tests or to route through a service binding. */
  fetch?: FetchFunction;
}

export interface SiroccoProvider extends ProviderV3 {
  (modelId: SiroccoChatModelId): LanguageModelV3;
  languageModel(modelId: SiroccoChatModelId): LanguageModelV3;
  chat(modelId: SiroccoChatModelId): LanguageModelV3;
}

/**
 * @example
 * const sirocco = createSirocco({ baseURL: 'http://localhost:8787/v1', apiKey: process.env.SIROCCO_API_KEY });
 * const { text } = await generateText({ model: sirocco('mistral-tiny'), prompt: 'Hello' });
 */
export function createSirocco(settings: SiroccoProviderSettings = {}): SiroccoProvider {
  const baseURL =
    withoutTrailingSlash(loadOptionalSetting({ settingValue: settings.baseURL, environmentVariableName: 'SIROCCO_BASE_URL' })) ??
    DEFAULT_BASE_URL;

  // Built per call so a key rotated in the environment is picked up, and a missing key fails the call, not the import.
  const getHeaders = () =>
    withUserAgentSuffix(
      {
        Authorization: `Bearer ${loadApiKey({ apiKey: settings.apiKey, environmentVariableName: 'SIROCCO_API_KEY', description: 'Sirocco' })}`,
        ...(settings.region != null ? { [SIROCCO_REGION_HEADER]: settings.region } : {}),
        ...settings.headers,
      },
      'ai-sdk/sirocco',
    );

  const createChatModel = (modelId: SiroccoChatModelId) =>
    new SiroccoChatLanguageModel(modelId, { provider: 'sirocco.chat', baseURL, headers: getHeaders, fetch: settings.fetch });

  const provider = function (modelId: SiroccoChatModelId) {
    if (new.target) throw new Error('The Sirocco model function cannot be called with the new keyword.');
    return createChatModel(modelId);
  };
  provider.specificationVersion = 'v3' as const;
  provider.languageModel = createChatModel;
  provider.chat = createChatModel;
  provider.embeddingModel = (modelId: string): never => {
    throw new NoSuchModelError({ modelId, modelType: 'embeddingModel' });
  };
  provider.imageModel = (modelId: string): never => {
    throw new NoSuchModelError({ modelId, modelType: 'imageModel' });
  };
  return provider;
}

/** Default instance: configured from SIROCCO_BASE_URL and SIROCCO_API_KEY. */
export const sirocco = createSirocco();
