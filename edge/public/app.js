// The chat page: posts to the edge's own /v1/chat/completions with `stream: true` and renders the SSE deltas as
// Markdown as they arrive. SSE parsing is the project's shared/sse.ts bundled into /sse.js, and Markdown is the
// installed markdown-it copied into /vendor/ (both by `sirocco dev`, see cli/commands/dev.ts).
import { classifySseEvent, readSseEvents } from '/sse.js';
import markdownit from '/vendor/markdown-it.js';

const KEY_STORAGE = 'sirocco.apiKey';
const SETTINGS_STORAGE = 'sirocco.chatSettings';

/** Sampling presets: temperature and top-p (Mistral's defaults are 0.7 and 1). */
const PRESETS = {
  balanced: { temperature: 0.7, topP: 1 },
  precise: { temperature: 0.2, topP: 0.9 },
  creative: { temperature: 1, topP: 0.95 },
  deterministic: { temperature: 0, topP: 1 },
};
const DEFAULT_MAX_TOKENS = 256;

// `html: false` escapes any HTML in model text, and markdown-it drops javascript:/vbscript:/file: links, so the
// rendered string is safe to assign to innerHTML.
const markdown = markdownit({ html: false, linkify: true, breaks: true });
const renderLinkOpen =
  markdown.renderer.rules.link_open ?? ((tokens, index, options, _env, self) => self.renderToken(tokens, index, options));
markdown.renderer.rules.link_open = (tokens, index, options, env, self) => {
  tokens[index].attrSet('target', '_blank');
  tokens[index].attrSet('rel', 'noopener noreferrer');
  return renderLinkOpen(tokens, index, options, env, self);
};

const $ = (id) => document.getElementById(id);
const modelSelect = $('model');
const apiKeyInput = $('api-key');
const systemPromptInput = $('system-prompt');
const presetSelect = $('preset');
const temperatureInput = $('temperature');
const temperatureValue = $('temperature-value');
const topPInput = $('top-p');
const topPValue = $('top-p-value');
const maxTokensInput = $('max-tokens');
const settingsToggle = $('toggle-settings');
const newChatButton = $('new-chat');
const transcript = $('transcript');
const emptyState = $('empty-state');
const composer = $('composer');
const promptInput = $('prompt');
const sendButton = $('send');
const stopButton = $('stop');
const statusLine = $('status');

/**
 * The conversation: each turn is the user's prompt and the answer shown for it. A turn whose answer failed before
 * any text stays on screen (so Regenerate can retry it) but is left out of later requests.
 */
let turns = [];
/** Set while an answer streams; aborting it cancels the fetch, which the edge forwards to the sidecar. */
let inFlight = null;

// ─── Settings ────────────────────────────────────────────────────────────────

/**
 * The key arrives in the URL fragment (`npm start` prints such a link; a fragment is never sent to a server), is
 * kept in sessionStorage for this tab only, and the fragment is removed so the key does not linger in the address
 * bar or the history.
 */
function takeKeyFromFragment() {
  const key = new URLSearchParams(location.hash.slice(1)).get('key');
  if (key === null) return;
  if (key.trim()) sessionStorage.setItem(KEY_STORAGE, key.trim());
  history.replaceState(null, '', `${location.pathname}${location.search}`);
}

function currentKey() {
  return apiKeyInput.value.trim();
}

function loadSettings() {
  try {
    return JSON.parse(localStorage.getItem(SETTINGS_STORAGE) ?? '{}') ?? {};
  } catch {
    return {};
  }
}

function saveSettings() {
  const settings = {
    model: modelSelect.value || loadSettings().model,
    systemPrompt: systemPromptInput.value,
    preset: presetSelect.value,
    temperature: Number(temperatureInput.value),
    topP: Number(topPInput.value),
    maxTokens: maxTokensInput.value,
  };
  localStorage.setItem(SETTINGS_STORAGE, JSON.stringify(settings));
}

function showSamplingValues() {
  temperatureValue.textContent = Number(temperatureInput.value).toFixed(2);
  topPValue.textContent = Number(topPInput.value).toFixed(2);
}

function applyPreset(name) {
  const preset = PRESETS[name];
  if (!preset) return;
  temperatureInput.value = String(preset.temperature);
  topPInput.value = String(preset.topP);
  showSamplingValues();
}

/** The preset the sliders match, or "custom". */
function matchingPreset() {
  const temperature = Number(temperatureInput.value);
  const topP = Number(topPInput.value);
  const match = Object.entries(PRESETS).find(([, preset]) => preset.temperature === temperature && preset.topP === topP);
  return match ? match[0] : 'custom';
}

function restoreSettings() {
  const settings = loadSettings();
  systemPromptInput.value = typeof settings.systemPrompt === 'string' ? settings.systemPrompt : '';
  if (typeof settings.temperature === 'number') temperatureInput.value = String(settings.temperature);
  if (typeof settings.topP === 'number') topPInput.value = String(settings.topP);
  maxTokensInput.value = settings.maxTokens ? String(settings.maxTokens) : String(DEFAULT_MAX_TOKENS);
  presetSelect.value = matchingPreset();
  showSamplingValues();
}

function setSettingsOpen(open) {
  document.body.classList.toggle('settings-open', open);
  settingsToggle.setAttribute('aria-expanded', String(open));
}

/** Fills the model picker from GET /v1/models (the models this key may use). */
async function loadModels() {
  const apiKey = currentKey();
  if (!apiKey) {
    setModelOptions([]);
    setStatus('Paste an API key in Settings to start.');
    setSettingsOpen(true);
    return;
  }
  try {
    const response = await fetch('/v1/models', { headers: { authorization: `Bearer ${apiKey}` } });
    if (!response.ok) throw new Error(await errorMessage(response));
    const body = await response.json();
    const ids = Array.isArray(body.data) ? body.data.map((model) => model.id).filter((id) => typeof id === 'string') : [];
    setModelOptions(ids);
    setStatus(ids.length > 0 ? 'Ready.' : 'This key may use no model.', ids.length > 0 ? 'info' : 'error');
  } catch (error) {
    setModelOptions([]);
    setStatus(`Could not list the models: ${describeError(error)}`, 'error');
  }
}

function setModelOptions(ids) {
  const wanted = modelSelect.value || loadSettings().model;
  if (ids.length === 0) {
    modelSelect.replaceChildren(new Option('No models yet', ''));
    modelSelect.disabled = true;
    return;
  }
  modelSelect.replaceChildren(...ids.map((id) => new Option(id, id)));
  modelSelect.value = ids.includes(wanted) ? wanted : ids[0];
  modelSelect.disabled = false;
}

// ─── Rendering ───────────────────────────────────────────────────────────────

function setStatus(text, kind = 'info') {
  statusLine.textContent = text;
  statusLine.dataset.kind = kind;
}

function isNearBottom() {
  return transcript.scrollHeight - transcript.scrollTop - transcript.clientHeight < 80;
}

function scrollToBottom() {
  transcript.scrollTop = transcript.scrollHeight;
}

function button(label, className, onClick) {
  const element = document.createElement('button');
  element.type = 'button';
  element.className = className;
  element.textContent = label;
  element.addEventListener('click', onClick);
  return element;
}

function addUserMessage(prompt) {
  emptyState.hidden = true;
  const element = document.createElement('article');
  element.className = 'message user';
  const content = document.createElement('div');
  content.className = 'content';
  content.textContent = prompt;
  element.append(content);
  transcript.append(element);
  return element;
}

/** An answer bubble: its Markdown content, a line of figures, and its buttons. */
function addAnswer(turn) {
  const element = document.createElement('article');
  element.className = 'message assistant';
  const content = document.createElement('div');
  content.className = 'content markdown';
  const footer = document.createElement('div');
  footer.className = 'answer-footer';
  const stats = document.createElement('span');
  stats.className = 'stats';
  const actions = document.createElement('span');
  actions.className = 'answer-actions';
  const stop = button('Stop', 'stop-answer', () => inFlight?.abort());
  const copy = button('Copy', 'copy', () => copyText(turn.answer, copy));
  const regenerate = button('Regenerate', 'regenerate', () => regenerateLast());
  actions.append(stop, copy, regenerate);
  footer.append(stats, actions);
  element.append(content, footer);
  transcript.append(element);
  turn.view = { element, content, stats, stop, copy, regenerate, renderQueued: false };
}

/** Renders at most once per frame: a long answer is re-parsed as a whole, not once per token. */
function queueRender(turn) {
  if (turn.view.renderQueued) return;
  turn.view.renderQueued = true;
  requestAnimationFrame(() => {
    // The final render of a finished answer has already happened (and cancelled this one).
    if (!turn.view.renderQueued) return;
    turn.view.renderQueued = false;
    renderAnswer(turn);
  });
}

function renderAnswer(turn) {
  const follow = isNearBottom();
  turn.view.content.innerHTML = markdown.render(turn.answer);
  if (follow) scrollToBottom();
}

/** A Copy button on each code block of a finished answer (beside the block, so it stays put when the code scrolls). */
function addCodeCopyButtons(turn) {
  for (const block of turn.view.content.querySelectorAll('pre')) {
    const wrapper = document.createElement('div');
    wrapper.className = 'code-block';
    const copy = button('Copy code', 'copy-code', () => copyText(block.textContent ?? '', copy));
    block.replaceWith(wrapper);
    wrapper.append(copy, block);
  }
}

function updateAnswerButtons() {
  const last = turns.at(-1);
  for (const turn of turns) {
    const streaming = inFlight !== null && turn === last;
    turn.view.stop.hidden = !streaming;
    turn.view.copy.hidden = streaming || !turn.answer;
    turn.view.regenerate.hidden = streaming || turn !== last || inFlight !== null;
  }
}

async function copyText(text, trigger) {
  try {
    await navigator.clipboard.writeText(text);
    const label = trigger.textContent;
    trigger.textContent = 'Copied';
    trigger.disabled = true;
    setTimeout(() => {
      trigger.textContent = label;
      trigger.disabled = false;
    }, 1500);
  } catch (error) {
    setStatus(`Could not copy: ${describeError(error)}`, 'error');
  }
}

function formatStats({ completionTokens, exact, promptTokens, seconds, firstTokenMs, finishReason }) {
  const parts = [];
  parts.push(`${exact ? '' : '≈'}${completionTokens} token${completionTokens === 1 ? '' : 's'}`);
  // The rate between the first and the last token: the wait for the first one is shown on its own.
  if (seconds >= 0.05 && completionTokens > 1) parts.push(`${((completionTokens - 1) / seconds).toFixed(1)} tok/s`);
  if (firstTokenMs !== null) parts.push(`first token ${Math.round(firstTokenMs)} ms`);
  if (promptTokens !== null) parts.push(`prompt ${promptTokens} + completion ${completionTokens}`);
  if (finishReason) parts.push(finishReason);
  return parts.join(' · ');
}

// ─── Talking to the API ──────────────────────────────────────────────────────

/** The Mistral error body's message with the HTTP status, or the status alone when the body is something else. */
async function errorMessage(response) {
  const text = await response.text();
  try {
    const body = JSON.parse(text);
    if (typeof body.message === 'string') return `${response.status}: ${body.message}`;
    if (typeof body.error?.message === 'string') return `${response.status}: ${body.error.message}`;
  } catch {
    // not JSON: fall through
  }
  return `${response.status} ${response.statusText}`.trim();
}

function describeError(error) {
  if (error instanceof TypeError && /fetch/i.test(error.message)) return `could not reach the server (${error.message})`;
  return error instanceof Error ? error.message : String(error);
}

/** The messages of a request for the last turn: the system prompt, the answered turns, then the new prompt. */
function requestMessages() {
  const last = turns.at(-1);
  const history = turns.flatMap((turn) => {
    if (turn === last) return [{ role: 'user', content: turn.prompt }];
    return turn.answer
      ? [
          { role: 'user', content: turn.prompt },
          { role: 'assistant', content: turn.answer },
        ]
      : [];
  });
  const system = systemPromptInput.value.trim();
  return system ? [{ role: 'system', content: system }, ...history] : history;
}

/** What the settings ask for, or a message saying which setting is wrong. */
function samplingRequest() {
  const maxTokens = Number(maxTokensInput.value);
  if (!Number.isInteger(maxTokens) || maxTokens < 1) return { error: 'Max tokens must be a whole number of at least 1.' };
  return { max_tokens: maxTokens, temperature: Number(temperatureInput.value), top_p: Number(topPInput.value) };
}

function setStreaming(streaming) {
  sendButton.disabled = streaming;
  stopButton.disabled = !streaming;
  transcript.setAttribute('aria-busy', String(streaming));
  updateAnswerButtons();
}

/** Streams the answer of the last turn into its bubble. */
async function streamAnswer(turn) {
  const controller = new AbortController();
  inFlight = controller;
  turn.answer = '';
  turn.view.element.classList.remove('error');
  turn.view.element.classList.add('streaming');
  turn.view.content.replaceChildren();
  turn.view.stats.textContent = '';
  setStreaming(true);
  setStatus('Waiting for the first token…');

  const started = performance.now();
  let firstTokenAt = null;
  let lastTokenAt = null;
  let deltas = 0;
  let usage = null;
  let finishReason = null;
  let outcome;
  try {
    const sampling = samplingRequest();
    if (sampling.error) throw new Error(sampling.error);
    const response = await fetch('/v1/chat/completions', {
      method: 'POST',
      headers: { authorization: `Bearer ${currentKey()}`, 'content-type': 'application/json', accept: 'text/event-stream' },
      body: JSON.stringify({ model: modelSelect.value, messages: requestMessages(), stream: true, ...sampling }),
      signal: controller.signal,
    });
    if (!response.ok || !response.body) throw new Error(await errorMessage(response));
    setStatus('Streaming…');

    for await (const event of readSseEvents(response.body)) {
      // The same classification the edge's relay, failover and cache use (shared/sse.ts).
      const frame = classifySseEvent(event);
      if (frame.kind === 'done') break;
      if (frame.kind === 'error') throw new Error(frame.message);
      if (frame.kind === 'garbage') throw new Error(`unexpected stream data (${frame.reason})`);
      const chunk = frame.data;
      const choice = chunk.choices?.[0];
      const delta = choice?.delta?.content;
      if (typeof delta === 'string' && delta) {
        lastTokenAt = performance.now();
        firstTokenAt ??= lastTokenAt;
        deltas += 1;
        turn.answer += delta;
        queueRender(turn);
      }
      if (chunk.usage) usage = chunk.usage;
      if (choice?.finish_reason) finishReason = choice.finish_reason;
    }
    const tokens = usage?.completion_tokens ?? deltas;
    outcome = finishReason
      ? { text: `Done (${finishReason}, ${tokens} tokens).`, kind: 'info' }
      : { text: 'The stream ended early.', kind: 'error' };
  } catch (error) {
    if (controller.signal.aborted) {
      outcome = { text: 'Stopped.', kind: 'info' };
    } else {
      const message = describeError(error);
      turn.view.element.classList.add('error');
      outcome = { text: `Error: ${message}`, kind: 'error' };
      // A failure mid-stream keeps the partial answer on screen; one before any text shows the cause in the bubble.
      if (!turn.answer) {
        const failure = document.createElement('p');
        failure.className = 'error-message';
        failure.textContent = message;
        turn.view.content.replaceChildren(failure);
      }
    }
  } finally {
    inFlight = null;
    turn.view.renderQueued = false;
    const follow = isNearBottom();
    turn.view.element.classList.remove('streaming');
    if (turn.answer) {
      renderAnswer(turn);
      addCodeCopyButtons(turn);
    }
    if (firstTokenAt !== null) {
      turn.view.stats.textContent = formatStats({
        completionTokens: usage?.completion_tokens ?? deltas,
        exact: Boolean(usage),
        promptTokens: usage?.prompt_tokens ?? null,
        seconds: ((lastTokenAt ?? firstTokenAt) - firstTokenAt) / 1000,
        firstTokenMs: firstTokenAt - started,
        finishReason: finishReason ?? (controller.signal.aborted ? 'stopped' : null),
      });
    }
    setStreaming(false);
    setStatus(outcome?.text ?? 'Stopped.', outcome?.kind);
    // The figures and buttons under a followed answer stay in view.
    if (follow) scrollToBottom();
  }
}

function readyToSend() {
  if (!currentKey()) {
    setStatus('Paste an API key in Settings first (npm start prints a link that fills it in).', 'error');
    setSettingsOpen(true);
    apiKeyInput.focus();
    return false;
  }
  if (!modelSelect.value) {
    setStatus('No model to ask: check the API key (the model list comes from GET /v1/models).', 'error');
    return false;
  }
  return true;
}

function send(prompt) {
  if (!readyToSend()) return;
  const turn = { prompt, answer: '', view: null };
  turns.push(turn);
  addUserMessage(prompt);
  addAnswer(turn);
  scrollToBottom();
  void streamAnswer(turn);
}

function regenerateLast() {
  const last = turns.at(-1);
  if (!last || inFlight || !readyToSend()) return;
  void streamAnswer(last);
}

// ─── Wiring ──────────────────────────────────────────────────────────────────

takeKeyFromFragment();
// An earlier version of this page kept the key in localStorage; it now lives only as long as the tab.
localStorage.removeItem(KEY_STORAGE);
apiKeyInput.value = sessionStorage.getItem(KEY_STORAGE) ?? '';
restoreSettings();
void loadModels();
if (apiKeyInput.value) promptInput.focus();

// Opening another `#key=` link in this tab changes only the fragment: no reload, so read it here.
window.addEventListener('hashchange', () => {
  takeKeyFromFragment();
  apiKeyInput.value = sessionStorage.getItem(KEY_STORAGE) ?? '';
  void loadModels();
});

apiKeyInput.addEventListener('change', () => {
  const key = currentKey();
  if (key) sessionStorage.setItem(KEY_STORAGE, key);
  else sessionStorage.removeItem(KEY_STORAGE);
  void loadModels();
});
modelSelect.addEventListener('change', saveSettings);
systemPromptInput.addEventListener('input', saveSettings);
maxTokensInput.addEventListener('input', saveSettings);
presetSelect.addEventListener('change', () => {
  applyPreset(presetSelect.value);
  saveSettings();
});
for (const slider of [temperatureInput, topPInput]) {
  slider.addEventListener('input', () => {
    showSamplingValues();
    presetSelect.value = matchingPreset();
    saveSettings();
  });
}
settingsToggle.addEventListener('click', () => setSettingsOpen(!document.body.classList.contains('settings-open')));

composer.addEventListener('submit', (event) => {
  event.preventDefault();
  const prompt = promptInput.value.trim();
  if (!prompt || inFlight) return;
  promptInput.value = '';
  fitPromptHeight();
  send(prompt);
});
// The box grows with what is typed, up to the height the stylesheet allows.
function fitPromptHeight() {
  promptInput.style.height = 'auto';
  promptInput.style.height = `${promptInput.scrollHeight + 2}px`;
}
promptInput.addEventListener('input', fitPromptHeight);
promptInput.addEventListener('keydown', (event) => {
  if (event.key === 'Enter' && !event.shiftKey && !event.isComposing) {
    event.preventDefault();
    composer.requestSubmit();
  }
});
document.addEventListener('keydown', (event) => {
  if (event.key === 'Escape' && inFlight) {
    event.preventDefault();
    inFlight.abort();
  }
});
stopButton.addEventListener('click', () => inFlight?.abort());
newChatButton.addEventListener('click', () => {
  inFlight?.abort();
  turns = [];
  transcript.replaceChildren(emptyState);
  emptyState.hidden = false;
  setStatus('New chat.');
  promptInput.focus();
});
