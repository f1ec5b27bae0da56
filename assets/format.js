// sluice web page: how the player receives a stream. `auto` uses HLS where
// the browser says it plays HLS itself (canPlayType), fMP4 through
// MediaSource elsewhere; `hls` and `fmp4` force one. The choice is kept in
// localStorage; a `?format=` query on the page picks one for this visit.

import { $ } from './util.js';

export const FORMATS = ['auto', 'hls', 'fmp4'];
const STORE = 'sluice.format';
export const HLS_TYPE = 'application/vnd.apple.mpegurl';

function stored() {
  try { return localStorage.getItem(STORE); } catch (_) { return null; }
}

/** The format asked for: the page's `?format=`, else the saved choice, else auto. */
function initial() {
  const asked = new URLSearchParams(location.search).get('format');
  if (FORMATS.includes(asked)) return asked;
  const saved = stored();
  return FORMATS.includes(saved) ? saved : 'auto';
}

/** Sets the select to the initial choice; `onChange` runs after the user picks another. */
export function initFormat(onChange) {
  const select = $('format');
  select.value = initial();
  select.addEventListener('change', () => {
    try { localStorage.setItem(STORE, select.value); } catch (_) { /* not kept */ }
    onChange();
  });
}

/** The chosen format: auto, hls or fmp4. */
export function chosenFormat() {
  const v = $('format').value;
  return FORMATS.includes(v) ? v : 'auto';
}

/** Whether this browser says it plays HLS in a <video> by itself. */
export function nativeHls(video) {
  return video.canPlayType(HLS_TYPE) !== '';
}
