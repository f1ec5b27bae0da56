// sluice web page: channel browser, live preview player (fMP4 through
// MediaSource), transcoding dashboard (Server-Sent Events) and catalog tools.
// Plain browser JavaScript, no build step, no dependencies. Every string that
// comes from the catalog or the server is put on the page with textContent or
// DOM properties, never parsed as HTML.
'use strict';

(() => {
  const $ = (id) => document.getElementById(id);

  // ---------- small helpers ----------

  /** Builds an element; `props` are DOM properties, children are nodes or text. */
  function el(tag, props, ...children) {
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

  function fmtBytes(n) {
    if (!Number.isFinite(n)) return '–';
    const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
    let i = 0;
    while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
    return (i === 0 ? String(n) : n.toFixed(n < 10 ? 1 : 0)) + ' ' + units[i];
  }

  function fmtDuration(ms) {
    if (!Number.isFinite(ms)) return '–';
    const s = Math.floor(ms / 1000);
    const h = Math.floor(s / 3600);
    const m = Math.floor((s % 3600) / 60);
    const sec = String(s % 60).padStart(2, '0');
    return h > 0 ? `${h}:${String(m).padStart(2, '0')}:${sec}` : `${m}:${sec}`;
  }

  function setMsg(node, text, kind) {
    node.textContent = text || '';
    node.classList.toggle('error', kind === 'error');
    node.classList.toggle('warn', kind === 'warn');
  }

  /** The server's JSON error `{error, message}` (or a stand-in), plus Retry-After. */
  async function readError(resp) {
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

  // ---------- admin key (kept in sessionStorage: this tab only) ----------

  const KEY_STORE = 'sluice.adminKey';
  const storedKey = () => { try { return sessionStorage.getItem(KEY_STORE) || ''; } catch (_) { return ''; } };
  const authHeaders = () => (storedKey() ? { 'X-Admin-Key': storedKey() } : {});

  /** Opens the key dialog; resolves true when the user gave a key. */
  function askKey(reason) {
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
  async function adminFetch(url, opts = {}) {
    for (let attempt = 0; ; attempt++) {
      const resp = await fetch(url, { ...opts, headers: { ...(opts.headers || {}), ...authHeaders() } });
      if (resp.status !== 401 || attempt > 0) return resp;
      const err = await readError(resp.clone());
      if (!(await askKey(err.message))) return resp;
    }
  }

  // ---------- profiles and channels ----------

  const state = { streams: [], profiles: [], defaultProfile: '', selected: null };

  async function loadProfiles() {
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

  async function loadStreams() {
    const msg = $('channels-msg');
    try {
      const resp = await fetch('/api/streams', { headers: authHeaders() });
      if (!resp.ok) throw new Error((await readError(resp)).message);
      const list = await resp.json();
      state.streams = Array.isArray(list) ? list : [];
      setMsg(msg, '');
    } catch (e) {
      setMsg(msg, `Could not load the catalog: ${e.message}`, 'error');
    }
    renderGroups();
    renderChannels();
  }

  function renderGroups() {
    const sel = $('group');
    const keep = sel.value;
    const groups = [...new Set(state.streams.map((s) => s.group).filter((g) => typeof g === 'string' && g))].sort();
    sel.replaceChildren(el('option', { value: '', textContent: 'All groups' }),
      ...groups.map((g) => el('option', { value: g, textContent: g })));
    sel.value = groups.includes(keep) ? keep : '';
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

  function renderChannels() {
    const q = $('search').value.trim().toLowerCase();
    const g = $('group').value;
    const shown = state.streams.filter((s) => (!g || s.group === g)
      && (!q || [s.name, s.id, s.group, s.tvgId].some((v) => typeof v === 'string' && v.toLowerCase().includes(q))));
    const items = shown.map((s) => {
      const play = el('button', {
        type: 'button',
        className: 'channel' + (s.enabled === false ? ' disabled' : ''),
        dataset: { id: s.id },
        title: s.enabled === false ? 'Disabled' : `Preview ${s.name || s.id}`,
        'aria-current': state.selected === s.id ? 'true' : 'false',
      }, logoFor(s), el('span', { className: 'ch-text' },
        el('span', { className: 'ch-name', textContent: s.name || s.id }),
        el('span', { className: 'ch-sub', textContent: [s.id, s.group].filter(Boolean).join(' · ') })));
      play.addEventListener('click', () => startPreview(s.id));
      const edit = el('button', { type: 'button', className: 'small', textContent: 'Edit', 'aria-label': `Edit ${s.name || s.id}` });
      edit.addEventListener('click', () => openStreamDialog(s));
      const del = el('button', { type: 'button', className: 'small danger', textContent: 'Delete', 'aria-label': `Delete ${s.name || s.id}` });
      del.addEventListener('click', () => deleteStream(s));
      return el('li', null, play, el('span', { className: 'ch-actions' }, edit, del));
    });
    $('channel-list').replaceChildren(...items);
    if (!state.streams.length) setMsg($('channels-msg'), 'The catalog is empty: add a stream or import a playlist.');
    else if (!shown.length) setMsg($('channels-msg'), 'No channel matches the filter.');
    else setMsg($('channels-msg'), `${shown.length} of ${state.streams.length} channels`);
  }

  function markSelected() {
    for (const b of document.querySelectorAll('#channel-list .channel')) {
      b.setAttribute('aria-current', b.dataset.id === state.selected ? 'true' : 'false');
    }
  }

  // ---------- preview player ----------

  const video = $('video');
  let current = null; // the running preview: {ctrl, streamId, quality, objectUrl}

  /** Ends the running preview at once: aborting the fetch closes the connection,
   *  which ends the server's session. */
  function stopPreview(message, kind) {
    const s = current;
    current = null;
    if (s) {
      s.ctrl.abort();
      if (s.objectUrl) URL.revokeObjectURL(s.objectUrl);
    }
    video.pause();
    video.removeAttribute('src');
    video.load();
    $('stop-btn').disabled = true;
    $('served-session').textContent = '–';
    delete $('served-session').dataset.sessionId;
    $('served-size').textContent = '–';
    if (message !== undefined) setMsg($('player-msg'), message, kind);
  }

  const REFUSALS = {
    pool_full: 'Every transcode slot is busy.',
    queue_full: 'The waiting queue is full.',
    memory_critical: 'The server is low on memory and refuses new previews.',
    shutting_down: 'The server is shutting down.',
    too_many_sessions: 'This browser already holds as many previews as the server allows.',
    rate_limited: 'Too many preview requests.',
    source_failed: 'The source could not be opened.',
    start_timeout: 'The preview did not start in time.',
    incompatible_source: 'The source cannot be played without transcoding.',
    stream_disabled: 'This stream is disabled.',
    stream_not_found: 'This stream is no longer in the catalog.',
  };

  function describeRefusal(err) {
    const lead = REFUSALS[err.code] || `The server refused the preview (${err.status}).`;
    const retry = err.retryAfter ? ` Retry in ${err.retryAfter} s.` : '';
    return `${lead} ${err.message}${retry}`;
  }

  async function startPreview(streamId) {
    stopPreview();
    const quality = $('quality').value;
    const stream = state.streams.find((s) => s.id === streamId);
    state.selected = streamId;
    markSelected();
    $('retry-btn').hidden = true;
    $('now-playing').textContent = stream ? (stream.name || stream.id) : streamId;
    for (const id of ['served-mode', 'served-quality']) $(id).textContent = '–';
    const ctrl = new AbortController();
    const session = { ctrl, streamId, quality, objectUrl: null };
    current = session;
    $('stop-btn').disabled = false;
    setMsg($('player-msg'), 'Starting…');
    const url = `/streams/preview/${encodeURIComponent(streamId)}?format=mp4` + (quality ? `&quality=${encodeURIComponent(quality)}` : '');
    try {
      const resp = await fetch(url, { signal: ctrl.signal, cache: 'no-store' });
      if (current !== session) return;
      if (!resp.ok) {
        const err = await readError(resp);
        if (current !== session) return;
        stopPreview(describeRefusal(err), 'error');
        $('retry-btn').hidden = false;
        return;
      }
      $('served-mode').textContent = resp.headers.get('X-Sluice-Mode') || '?';
      const served = resp.headers.get('X-Sluice-Quality') || '?';
      $('served-quality').textContent = served;
      const sessionId = resp.headers.get('X-Session-Id') || '';
      $('served-session').textContent = sessionId ? sessionId.slice(0, 8) : '?';
      $('served-session').title = sessionId;
      $('served-session').dataset.sessionId = sessionId;
      if (quality && served !== quality && served !== '?') {
        setMsg($('player-msg'), `Asked for ${quality}, the server chose ${served} (memory pressure).`, 'warn');
      } else {
        setMsg($('player-msg'), 'Buffering…');
      }
      if (window.MediaSource && resp.body) {
        await playThroughMse(session, resp.body.getReader());
      } else {
        // No MediaSource: hand the URL to the element (a second request).
        ctrl.abort();
        video.src = url;
        await playVideo(session);
      }
    } catch (e) {
      if (current !== session) return;
      if (e && e.name === 'AbortError') return;
      stopPreview(`Playback failed: ${e && e.message ? e.message : e}`, 'error');
      $('retry-btn').hidden = false;
    }
  }

  async function playVideo(session) {
    try {
      await video.play();
    } catch (_) {
      // Autoplay with sound refused: play muted, the user can unmute.
      if (current !== session) return;
      video.muted = true;
      try { await video.play(); } catch (_) { /* the controls remain */ }
    }
  }

  /** Reads the fMP4 body and feeds it to a MediaSource; trims old data; keeps near the live edge. */
  async function playThroughMse(session, reader) {
    let head = new Uint8Array(0);
    let codecs = null;
    while (!codecs) {
      const { value, done } = await reader.read();
      if (current !== session) { reader.cancel().catch(() => {}); return; }
      if (done) throw new Error('the stream ended before the first picture');
      head = concat(head, value);
      codecs = initCodecs(head);
      if (head.length > 4 * 1024 * 1024) throw new Error('no MP4 header in the first 4 MiB');
    }
    const mime = `video/mp4; codecs="${codecs.join(', ')}"`;
    if (!MediaSource.isTypeSupported(mime)) throw new Error(`this browser cannot play ${mime}`);
    const ms = new MediaSource();
    session.objectUrl = URL.createObjectURL(ms);
    video.src = session.objectUrl;
    await new Promise((resolve) => ms.addEventListener('sourceopen', resolve, { once: true }));
    if (current !== session) { reader.cancel().catch(() => {}); return; }
    const sb = ms.addSourceBuffer(mime);
    const waitIdle = () => new Promise((resolve, reject) => {
      const ok = () => { sb.removeEventListener('error', bad); resolve(); };
      const bad = () => { sb.removeEventListener('updateend', ok); reject(new Error('the browser could not decode the stream')); };
      sb.addEventListener('updateend', ok, { once: true });
      sb.addEventListener('error', bad, { once: true });
    });
    const append = async (chunk) => {
      try {
        sb.appendBuffer(chunk);
      } catch (e) {
        if (e.name !== 'QuotaExceededError') throw e;
        // Buffer full (paused for long): drop what is behind, jump to live.
        await trim(0);
        sb.appendBuffer(chunk);
      }
      await waitIdle();
    };
    const trim = async (keepSeconds) => {
      const b = video.buffered;
      if (!b.length) return;
      const end = keepSeconds === 0 ? b.end(b.length - 1) - 2 : video.currentTime - keepSeconds;
      if (end > b.start(0) + 1) {
        sb.remove(b.start(0), end);
        await waitIdle();
        if (video.currentTime < end) video.currentTime = end;
      }
    };
    await append(head);
    let started = false;
    let lastTrim = 0;
    for (;;) {
      const { value, done } = await reader.read();
      if (current !== session) { reader.cancel().catch(() => {}); return; }
      if (done) break;
      await append(value);
      if (current !== session) return;
      const b = video.buffered;
      if (b.length) {
        const start = b.start(0);
        const end = b.end(b.length - 1);
        if (video.currentTime < start) video.currentTime = start;
        if (!started && end - start > 0.3) {
          started = true;
          playVideo(session);
          setMsg($('player-msg'), '');
        }
        // Fell far behind the live edge (tab in the background): catch up.
        if (started && !video.paused && end - video.currentTime > 10) video.currentTime = end - 1;
        if (video.currentTime - lastTrim > 30) {
          lastTrim = video.currentTime;
          await trim(15);
        }
      }
    }
    if (current === session && ms.readyState === 'open') {
      ms.endOfStream();
      setMsg($('player-msg'), 'The stream ended (stopped on the server, or the source finished).');
      $('stop-btn').disabled = true;
      $('retry-btn').hidden = false;
    }
  }

  function concat(a, b) {
    const out = new Uint8Array(a.length + b.length);
    out.set(a, 0);
    out.set(b, a.length);
    return out;
  }

  /** Walks the MP4 boxes of the stream's start; once `moov` is complete,
   *  returns the RFC 6381 codec strings of its tracks (e.g. avc1.42C01F). */
  function initCodecs(buf) {
    const view = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
    const type = (at) => String.fromCharCode(buf[at], buf[at + 1], buf[at + 2], buf[at + 3]);
    const boxes = (from, to, visit) => {
      let at = from;
      while (at + 8 <= to) {
        let size = view.getUint32(at);
        let header = 8;
        if (size === 1) {
          if (at + 16 > to) return false;
          size = Number(view.getBigUint64(at + 8));
          header = 16;
        } else if (size === 0) {
          size = to - at;
        }
        if (size < header || at + size > to) return false;
        visit(type(at + 4), at + header, at + size);
        at += size;
      }
      return true;
    };
    let moov = null;
    boxes(0, buf.length, (t, start, end) => { if (t === 'moov' && !moov) moov = [start, end]; });
    if (!moov) return null;
    const codecs = [];
    const hex = (b) => b.toString(16).toUpperCase().padStart(2, '0');
    const walk = (start, end) => boxes(start, end, (t, s, e) => {
      if (['trak', 'mdia', 'minf', 'stbl'].includes(t)) walk(s, e);
      else if (t === 'stsd') walk(s + 8, e);
      else if (t === 'avc1' || t === 'avc3') {
        let found = `${t}.42E01F`;
        boxes(s + 78, e, (tt, ss) => {
          if (tt === 'avcC' && ss + 4 <= e) found = `${t}.${hex(buf[ss + 1])}${hex(buf[ss + 2])}${hex(buf[ss + 3])}`;
        });
        codecs.push(found);
      } else if (t === 'mp4a') codecs.push('mp4a.40.2');
    });
    walk(moov[0], moov[1]);
    return codecs.length ? codecs : null;
  }

  video.addEventListener('resize', () => {
    if (video.videoWidth) $('served-size').textContent = `${video.videoWidth}×${video.videoHeight}`;
  });
  video.addEventListener('error', () => {
    if (current && video.error) stopPreview(`The browser could not play the stream (${video.error.message || video.error.code}).`, 'error');
  });

  // ---------- dashboard (Server-Sent Events) ----------

  const rows = new Map(); // sessionId -> <tr>
  let events = null;

  function setConn(stateName, text) {
    const c = $('conn');
    c.dataset.state = stateName;
    c.textContent = `Dashboard: ${text}`;
  }

  function connectEvents() {
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

  // ---------- catalog actions ----------

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

  function openStreamDialog(stream) {
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

  async function saveStream(e) {
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
    if (current && current.streamId === s.id) stopPreview('The stream was deleted.');
    await loadStreams();
  }

  /** 404/405 from a route this server does not have yet. */
  const missingRoute = (err) => err.code === 'not_found' || err.code === 'method_not_allowed';

  async function importPlaylist(e) {
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
    setMsg(msg, `Imported ${r.imported ?? 0}, updated ${r.updated ?? 0}, skipped ${r.skipped ?? 0}` + (errors.length ? `, ${errors.length} errors:` : '.'), errors.length ? 'warn' : '');
    $('import-errors').replaceChildren(...errors.slice(0, 50).map((x) => el('li', {
      textContent: typeof x === 'string' ? x : [x.line ? `line ${x.line}` : '', x.name, x.message || x.error].filter(Boolean).join(': '),
    })));
    await loadStreams();
  }

  async function validateUrl(e) {
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
      ['Video', v ? `${v.codec} ${v.width}×${v.height} @ ${v.framerate}${v.interlaced ? ' interlaced' : ''}` : 'none'],
      ['Audio', a ? `${a.codec}, ${a.channels} ch, ${a.sampleRate} Hz` : 'none'],
    ];
    out.replaceChildren(...pairs.filter(([, val]) => val !== null && val !== undefined)
      .flatMap(([k, val]) => [el('dt', { textContent: k }), el('dd', { textContent: String(val) })]));
  }

  // ---------- wiring ----------

  function init() {
    $('search').addEventListener('input', renderChannels);
    $('group').addEventListener('change', renderChannels);
    // A new quality restarts the running preview (the old session ends first).
    $('quality').addEventListener('change', () => { if (current) startPreview(current.streamId); });
    $('stop-btn').addEventListener('click', () => stopPreview('Stopped.'));
    $('retry-btn').addEventListener('click', () => { if (state.selected) startPreview(state.selected); });
    $('add-btn').addEventListener('click', () => openStreamDialog(null));
    $('stream-form').addEventListener('submit', saveStream);
    $('stream-cancel').addEventListener('click', () => $('stream-dialog').close());
    $('import-form').addEventListener('submit', importPlaylist);
    $('validate-form').addEventListener('submit', validateUrl);
    $('key-btn').addEventListener('click', () => askKey('Enter the server\'s ADMIN_API_KEY for changes from this tab.').then((ok) => { if (ok) loadStreams(); }));
    $('key-forget').addEventListener('click', () => {
      try { sessionStorage.removeItem(KEY_STORE); } catch (_) { /* nothing stored */ }
      $('key-input').value = '';
    });
    window.addEventListener('pagehide', () => { stopPreview(); if (events) events.close(); });
    loadProfiles();
    loadStreams();
    connectEvents();
  }

  init();
})();
