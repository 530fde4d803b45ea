/**
 * `GET /v1/models`: the local models some configured region serves, plus the upstream-routed
 * names, limited to what the caller's key may use. `GET /v1/models/:id` retrieves one card by its
 * id or an alias (404 otherwise), as Mistral's API does.
 */
import type { Context } from 'hono';
import { LOCAL_MODELS, type ModelCard, type ModelList, modelCard } from '../../shared/api.ts';
import { keyAllowsModel } from '../auth/index.ts';
import { sidecarsFrom, upstreamsFrom } from '../config/index.ts';
import type { AppEnv } from '../env.ts';
import { EdgeError } from '../errors.ts';

/** 2023-12-11, when Mistral opened the platform with these names. */
const MODELS_CREATED = 1_702_252_800;

/** The cards visible to the caller. */
function visibleCards(c: Context<AppEnv>): ModelCard[] {
  const key = c.get('apiKey');
  const served = new Set(sidecarsFrom(c.env).flatMap((sidecar) => sidecar.models));
  const local = Object.values(LOCAL_MODELS)
    .filter((model) => served.has(model.id))
    .map((model) =>
      modelCard(model.id, {
        created: MODELS_CREATED,
        aliases: model.aliases,
        maxContextLength: model.maxContextLength,
        description: model.description,
      }),
    );
  const upstream = Object.keys(upstreamsFrom(c.env)).map((name) =>
    modelCard(name, { created: MODELS_CREATED, functionCalling: true, description: 'served by an upstream Mistral-compatible API' }),
  );
  return [...local, ...upstream].filter((card) => !key || keyAllowsModel(key, card.id, ...card.aliases));
}

export function modelsRoute() {
  return (c: Context<AppEnv>) => c.json({ object: 'list', data: visibleCards(c) } satisfies ModelList);
}

export function modelRoute() {
  return (c: Context<AppEnv>) => {
    const id = c.req.param('id') ?? '';
    const card = visibleCards(c).find((candidate) => candidate.id === id || candidate.aliases.includes(id));
    if (!card) throw new EdgeError('not_found', `Model not found: ${id}`, { param: 'model_id' });
    return c.json(card);
  };
}
