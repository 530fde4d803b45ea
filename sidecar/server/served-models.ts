/**
 * The models one sidecar serves: each folder is opened once (a raw checkpoint is converted into
 * the store cache on first use), named by its architecture (mistral → mistral-tiny, mixtral → mistral-small, the
 * wire contract's canonical ids) and given its tokenizer and its own batch scheduler.
 */
import { LOCAL_MODELS, type LocalModelId, resolveModelId } from '../../shared/api.ts';
import { ERROR_CODES } from '../../shared/errors.ts';
import { demoModelNamed, ensureDemoModel, ensureDemoModels } from '../convert/demo-model.ts';
import { openModel } from '../convert/loader.ts';
import type { LoadOptions, ModelRuntime } from '../engine/index.ts';
import { modelError, SidecarError } from '../errors.ts';
import { Scheduler } from '../serving/scheduler.ts';
import { type ChatPromptRenderer, loadChatRenderer } from '../text/chat-template.ts';
import { loadTokenizer, type Tokenizer } from '../text/tokenizer.ts';
import { DEMO_DEFAULT_MAX_TOKENS, type ServeConfig } from './config.ts';
import type { Logger } from './logger.ts';
import type { SidecarMetrics } from './metrics.ts';

export interface ServedModel {
  id: LocalModelId;
  runtime: ModelRuntime;
  tokenizer: Tokenizer;
  /** Its chat template: the store's own (from a GGUF file) or Mistral's v1. */
  renderPrompt: ChatPromptRenderer;
  scheduler: Scheduler;
  /** `max_tokens` for a request that leaves it unset; undefined = the rest of the context. */
  defaultMaxTokens: number | undefined;
}

interface ModelSource {
  dir: string;
  demo: boolean;
}

/** The folders to load: the configured ones (a demo alias such as `demo` names a demo store), else both demo models. */
async function modelSources(config: ServeConfig): Promise<ModelSource[]> {
  if (config.modelDirs.length === 0) return Object.values(await ensureDemoModels()).map((dir) => ({ dir, demo: true }));
  const sources: ModelSource[] = [];
  for (const model of config.modelDirs) {
    const demo = demoModelNamed(model);
    sources.push(demo ? { dir: await ensureDemoModel(demo), demo: true } : { dir: model, demo: false });
  }
  return sources;
}

const ID_BY_ARCHITECTURE: Record<ModelRuntime['info']['architecture'], LocalModelId> = {
  mistral: 'mistral-tiny',
  mixtral: 'mistral-small',
};

/** Loads every configured folder in turn (or the two demo models); fails naming the folder at fault. */
export async function loadServedModels(config: ServeConfig, metrics: SidecarMetrics, logger: Logger): Promise<ServedModel[]> {
  const sources = await modelSources(config);
  const served: ServedModel[] = [];
  try {
    for (const { dir, demo } of sources) {
      const started = performance.now();
      let id: LocalModelId | null = null; // known once loaded; page-ins only happen after that
      const options: LoadOptions = {
        device: config.device,
        threads: config.threads,
        expertCacheMb: config.expertCacheMb,
        kvCacheMb: config.kvCacheMb,
        maxSequences: config.maxBatch,
        onExpertPageIn: (seconds) => metrics.observeExpertPageIn(id ?? 'loading', seconds),
      };
      const runtime = await openModel(dir, options);
      id = ID_BY_ARCHITECTURE[runtime.info.architecture];
      const duplicate = served.find((model) => model.id === id);
      if (duplicate) {
        await runtime.dispose();
        throw modelError(
          `${dir} and ${duplicate.runtime.dir} are both ${runtime.info.architecture} models; a sidecar serves one model per id (${id})`,
        );
      }
      const tokenizer = await loadTokenizer(runtime.dir, runtime.info.vocabSize);
      const renderPrompt = await loadChatRenderer(runtime.dir);
      const scheduler = new Scheduler({
        runtime,
        tokenizer,
        maxBatch: config.maxBatch,
        maxQueue: config.maxQueue,
        prefillChunkTokens: config.prefillChunkTokens,
        admissionWindowMs: config.admissionWindowMs,
        requestTimeoutMs: config.requestTimeoutMs,
        observer: metrics.observerFor(id),
        onLoopError: (error) => logger.error('scheduler step failed', { model: id, error }),
      });
      metrics.watchScheduler(id, () => scheduler.stats());
      if (runtime.expertCacheStats) metrics.watchExpertCache(id, () => runtime.expertCacheStats?.() ?? null);
      const kvReserve = runtime.kvReserve?.bind(runtime);
      if (kvReserve) metrics.watchKvReserve(id, kvReserve);
      served.push({ id, runtime, tokenizer, renderPrompt, scheduler, defaultMaxTokens: demo ? DEMO_DEFAULT_MAX_TOKENS : undefined });
      const experts = runtime.expertBudgetReason?.() ?? null;
      const layers = runtime.layerPath?.() ?? null;
      logger.info('model loaded', {
        model: id,
        dir: runtime.dir,
        architecture: runtime.info.architecture,
        precision: runtime.info.precision,
        ...(experts ? { experts } : {}),
        ...(layers ? { layers } : {}),
        kvReservedMb: Math.round((runtime.kvReserve?.().bytes ?? 0) / 2 ** 20),
        contextLength: runtime.info.contextLength,
        seconds: Math.round(performance.now() - started) / 1000,
      });
    }
  } catch (error) {
    await Promise.all(served.map((model) => model.runtime.dispose()));
    throw error;
  }
  return served;
}

/** The served model a request names (canonical id or alias), else 400 invalid_model. */
export function findServedModel(models: ServedModel[], name: string): ServedModel {
  const id = resolveModelId(name);
  const model = id === null ? undefined : models.find((candidate) => candidate.id === id);
  if (!model) {
    const available = models.flatMap((candidate) => [candidate.id, ...LOCAL_MODELS[candidate.id].aliases]).join(', ');
    throw new SidecarError('invalid_model', `Invalid model: ${name}. This sidecar serves: ${available}`, {
      param: 'model',
      code: ERROR_CODES.invalidModel,
    });
  }
  return model;
}
