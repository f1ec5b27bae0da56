// sluice web page: the transcoding dashboard, fed by the Server-Sent Events
// route (stats once a second, session events as they happen). EventSource
// reconnects by itself; the badge shows the connection state. Session rows
// are updated in place so keyboard focus on a Stop button survives updates.

import { $, el, fmtBytes, fmtDuration, setMsg, readError, adminFetch } from './util.js';

const rows = new Map(); // sessionId -> <tr>
let events = null;

function setConn(stateName, text) {
  const c = $('conn');
  c.dataset.state = stateName;
  c.textContent = `Dashboard: ${text}`;
}

export function connectEvents() {
  if (events) events.close();
  setConn('connecting', 'connecting…');
  const es = new EventSource('/api/streams/transcoding/events');
  events = es;
  es.addEventListener('open', () => { setConn('live', 'live'); refreshStatus(); });
  es.addEventListener('error', () => {
    if (es.readyState === EventSource.CLOSED) {
      // The browser gave up (e.g. an error status): try again ourselves.
      setConn('closed', 'disconnected, retrying in 5 s');
      setTimeout(() => { if (events === es) connectEvents(); }, 5000);
    } else {
      setConn('reconnecting', 'reconnecting…');
    }
  });
  const parse = (e) => { try { return JSON.parse(e.data); } catch (_) { return null; } };
  es.addEventListener('stats', (e) => { const doc = parse(e); if (doc) renderStatus(doc); });
  es.addEventListener('session_started', () => refreshStatus());
  es.addEventListener('session_queued', () => refreshStatus());
  es.addEventListener('session_ended', (e) => {
    const ev = parse(e);
    if (ev && ev.sessionId) dropRow(ev.sessionId);
  });
}

async function refreshStatus() {
  try {
    const resp = await fetch('/api/streams/transcoding/status', { cache: 'no-store' });
    if (resp.ok) renderStatus(await resp.json());
  } catch (_) { /* the event stream shows the connection state */ }
}

function setBar(id, percent, level) {
  const bar = $(id);
  const p = Math.max(0, Math.min(100, percent || 0));
  bar.querySelector('.fill').style.width = `${p}%`;
  bar.setAttribute('aria-valuenow', String(Math.round(p)));
  bar.dataset.level = level || 'ok';
}

function renderStatus(doc) {
  const max = doc.maxConcurrent || 0;
  const util = Number(doc.utilizationPercentage) || 0;
  setBar('pool-bar', util, util >= 100 ? 'critical' : util >= 67 ? 'warning' : 'ok');
  $('pool-text').textContent = `${doc.activeSessions}/${max} transcodes (${util.toFixed(0)}%) · ${doc.remuxSessions || 0} remux`;
  const qmax = doc.maxQueued || 0;
  const queued = doc.queuedSessions || 0;
  setBar('queue-bar', qmax ? (100 * queued) / qmax : 0, queued >= qmax && qmax ? 'critical' : queued ? 'warning' : 'ok');
  $('queue-text').textContent = `${queued}/${qmax} waiting`;
  const mem = doc.memory || {};
  const scale = Math.max(mem.criticalBytes * 1.25 || 0, mem.rssBytes || 0, 1);
  setBar('mem-bar', (100 * (mem.rssBytes || 0)) / scale, mem.status === 'ok' ? 'ok' : mem.status);
  $('mem-warn').style.left = `${(100 * (mem.warningBytes || 0)) / scale}%`;
  $('mem-crit').style.left = `${(100 * (mem.criticalBytes || 0)) / scale}%`;
  $('mem-text').textContent = `${fmtBytes(mem.rssBytes)} (${mem.status || '?'}) · warning ${fmtBytes(mem.warningBytes)} · critical ${fmtBytes(mem.criticalBytes)}`;

  const seen = new Set();
  for (const s of Array.isArray(doc.sessions) ? doc.sessions : []) {
    seen.add(s.sessionId);
    let tr = rows.get(s.sessionId);
    if (!tr) {
      tr = newRow(s);
      rows.set(s.sessionId, tr);
      $('sessions-body').append(tr);
    }
    fillRow(tr, s);
  }
  for (const id of [...rows.keys()]) if (!seen.has(id)) dropRow(id);
  $('sessions-empty').hidden = rows.size > 0;

  const queue = Array.isArray(doc.queue) ? doc.queue : [];
  $('queue-list').replaceChildren(...queue.map((q) => el('li', {
    textContent: `${q.streamId} (${q.quality}) from ${q.clientIP}, waiting ${(q.waitingMs / 1000).toFixed(1)} s`,
  })));
}

const COLUMNS = [
  ['stream', 'Stream'], ['quality', 'Profile'], ['format', 'Format'], ['mode', 'Mode'], ['client', 'Client'],
  ['duration', 'Duration'], ['fps', 'FPS'], ['speed', 'Speed'], ['bytes', 'Bytes'],
];

function newRow(s) {
  const tr = el('tr', { dataset: { session: s.sessionId } });
  for (const [key, label] of COLUMNS) {
    tr.append(el('td', { dataset: { key, label }, className: ['duration', 'fps', 'speed', 'bytes'].includes(key) ? 'num' : '' }));
  }
  const stop = el('button', { type: 'button', className: 'small danger', textContent: 'Stop' });
  stop.addEventListener('click', () => stopSession(s.sessionId, stop));
  tr.append(el('td', { dataset: { label: '' } }, stop));
  return tr;
}

function fillRow(tr, s) {
  const values = {
    stream: s.streamName || s.streamId,
    quality: s.quality,
    format: s.format,
    mode: s.state && s.state !== 'running' ? `${s.mode} (${s.state})` : s.mode,
    client: s.clientIP,
    duration: fmtDuration(s.duration),
    fps: Number.isFinite(s.fps) ? s.fps.toFixed(1) : '–',
    speed: Number.isFinite(s.speed) ? `${s.speed.toFixed(2)}×` : '–',
    bytes: fmtBytes(s.bytesSent),
  };
  for (const td of tr.querySelectorAll('td[data-key]')) {
    const v = String(values[td.dataset.key] ?? '–');
    if (td.textContent !== v) td.textContent = v;
  }
  const btn = tr.querySelector('button');
  btn.setAttribute('aria-label', `Stop ${s.streamName || s.streamId} (${s.quality}, ${s.clientIP})`);
}

function dropRow(id) {
  const tr = rows.get(id);
  if (!tr) return;
  rows.delete(id);
  if (tr.contains(document.activeElement)) $('dash-h').focus?.();
  tr.remove();
  $('sessions-empty').hidden = rows.size > 0;
}

async function stopSession(id, button) {
  button.disabled = true;
  try {
    const resp = await adminFetch(`/api/streams/transcoding/sessions/${encodeURIComponent(id)}`, { method: 'DELETE' });
    if (resp.ok || resp.status === 404) {
      dropRow(id);
      setMsg($('dash-msg'), resp.ok ? 'Session stopped.' : 'The session had already ended.');
    } else {
      setMsg($('dash-msg'), `Could not stop the session: ${(await readError(resp)).message}`, 'error');
      button.disabled = false;
    }
  } catch (e) {
    setMsg($('dash-msg'), `Could not stop the session: ${e.message}`, 'error');
    button.disabled = false;
  }
}

/** Closes the event stream (the page is going away). */
export function closeEvents() {
  if (events) events.close();
  events = null;
}
