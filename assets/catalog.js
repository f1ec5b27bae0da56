// sluice web page: the channel list (search, group filter, logos that
// degrade to initials, what is on now and next when a guide is loaded; how
// it is shown lives in channelview.js) and
// the catalog actions (add, edit, delete, M3U import, URL validation), each
// showing the server's own error inline.

import { $, el, state, setMsg, readError, authHeaders, adminFetch } from './util.js';
import { startPreview, stopPreview, playingStreamId } from './player.js';
import { NO_GROUP, filterStreams, describe, showChannels, snapshotImage, prepareSearch } from './channelview.js';

export async function loadProfiles() {
  const sel = $('quality');
  try {
    const resp = await fetch('/api/profiles');
    if (!resp.ok) throw new Error((await readError(resp)).message);
    const doc = await resp.json();
    state.profiles = Array.isArray(doc.profiles) ? doc.profiles : [];
    state.defaultProfile = doc.default || (state.profiles[0] && state.profiles[0].name) || '';
  } catch (e) {
    setMsg($('player-msg'), `Could not load the quality profiles: ${e.message}`, 'error');
  }
  sel.replaceChildren(...state.profiles.map((p) => el('option', {
    value: p.name,
    textContent: `${p.name} (${p.width}×${p.height}, ${p.videoBitrate} kbit/s)`,
    selected: p.name === state.defaultProfile,
  })));
}

export async function loadStreams() {
  const msg = $('channels-msg');
  try {
    const resp = await fetch('/api/streams', { headers: authHeaders() });
    if (!resp.ok) throw new Error((await readError(resp)).message);
    const list = await resp.json();
    state.streams = Array.isArray(list) ? list : [];
    prepareSearch(state.streams);
    setMsg(msg, '');
  } catch (e) {
    setMsg(msg, `Could not load the catalog: ${e.message}`, 'error');
  }
  renderGroups();
  renderChannels();
}

/** What is on now and next per stream id, from /api/epg/now. */
const guide = new Map();

/** Loads now/next from the guide; channels without guide data show none. */
export async function loadGuide() {
  try {
    const resp = await fetch('/api/epg/now');
    if (!resp.ok) return;
    const list = await resp.json();
    guide.clear();
    for (const item of Array.isArray(list) ? list : []) {
      if (item && typeof item.streamId === 'string') guide.set(item.streamId, item);
    }
  } catch (_) {
    return; // The guide is optional: the list stays as it is.
  }
  renderChannels();
}

function clock(iso) {
  const d = new Date(iso);
  return Number.isNaN(d.getTime()) ? '' : d.toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' });
}

/** "Now: Title (until 21:00)" and "Next 21:00: Title" lines, or null. */
function nowNextFor(s) {
  const item = guide.get(s.id);
  if (!item || (!item.now && !item.next)) return null;
  const lines = [];
  const line = (className, text) => el('span', { className, textContent: text, title: text });
  if (item.now && item.now.title) {
    lines.push(line('epg-now', `Now: ${item.now.title} (until ${clock(item.now.stop)})`));
  }
  if (item.next && item.next.title) {
    lines.push(line('epg-next', `Next ${clock(item.next.start)}: ${item.next.title}`));
  }
  return lines.length ? el('span', { className: 'ch-epg' }, ...lines) : null;
}

function renderGroups() {
  const sel = $('group');
  const keep = sel.value;
  const groups = [...new Set(state.streams.map((s) => s.group).filter((g) => typeof g === 'string' && g))].sort();
  const ungrouped = state.streams.filter((s) => typeof s.group !== 'string' || !s.group).length;
  sel.replaceChildren(el('option', { value: '', textContent: 'All groups' }),
    ...(ungrouped ? [el('option', { value: NO_GROUP, textContent: `No group (${ungrouped})` })] : []),
    ...groups.map((g) => el('option', { value: g, textContent: g })));
  sel.value = groups.includes(keep) || (keep === NO_GROUP && ungrouped) ? keep : '';
}

/** A logo that turns into the channel's initials if the image cannot load. */
function logoFor(s) {
  const fallback = () => el('span', { className: 'logo', 'aria-hidden': 'true', textContent: initials(s.name || s.id) });
  let url = null;
  try { url = s.logo ? new URL(s.logo, location.href) : null; } catch (_) { url = null; }
  if (!url || !['http:', 'https:', 'data:'].includes(url.protocol)) return fallback();
  const img = el('img', { className: 'logo', alt: '', loading: 'lazy', decoding: 'async', referrerPolicy: 'no-referrer' });
  img.addEventListener('error', () => img.replaceWith(fallback()), { once: true });
  img.src = url.href;
  return img;
}

function initials(name) {
  const words = String(name).trim().split(/\s+/).filter(Boolean);
  return (words.slice(0, 2).map((w) => [...w][0] || '').join('') || '?').toUpperCase();
}

export function renderChannels() {
  const query = $('search').value;
  const group = $('group').value;
  const shown = filterStreams(state.streams, query, group);
  showChannels(shown, channelRow, channelCard, `${group}\n${query.trim()}`);
  if (!state.streams.length) setMsg($('channels-msg'), 'The catalog is empty: add a stream or import a playlist.');
  else if (!shown.length) setMsg($('channels-msg'), 'No channel matches the filter.');
  else setMsg($('channels-msg'), `${shown.length} of ${state.streams.length} channels`);
}

/** One row of the list view: the channel (click to preview), edit, delete. */
function channelRow(s) {
  const play = el('button', {
    type: 'button',
    className: 'channel' + (s.enabled === false ? ' disabled' : ''),
    dataset: { id: s.id },
    title: s.enabled === false ? 'Disabled' : `Preview ${s.name || s.id}`,
    'aria-current': state.selected === s.id ? 'true' : 'false',
  }, logoFor(s), el('span', { className: 'ch-text' },
    el('span', { className: 'ch-name', textContent: s.name || s.id }),
    el('span', { className: 'ch-sub', textContent: describe(s) }),
    nowNextFor(s)));
  play.addEventListener('click', () => startPreview(s.id));
  const edit = el('button', { type: 'button', className: 'small', textContent: 'Edit', 'aria-label': `Edit ${s.name || s.id}` });
  edit.addEventListener('click', () => openStreamDialog(s));
  const del = el('button', { type: 'button', className: 'small danger', textContent: 'Delete', 'aria-label': `Delete ${s.name || s.id}` });
  del.addEventListener('click', () => deleteStream(s));
  return el('li', null, play, el('span', { className: 'ch-actions' }, edit, del));
}

/** One card of the grid view: the channel's snapshot, name and sub-line. */
function channelCard(s) {
  const play = el('button', {
    type: 'button',
    className: 'card' + (s.enabled === false ? ' disabled' : ''),
    dataset: { id: s.id, name: s.name || s.id },
    title: s.enabled === false ? 'Disabled' : `Preview ${s.name || s.id}`,
  }, el('span', { className: 'snap-frame' }, s.enabled === false ? null : snapshotImage(s)),
  el('span', { className: 'ch-name', textContent: s.name || s.id }),
  el('span', { className: 'ch-sub', textContent: describe(s) }));
  play.addEventListener('click', () => startPreview(s.id));
  return el('li', null, play);
}

let editing = null; // the stream being edited, or null when adding

const FIELDS = ['id', 'name', 'url', 'backupUrls', 'group', 'logo', 'tvgId', 'headers', 'enabled'];

function formValues() {
  const lines = (v) => v.split(/\r?\n/).map((l) => l.trim()).filter(Boolean);
  const headers = {};
  for (const line of lines($('f-headers').value)) {
    const i = line.indexOf(':');
    if (i > 0) headers[line.slice(0, i).trim()] = line.slice(i + 1).trim();
  }
  return {
    id: $('f-id').value.trim(),
    name: $('f-name').value.trim(),
    url: $('f-url').value.trim(),
    backupUrls: lines($('f-backups').value),
    group: $('f-group').value.trim(),
    logo: $('f-logo').value.trim(),
    tvgId: $('f-tvg').value.trim(),
    headers,
    enabled: $('f-enabled').checked,
  };
}

export function openStreamDialog(stream) {
  $('stream-dialog-h').textContent = stream ? `Edit ${stream.name || stream.id}` : 'Add stream';
  $('f-id').value = stream ? stream.id : '';
  $('f-id').disabled = Boolean(stream);
  $('f-name').value = stream ? stream.name || '' : '';
  $('f-url').value = stream ? stream.url || '' : '';
  $('f-backups').value = stream && Array.isArray(stream.backupUrls) ? stream.backupUrls.join('\n') : '';
  $('f-group').value = stream ? stream.group || '' : '';
  $('f-logo').value = stream ? stream.logo || '' : '';
  $('f-tvg').value = stream ? stream.tvgId || '' : '';
  $('f-headers').value = stream && stream.headers ? Object.entries(stream.headers).map(([k, v]) => `${k}: ${v}`).join('\n') : '';
  $('f-enabled').checked = stream ? stream.enabled !== false : true;
  editing = stream ? { stream, initial: formValues() } : null;
  setMsg($('stream-msg'), '');
  $('stream-dialog').showModal();
  (stream ? $('f-name') : $('f-id')).focus();
}

export async function saveStream(e) {
  e.preventDefault();
  const values = formValues();
  let body;
  let resp;
  try {
    if (editing) {
      // Send only what changed: a redacted URL or header shown to a
      // non-admin is never written back over the real one.
      body = {};
      for (const k of FIELDS) {
        if (k !== 'id' && JSON.stringify(values[k]) !== JSON.stringify(editing.initial[k])) body[k] = values[k];
      }
      resp = await adminFetch(`/api/streams/${encodeURIComponent(editing.stream.id)}`, {
        method: 'PUT', headers: { 'Content-Type': 'application/json' }, body: JSON.stringify(body),
      });
    } else {
      body = {};
      for (const k of FIELDS) {
        const v = values[k];
        if (v === '' || (Array.isArray(v) && !v.length) || (k === 'headers' && !Object.keys(v).length)) continue;
        body[k] = v;
      }
      resp = await adminFetch('/api/streams', {
        method: 'POST', headers: { 'Content-Type': 'application/json' }, body: JSON.stringify(body),
      });
    }
  } catch (err) {
    setMsg($('stream-msg'), `Request failed: ${err.message}`, 'error');
    return;
  }
  if (!resp.ok) {
    setMsg($('stream-msg'), (await readError(resp)).message, 'error');
    return;
  }
  $('stream-dialog').close();
  await loadStreams();
}

async function deleteStream(s) {
  if (!window.confirm(`Delete "${s.name || s.id}" from the catalog?`)) return;
  try {
    const resp = await adminFetch(`/api/streams/${encodeURIComponent(s.id)}`, { method: 'DELETE' });
    if (!resp.ok) {
      setMsg($('channels-msg'), `Could not delete ${s.id}: ${(await readError(resp)).message}`, 'error');
      return;
    }
  } catch (e) {
    setMsg($('channels-msg'), `Could not delete ${s.id}: ${e.message}`, 'error');
    return;
  }
  if (playingStreamId() === s.id) stopPreview('The stream was deleted.');
  await loadStreams();
}

/** 404/405 from a route this server does not have yet. */
const missingRoute = (err) => err.code === 'not_found' || err.code === 'method_not_allowed';

export async function importPlaylist(e) {
  e.preventDefault();
  const msg = $('import-msg');
  const file = $('import-file').files[0];
  const url = $('import-url').value.trim();
  $('import-errors').replaceChildren();
  if (!file && !url) { setMsg(msg, 'Choose a playlist file or enter its URL.', 'error'); return; }
  setMsg(msg, 'Importing…');
  let resp;
  try {
    resp = file
      ? await adminFetch('/api/streams/import', { method: 'POST', headers: { 'Content-Type': 'audio/x-mpegurl' }, body: file })
      : await adminFetch('/api/streams/import', { method: 'POST', headers: { 'Content-Type': 'application/json' }, body: JSON.stringify({ url }) });
  } catch (err) {
    setMsg(msg, `Import failed: ${err.message}`, 'error');
    return;
  }
  if (!resp.ok) {
    const err = await readError(resp);
    setMsg(msg, missingRoute(err) ? 'This server does not offer playlist import.' : err.message, 'error');
    return;
  }
  const r = await resp.json();
  const errors = Array.isArray(r.errors) ? r.errors : [];
  setMsg(msg, `Imported ${r.imported ?? 0}, updated ${r.updated ?? 0}, unchanged ${r.unchanged ?? 0}, added as backup URLs ${r.mergedAsBackup ?? 0}, skipped ${r.skipped ?? 0}` + (errors.length ? `; ${errors.length} ${errors.length === 1 ? 'entry' : 'entries'} refused:` : '.'), errors.length ? 'warn' : '');
  $('import-errors').replaceChildren(...errors.slice(0, 50).map((x) => el('li', {
    textContent: typeof x === 'string' ? x : [x.line ? `line ${x.line}` : '', x.name, x.message || x.error].filter(Boolean).join(': '),
  })));
  await loadStreams();
}

export async function validateUrl(e) {
  e.preventDefault();
  const msg = $('validate-msg');
  const out = $('validate-result');
  out.replaceChildren();
  setMsg(msg, 'Probing…');
  let resp;
  try {
    resp = await adminFetch('/api/streams/validate', {
      method: 'POST', headers: { 'Content-Type': 'application/json' }, body: JSON.stringify({ url: $('validate-url').value.trim() }),
    });
  } catch (err) {
    setMsg(msg, `Validation failed: ${err.message}`, 'error');
    return;
  }
  if (!resp.ok) {
    const err = await readError(resp);
    setMsg(msg, missingRoute(err) ? 'This server does not offer URL validation.' : err.message, 'error');
    return;
  }
  const r = await resp.json();
  setMsg(msg, r.valid ? 'The source can be opened.' : `Not playable: ${r.error || 'unknown reason'}`, r.valid ? '' : 'error');
  const v = r.video || null;
  const a = r.audio || null;
  const pairs = [
    ['Protocol', r.protocol], ['Live', r.live === undefined ? null : (r.live ? 'yes' : 'no')], ['Container', r.container],
    ['Video', v ? `${v.codec} ${v.width}×${v.height}${Number.isFinite(v.framerate) ? ` @ ${Math.round(v.framerate * 100) / 100} fps` : ''}${v.interlaced ? ', interlaced' : ''}` : 'none'],
    ['Audio', a ? `${a.codec}, ${a.channels} ch, ${a.sampleRate} Hz` : 'none'],
  ];
  out.replaceChildren(...pairs.filter(([, val]) => val !== null && val !== undefined)
    .flatMap(([k, val]) => [el('dt', { textContent: k }), el('dd', { textContent: String(val) })]));
}
