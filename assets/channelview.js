// sluice web page: how the channel list is shown. The list view renders
// only the rows in sight (a virtual list: a catalog of 10,000 channels
// stays fast); the grid view shows each channel's snapshot, loaded when
// its card scrolls into view and refreshed every minute while it stays
// there. Also the search that ignores accents, the "no group" filter, and
// what tells channels of the same name apart (group, source host, and the
// picture size once a snapshot told it).

import { $, el, state } from './util.js';

/** The group filter's value for channels without a group. */
export const NO_GROUP = '\u0001none';
/** Height of one list row in pixels (CSS reads it from --row-h). */
const ROW_H = 80;
/** Rows rendered above and below the visible ones. */
const OVERSCAN = 8;
/** Grid cards added per page as the grid scrolls. */
const GRID_PAGE = 120;
/** Snapshot width asked for the grid. */
const SNAPSHOT_WIDTH = 320;
/** A visible snapshot is taken again after this long. */
const REFRESH_MS = 60_000;
/** Snapshot requests the page has open at once. */
const MAX_LOADS = 4;

const view = {
  mode: 'list',
  shown: [],
  rowFor: null,
  cardFor: null,
  gridCount: 0,
  filter: null,
};

/** Picture sizes the snapshots told, by stream id ("1920×1080"). */
const sizes = new Map();

/** Lower case without accents: "Español" and "espanol" compare equal. */
export function fold(text) {
  const t = String(text);
  // Plain ASCII (most names) has no accents to take off.
  if (!/[^\x00-\x7f]/.test(t)) return t.toLowerCase();
  return t.normalize('NFD').replace(/[\u0300-\u036f]/g, '').toLowerCase();
}

/** Folds every stream's searchable text ahead of the first search, when idle. */
export function prepareSearch(streams) {
  const idle = window.requestIdleCallback || ((f) => setTimeout(() => f({ timeRemaining: () => 8 }), 0));
  let i = 0;
  const step = (deadline) => {
    while (i < streams.length && deadline.timeRemaining() > 1) haystack(streams[i++]);
    if (i < streams.length) idle(step);
  };
  idle(step);
}

const folded = new WeakMap();

/** The searchable text of a stream, folded once. */
function haystack(s) {
  let h = folded.get(s);
  if (h === undefined) {
    h = fold([s.name, s.id, s.group, s.tvgId, sourceHost(s)].filter((v) => typeof v === 'string').join('\n'));
    folded.set(s, h);
  }
  return h;
}

/** Streams matching the search text and the group filter. */
export function filterStreams(streams, query, group) {
  const q = fold(query.trim());
  return streams.filter((s) => {
    const g = typeof s.group === 'string' && s.group ? s.group : '';
    if (group === NO_GROUP ? g !== '' : group && g !== group) return false;
    return !q || haystack(s).includes(q);
  });
}

/** Where a stream's source lives: its host, or the kind of source. */
export function sourceHost(s) {
  try {
    const u = new URL(s.url);
    if (u.protocol === 'test:') return 'test pattern';
    if (u.protocol === 'file:') return 'local file';
    return u.host || u.protocol.replace(':', '');
  } catch (_) {
    return '';
  }
}

/** The sub-line of a channel: id, group, source host, picture size. */
export function describe(s) {
  return [s.id, s.group, sourceHost(s), sizes.get(s.id)].filter(Boolean).join(' · ');
}

/** Shows `shown` in the current view; `rowFor` / `cardFor` build one item.
 *  A new `filter` (the search and group that chose them) starts at the top. */
export function showChannels(shown, rowFor, cardFor, filter) {
  if (filter !== view.filter) $('channel-list').scrollTop = 0;
  // The very same channels (only the guide was read again) keep their
  // grid cards and pictures.
  const same = view.mode === 'grid' && filter === view.filter && view.cardFor
    && shown.length === view.shown.length && shown.every((s, i) => s === view.shown[i]);
  Object.assign(view, { shown, rowFor, cardFor, filter });
  if (same) return;
  if (view.mode === 'grid') renderGrid();
  else renderList();
}

/** Switches between the list and the grid. */
export function setView(mode) {
  view.mode = mode === 'grid' ? 'grid' : 'list';
  $('channel-list').hidden = view.mode !== 'list';
  $('channel-grid').hidden = view.mode !== 'grid';
  for (const b of document.querySelectorAll('[data-view]')) {
    b.setAttribute('aria-pressed', b.dataset.view === view.mode ? 'true' : 'false');
  }
  try { sessionStorage.setItem('sluice.view', view.mode); } catch (_) { /* storage refused */ }
  if (view.mode === 'grid') renderGrid();
  else { stopSnapshots(); renderList(); }
}

/** The view chosen earlier in this tab. */
export function savedView() {
  try { return sessionStorage.getItem('sluice.view') === 'grid' ? 'grid' : 'list'; } catch (_) { return 'list'; }
}

// ---- list: only the rows in sight ----

let listScheduled = false;

function renderList() {
  if (!view.rowFor) return;
  const ul = $('channel-list');
  ul.style.setProperty('--row-h', `${ROW_H}px`);
  const n = view.shown.length;
  // No more of the list than the window can show is ever in sight.
  const height = Math.min(ul.clientHeight || Infinity, window.innerHeight);
  // A list that got shorter may still be scrolled past its end.
  const top = Math.min(ul.scrollTop, Math.max(0, n * ROW_H - height));
  const first = Math.max(0, Math.floor(top / ROW_H) - OVERSCAN);
  const last = Math.min(n, Math.ceil((top + height) / ROW_H) + OVERSCAN);
  // Spacers stand for the rows out of sight, so the scrollbar is the whole list's.
  const spacer = (rows) => {
    const li = el('li', { className: 'spacer', 'aria-hidden': 'true' });
    li.style.height = `${rows * ROW_H}px`;
    return li;
  };
  const rows = [spacer(first)];
  for (let i = first; i < last; i++) rows.push(view.rowFor(view.shown[i]));
  rows.push(spacer(n - last));
  ul.replaceChildren(...rows);
  ul.dataset.count = String(n);
}

/** Wires scrolling and resizing of the list and the grid. */
export function initChannelViews() {
  const ul = $('channel-list');
  const onScroll = () => {
    if (listScheduled || view.mode !== 'list') return;
    listScheduled = true;
    requestAnimationFrame(() => { listScheduled = false; renderList(); });
  };
  ul.addEventListener('scroll', onScroll, { passive: true });
  window.addEventListener('resize', onScroll, { passive: true });
  const grid = $('channel-grid');
  grid.addEventListener('scroll', () => {
    if (grid.scrollTop + grid.clientHeight >= grid.scrollHeight - 400) moreCards();
  }, { passive: true });
  document.addEventListener('visibilitychange', () => {
    if (!document.hidden) refreshVisible();
  });
  setInterval(refreshVisible, 5_000);
}

// ---- grid: snapshots, lazily ----

let observer = null;
/** Snapshot images in sight. */
const visible = new Set();
const queue = [];
let loading = 0;

function renderGrid() {
  if (!view.cardFor) return;
  stopSnapshots();
  view.gridCount = 0;
  $('channel-grid').replaceChildren();
  $('channel-grid').scrollTop = 0;
  moreCards();
}

function moreCards() {
  if (view.mode !== 'grid' || view.gridCount >= view.shown.length) return;
  const grid = $('channel-grid');
  const upto = Math.min(view.shown.length, view.gridCount + GRID_PAGE);
  const cards = [];
  for (let i = view.gridCount; i < upto; i++) {
    const card = view.cardFor(view.shown[i]);
    const img = card.querySelector('img.snap');
    if (img) watch(img);
    cards.push(card);
  }
  view.gridCount = upto;
  grid.append(...cards);
}

function watch(img) {
  if (!observer) {
    observer = new IntersectionObserver((entries) => {
      for (const e of entries) {
        if (e.isIntersecting) {
          visible.add(e.target);
          if (!e.target.dataset.loaded) load(e.target);
        } else {
          visible.delete(e.target);
        }
      }
    }, { root: $('channel-grid'), rootMargin: '150px 0px' });
  }
  observer.observe(img);
}

function stopSnapshots() {
  if (observer) { observer.disconnect(); observer = null; }
  visible.clear();
  queue.length = 0;
  for (const img of document.querySelectorAll('#channel-grid img.snap')) {
    if (img.src.startsWith('blob:')) URL.revokeObjectURL(img.src);
  }
}

/** Takes again the snapshots in sight that are a minute old. */
function refreshVisible() {
  if (document.hidden || view.mode !== 'grid') return;
  const now = Date.now();
  for (const img of visible) {
    const at = Number(img.dataset.loaded || 0);
    if (at && now - at >= REFRESH_MS) load(img);
  }
}

function load(img) {
  if (img.dataset.queued) return;
  img.dataset.queued = '1';
  queue.push(img);
  pump();
}

function pump() {
  while (loading < MAX_LOADS && queue.length) {
    const img = queue.shift();
    if (!img.isConnected) { delete img.dataset.queued; continue; }
    loading++;
    fetchSnapshot(img).finally(() => { loading--; delete img.dataset.queued; pump(); });
  }
}

/** Loads one snapshot; the browser revalidates it with its ETag. */
async function fetchSnapshot(img) {
  const id = img.dataset.id;
  const card = img.closest('.card');
  try {
    const resp = await fetch(`/streams/snapshot/${encodeURIComponent(id)}.jpg?width=${SNAPSHOT_WIDTH}`, { cache: 'no-cache' });
    img.dataset.loaded = String(Date.now());
    if (!resp.ok) {
      let why = 'No picture';
      try { const body = await resp.json(); if (body.error === 'no_video') why = 'No video (audio only)'; } catch (_) { /* not JSON */ }
      if (card) card.dataset.snapshot = 'failed';
      img.alt = why;
      img.title = why;
      return;
    }
    const size = resp.headers.get('X-Sluice-Source-Size');
    if (size && /^\d+x\d+$/.test(size)) {
      sizes.set(id, size.replace('x', '×'));
      const sub = card && card.querySelector('.ch-sub');
      const s = state.streams.find((x) => x.id === id);
      if (sub && s) sub.textContent = describe(s);
    }
    const url = URL.createObjectURL(await resp.blob());
    const old = img.src;
    img.addEventListener('load', () => { if (old.startsWith('blob:')) URL.revokeObjectURL(old); }, { once: true });
    img.src = url;
    img.alt = `Snapshot of ${card ? card.dataset.name : id}`;
    img.title = '';
    if (card) card.dataset.snapshot = 'ok';
  } catch (_) {
    img.dataset.loaded = String(Date.now());
    if (card) card.dataset.snapshot = 'failed';
  }
}

/** A grid card's snapshot image, loaded when it scrolls into view. */
export function snapshotImage(s) {
  return el('img', { className: 'snap', alt: '', decoding: 'async', dataset: { id: s.id } });
}
