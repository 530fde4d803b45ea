// The chat page: posts to the edge's own /v1/chat/completions with `stream: true` and renders the SSE deltas
// as they arrive. SSE parsing is the project's shared/sse.ts, bundled into /sse.js (see cli/commands/dev.ts).
import { classifySseEvent, readSseEvents } from '/sse.js';

const KEY_STORAGE = 'sirocco.apiKey';
const MODEL_STORAGE = 'sirocco.model';

const $ = (id) => document.getElementById(id);
const modelSelect = $('model');
const apiKeyInput = $('api-key');
const maxTokensInput = $('max-tokens');
const transcript = $('transcript');
const composer = $('composer');
const promptInput = $('prompt');
const sendButton = $('send');
const stopButton = $('stop');
const clearButton = $('clear');
const statusLine = $('status');

/** The conversation so far, in Mistral's message format. */
let messages = [];
/** Set while a reply streams; aborting it cancels the fetch, which the edge forwards to the sidecar. */
let inFlight = null;

apiKeyInput.value = localStorage.getItem(KEY_STORAGE) ?? '';
modelSelect.value = localStorage.getItem(MODEL_STORAGE) ?? modelSelect.value;
apiKeyInput.addEventListener('change', () => localStorage.setItem(KEY_STORAGE, apiKeyInput.value.trim()));
modelSelect.addEventListener('change', () => localStorage.setItem(MODEL_STORAGE, modelSelect.value));

function addMessage(role, text) {
  const element = document.createElement('div');
  element.className = `message ${role}`;
  element.textContent = text;
  transcript.append(element);
  element.scrollIntoView({ block: 'end' });
  return element;
}

function setStreaming(streaming) {
  sendButton.disabled = streaming;
  stopButton.disabled = !streaming;
}

/** The Mistral error envelope's message, or the HTTP status when the body is something else. */
async function errorMessage(response) {
  const text = await response.text();
  try {
    const body = JSON.parse(text);
    if (typeof body.message === 'string') return `${response.status}: ${body.message}`;
  } catch {
    // not JSON: fall through
  }
  return `${response.status} ${response.statusText}`;
}

async function send(prompt) {
  const apiKey = apiKeyInput.value.trim();
  if (!apiKey) {
    statusLine.textContent = 'Enter an API key first (npm start prints one).';
    apiKeyInput.focus();
    return;
  }
  localStorage.setItem(KEY_STORAGE, apiKey);
  messages.push({ role: 'user', content: prompt });
  addMessage('user', prompt);
  const reply = addMessage('assistant', '');
  reply.classList.add('streaming');

  const controller = new AbortController();
  inFlight = controller;
  setStreaming(true);
  statusLine.textContent = 'Waiting for the first token…';
  let text = '';
  let outcome = 'stopped';
  try {
    const response = await fetch('/v1/chat/completions', {
      method: 'POST',
      headers: { authorization: `Bearer ${apiKey}`, 'content-type': 'application/json', accept: 'text/event-stream' },
      body: JSON.stringify({ model: modelSelect.value, messages, stream: true, max_tokens: Number(maxTokensInput.value) || 256 }),
      signal: controller.signal,
    });
    if (!response.ok || !response.body) throw new Error(await errorMessage(response));
    statusLine.textContent = 'Streaming…';

    for await (const event of readSseEvents(response.body)) {
      // The same classification the edge's relay, failover and cache use (shared/sse.ts).
      const frame = classifySseEvent(event);
      if (frame.kind === 'done') break;
      if (frame.kind === 'error') throw new Error(frame.message);
      if (frame.kind === 'garbage') throw new Error(`unexpected stream data (${frame.reason})`);
      const chunk = frame.data;
      const choice = chunk.choices?.[0];
      if (choice?.delta?.content) {
        text += choice.delta.content;
        reply.textContent = text;
        reply.scrollIntoView({ block: 'end' });
      }
      if (choice?.finish_reason) {
        const tokens = chunk.usage ? `, ${chunk.usage.completion_tokens} tokens` : '';
        outcome = `Done (${choice.finish_reason}${tokens}).`;
      }
    }
    statusLine.textContent = outcome === 'stopped' ? 'The stream ended early.' : outcome;
  } catch (error) {
    if (controller.signal.aborted) {
      statusLine.textContent = 'Stopped.';
    } else {
      const message = error instanceof Error ? error.message : String(error);
      reply.classList.add('error');
      // A failure mid-stream keeps the partial answer on screen and reports the cause below.
      if (!text) reply.textContent = message;
      statusLine.textContent = `Error: ${message}`;
    }
  } finally {
    reply.classList.remove('streaming');
    // Keep what was shown as the assistant turn so a follow-up question has the context the user saw.
    if (text) messages.push({ role: 'assistant', content: text });
    else messages.pop();
    inFlight = null;
    setStreaming(false);
  }
}

composer.addEventListener('submit', (event) => {
  event.preventDefault();
  const prompt = promptInput.value.trim();
  if (!prompt || inFlight) return;
  promptInput.value = '';
  void send(prompt);
});
promptInput.addEventListener('keydown', (event) => {
  if (event.key === 'Enter' && !event.shiftKey) {
    event.preventDefault();
    composer.requestSubmit();
  }
});
stopButton.addEventListener('click', () => inFlight?.abort());
clearButton.addEventListener('click', () => {
  inFlight?.abort();
  messages = [];
  transcript.replaceChildren();
  statusLine.textContent = '';
});
