/**
 * `GET /v1/models`: the local models some configured region serves, plus the upstream-routed
 * names, limited to what the caller's key may use.
 */
import type { Context } from 'hono';
import { LOCAL_MODELS, modelCard, type ModelList } from '../../shared/api.ts';
import { keyAllowsModel } from '../auth/index.ts';
import { sidecarsFrom, upstreamsFrom } from '../config/index.ts';
import type { AppEnv } from '../env.ts';

/** 2023-12-11, when Mistral opened the platform with these names. */
const MODELS_CREATED = 1_702_252_800;

export function modelsRoute() {
  return (c: Context<AppEnv>) => {
    const key = c.get('apiKey');
    const served = new Set(sidecarsFrom(c.env).flatMap((sidecar) => sidecar.models));
    const local = Object.values(LOCAL_MODELS)
      .filter((model) => served.has(model.id))
      .map((model) =>
        modelCard(model.id, { created: MODELS_CREATED, aliases: model.aliases, maxContextLength: model.maxContextLength, description: model.description }),
      );
    const upstream = Object.keys(upstreamsFrom(c.env)).map((name) =>
      modelCard(name, { created: MODELS_CREATED, functionCalling: true, description: 'served by an upstream Mistral-compatible API' }),
    );
    const data = [...local, ...upstream].filter((card) => !key || keyAllowsModel(key, card.id, ...card.aliases));
    return c.json({ object: 'list', data } satisfies ModelList);
  };
}
