// sluice web page: the preview player. Where the browser plays HLS itself
// (canPlayType) and the format choice is auto, or when HLS is chosen, the
// <video> element gets the master playlist; if that native playback fails
// or does not advance within a few seconds, auto falls back to fMP4 and
// says so. Otherwise fetch() opens the fMP4 preview so the page can read the
// served mode/quality headers and show the server's JSON refusals; the body
// then feeds a MediaSource, and aborting that fetch closes the connection,
// which ends the server's session at once (an HLS session ends some seconds
// after its last request). The HLS URL of the picked channel is offered for
// copying either way.

import { $, state, setMsg, readError, markSelected } from './util.js';
import { chosenFormat, nativeHls } from './format.js';

const video = $('video');
/** Seconds of playing (not paused) native HLS without progress before auto
 *  mode gives up on it. */
const HLS_PATIENCE_S = 6;

/** The master playlist URL of `streamId` (absolute, for copying). */
export function hlsUrl(streamId, quality) {
  const q = quality ? `?quality=${encodeURIComponent(quality)}` : '';
  return `${location.origin}/streams/hls/${encodeURIComponent(streamId)}/master.m3u8${q}`;
}

function showHlsUrl(streamId, quality) {
  $('hls-url').value = hlsUrl(streamId, quality);
  $('hls-copy').disabled = false;
}

$('hls-copy').addEventListener('click', async () => {
  const input = $('hls-url');
  try {
    await navigator.clipboard.writeText(input.value);
    setMsg($('player-msg'), 'HLS URL copied.');
  } catch (_) {
    input.select();
    setMsg($('player-msg'), 'Press Ctrl+C (⌘C) to copy the selected HLS URL.');
  }
});
// The running preview: {ctrl, streamId, quality, objectUrl, format, hls,
// note, watchdog}; `note` is shown while it plays (why it is not on HLS).
let current = null;

/** Ends the running preview at once: aborting the fetch closes the connection,
 *  which ends the server's session. */
export function stopPreview(message, kind) {
  const s = current;
  current = null;
  if (s) {
    s.ctrl.abort();
    if (s.objectUrl) URL.revokeObjectURL(s.objectUrl);
    clearInterval(s.watchdog);
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

/** Plays `streamId` at the picked quality, ending the running preview first.
 *  `note`, when given, says why fMP4 is played instead of native HLS. */
export async function startPreview(streamId, retried = false, note = null) {
  stopPreview();
  const quality = $('quality').value;
  const stream = state.streams.find((s) => s.id === streamId);
  state.selected = streamId;
  markSelected();
  $('retry-btn').hidden = true;
  $('now-playing').textContent = stream ? (stream.name || stream.id) : streamId;
  for (const id of ['served-mode', 'served-quality']) $(id).textContent = '–';
  // On a phone the player sits above the list: bring it into view.
  const box = $('player').getBoundingClientRect();
  if (box.top < 0 || box.top > window.innerHeight / 2) $('player').scrollIntoView({ block: 'start' });
  const ctrl = new AbortController();
  const format = note ? 'fmp4' : chosenFormat();
  const hls = format === 'hls' || (format === 'auto' && nativeHls(video));
  const session = { ctrl, streamId, quality, objectUrl: null, format, hls, note, watchdog: 0 };
  current = session;
  $('stop-btn').disabled = false;
  setMsg($('player-msg'), 'Starting…');
  showHlsUrl(streamId, quality);
  const sid = Math.random().toString(36).slice(2) + Date.now().toString(36);
  // For HLS, the rendition's media playlist is asked for first: it starts
  // the rendition (or answers the server's refusal as JSON); the element
  // then plays the master playlist, whose URIs carry the same sid.
  const url = hls
    ? `/streams/hls/${encodeURIComponent(streamId)}/${encodeURIComponent(quality || state.defaultProfile)}/index.m3u8?sid=${sid}`
    : `/streams/preview/${encodeURIComponent(streamId)}?format=mp4` + (quality ? `&quality=${encodeURIComponent(quality)}` : '');
  try {
    const resp = await fetch(url, { signal: ctrl.signal, cache: 'no-store' });
    if (current !== session) return;
    if (!resp.ok) {
      const err = await readError(resp);
      if (current !== session) return;
      if (err.code === 'too_many_sessions' && !retried) {
        // Sessions this page just left may still be closing on the server
        // (it frees them within a second): try once more.
        setMsg($('player-msg'), 'Waiting for the previous preview to close…');
        await new Promise((resolve) => setTimeout(resolve, 1500));
        if (current === session) startPreview(streamId, true, note);
        return;
      }
      stopPreview(describeRefusal(err), 'error');
      $('retry-btn').hidden = false;
      return;
    }
    if (hls) {
      // The playlist answered (the rendition runs): the element takes over
      // once the playlist lists three segments.
      await untilSegments(session, url, await resp.text(), 3);
      if (current !== session) return;
      $('served-mode').textContent = 'hls';
      $('served-quality').textContent = quality || state.defaultProfile;
      setMsg($('player-msg'), 'Buffering…');
      // One variant: the rendition the media playlist request started.
      const variant = quality || state.defaultProfile;
      const master = `${hlsUrl(streamId, variant)}${variant ? '&' : '?'}sid=${sid}`;
      video.src = master;
      watchNativeHls(session);
      await playVideo(session);
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
      showNote(session, 'Buffering…');
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

/** Waits (a blocking playlist reload) until the media playlist at `url`,
 *  whose text is `text`, lists `n` complete segments. Chromium's own HLS
 *  player gives up on the playlist of a rendition that has just started
 *  ("Segment queue never had any data"): it plays what is listed, finds
 *  no new segment on its first reload and quits. Any failure here is left
 *  to the element to meet. */
async function untilSegments(session, url, text, n) {
  const seq = Number((/#EXT-X-MEDIA-SEQUENCE:(\d+)/.exec(text) || [])[1] || 0);
  const have = (text.match(/^#EXTINF:/gm) || []).length;
  if (have >= n) return;
  try {
    const resp = await fetch(`${url}&_HLS_msn=${seq + n - 1}`, { signal: session.ctrl.signal, cache: 'no-store' });
    await resp.text();
  } catch (e) {
    if (e && e.name === 'AbortError') throw e;
  }
}

/** Shows why fMP4 plays instead of HLS, if it does, else `message`. */
function showNote(session, message) {
  if (session.note) setMsg($('player-msg'), session.note, 'warn');
  else setMsg($('player-msg'), message);
}

/** Native HLS must start advancing within HLS_PATIENCE_S seconds of
 *  playing: otherwise fMP4 takes over in auto mode, and HLS chosen by hand
 *  says it has not started. */
function watchNativeHls(session) {
  let waited = 0;
  let last = video.currentTime;
  session.watchdog = setInterval(() => {
    if (current !== session) { clearInterval(session.watchdog); return; }
    if (video.currentTime > last + 0.5) {
      clearInterval(session.watchdog);
      session.watchdog = 0;
      setMsg($('player-msg'), '');
      return;
    }
    // A paused element (a user's pause, autoplay refused) is not a failure.
    if (!video.paused) waited += 0.5;
    if (waited < HLS_PATIENCE_S) return;
    if (session.format === 'auto') {
      fallBackToFmp4(session, `no picture after ${HLS_PATIENCE_S} s`);
    } else {
      clearInterval(session.watchdog);
      setMsg($('player-msg'), `No picture from HLS after ${HLS_PATIENCE_S} s. Auto or fMP4 under Format may play it.`, 'warn');
    }
  }, 500);
}

/** Ends the native HLS attempt and plays the same channel as fMP4, saying why. */
function fallBackToFmp4(session, why) {
  if (current !== session) return;
  clearInterval(session.watchdog);
  startPreview(session.streamId, false,
    `This browser's own HLS playback failed (${why}): playing fMP4 instead. Pick HLS under Format to insist.`);
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
        showNote(session, '');
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
  if (!current || !video.error) return;
  if (current.hls && current.format === 'auto') {
    fallBackToFmp4(current, video.error.message || `media error ${video.error.code}`);
    return;
  }
  stopPreview(`The browser could not play the stream (${video.error.message || video.error.code}).`, 'error');
});

/** The stream playing now, if any. */
export function playingStreamId() {
  return current ? current.streamId : null;
}

/** Restarts the running preview (after a quality change); the old session ends first. */
export function restartPreview() {
  if (current) startPreview(current.streamId);
}

