// sluice web page: shared helpers. DOM building that never parses HTML,
// number formats, the server's JSON errors, the page state, and the admin
// key (kept in sessionStorage: this tab only) with the fetch that sends it.

export const $ = (id) => document.getElementById(id);

/** What the modules share: the catalog, the profiles and the selected channel. */
export const state = { streams: [], profiles: [], defaultProfile: '', selected: null };

/** Builds an element; `props` are DOM properties, children are nodes or text. */
export function el(tag, props, ...children) {
  const node = document.createElement(tag);
  if (props) {
    for (const [k, v] of Object.entries(props)) {
      if (v === undefined || v === null) continue;
      if (k === 'dataset') Object.assign(node.dataset, v);
      else if (k.startsWith('aria-') || k === 'role') node.setAttribute(k, String(v));
      else node[k] = v;
    }
  }
  for (const c of children) {
    if (c === null || c === undefined) continue;
    node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return node;
}

/** Bytes in decimal units, as the server's settings are written (512MB, 1GB). */
export function fmtBytes(n) {
  if (!Number.isFinite(n)) return '–';
  const units = ['B', 'kB', 'MB', 'GB', 'TB'];
  let i = 0;
  while (n >= 1000 && i < units.length - 1) { n /= 1000; i++; }
  return (i === 0 ? String(n) : n.toFixed(n < 10 ? 1 : 0)) + ' ' + units[i];
}

export function fmtDuration(ms) {
  if (!Number.isFinite(ms)) return '–';
  const s = Math.floor(ms / 1000);
  const h = Math.floor(s / 3600);
  const m = Math.floor((s % 3600) / 60);
  const sec = String(s % 60).padStart(2, '0');
  return h > 0 ? `${h}:${String(m).padStart(2, '0')}:${sec}` : `${m}:${sec}`;
}

export function setMsg(node, text, kind) {
  node.textContent = text || '';
  node.classList.toggle('error', kind === 'error');
  node.classList.toggle('warn', kind === 'warn');
}

/** The server's JSON error `{error, message}` (or a stand-in), plus Retry-After. */
export async function readError(resp) {
  let body = null;
  try { body = await resp.json(); } catch (_) { body = null; }
  const retry = Number.parseInt(resp.headers.get('Retry-After') || '', 10);
  return {
    status: resp.status,
    code: (body && typeof body.error === 'string') ? body.error : `http_${resp.status}`,
    message: (body && typeof body.message === 'string') ? body.message : (resp.statusText || `HTTP ${resp.status}`),
    retryAfter: Number.isFinite(retry) ? retry : null,
  };
}

export const KEY_STORE = 'sluice.adminKey';
export const storedKey = () => { try { return sessionStorage.getItem(KEY_STORE) || ''; } catch (_) { return ''; } };
export const authHeaders = () => (storedKey() ? { 'X-Admin-Key': storedKey() } : {});

/** Opens the key dialog; resolves true when the user gave a key. */
export function askKey(reason) {
  const dlg = $('key-dialog');
  $('key-reason').textContent = reason || 'Changes need the server\'s admin key.';
  $('key-input').value = storedKey();
  return new Promise((resolve) => {
    const done = (ok) => {
      $('key-form').removeEventListener('submit', onSubmit);
      $('key-cancel').removeEventListener('click', onCancel);
      dlg.removeEventListener('cancel', onCancel);
      if (dlg.open) dlg.close();
      resolve(ok);
    };
    const onSubmit = (e) => {
      e.preventDefault();
      const k = $('key-input').value.trim();
      try { if (k) sessionStorage.setItem(KEY_STORE, k); } catch (_) { /* storage refused */ }
      done(Boolean(k));
    };
    const onCancel = (e) => { e.preventDefault(); done(false); };
    $('key-form').addEventListener('submit', onSubmit);
    $('key-cancel').addEventListener('click', onCancel);
    dlg.addEventListener('cancel', onCancel);
    dlg.showModal();
    $('key-input').focus();
  });
}

/** fetch() for admin routes: sends the key, asks for one on 401 and retries once. */
export async function adminFetch(url, opts = {}) {
  for (let attempt = 0; ; attempt++) {
    const resp = await fetch(url, { ...opts, headers: { ...(opts.headers || {}), ...authHeaders() } });
    if (resp.status !== 401 || attempt > 0) return resp;
    const err = await readError(resp.clone());
    if (!(await askKey(err.message))) return resp;
  }
}

/** Marks the selected channel in the list. */
export function markSelected() {
  for (const b of document.querySelectorAll('#channel-list .channel')) {
    b.setAttribute('aria-current', b.dataset.id === state.selected ? 'true' : 'false');
  }
}
