// sluice web page entry point: wires the controls to the modules. Plain
// browser JavaScript modules, no build step, no dependencies. Every string
// from the catalog or the server reaches the page through textContent or DOM
// properties, never parsed as HTML.

import { $, state, askKey, KEY_STORE } from './util.js';
import { loadProfiles, loadStreams, loadGuide, renderChannels, openStreamDialog, saveStream, importPlaylist, validateUrl } from './catalog.js';
import { startPreview, stopPreview, restartPreview } from './player.js';
import { connectEvents, closeEvents } from './dashboard.js';
import { initChannelViews, setView, savedView } from './channelview.js';
import { initFormat } from './format.js';

$('search').addEventListener('input', renderChannels);
initChannelViews();
setView(savedView());
for (const b of document.querySelectorAll('[data-view]')) {
  b.addEventListener('click', () => setView(b.dataset.view));
}
$('group').addEventListener('change', renderChannels);
// A new quality restarts the running preview (the old session ends first).
$('quality').addEventListener('change', restartPreview);
// So does a new format (auto, HLS, fMP4).
initFormat(restartPreview);
$('stop-btn').addEventListener('click', () => stopPreview('Stopped.'));
$('retry-btn').addEventListener('click', () => { if (state.selected) startPreview(state.selected); });
$('add-btn').addEventListener('click', () => openStreamDialog(null));
$('stream-form').addEventListener('submit', saveStream);
$('stream-cancel').addEventListener('click', () => $('stream-dialog').close());
$('import-form').addEventListener('submit', importPlaylist);
$('validate-form').addEventListener('submit', validateUrl);
$('key-btn').addEventListener('click', async () => {
  if (await askKey('Enter the server\'s ADMIN_API_KEY for changes from this tab.')) loadStreams();
});
$('key-forget').addEventListener('click', () => {
  try { sessionStorage.removeItem(KEY_STORE); } catch (_) { /* nothing stored */ }
  $('key-input').value = '';
});
window.addEventListener('pagehide', () => { stopPreview(); closeEvents(); });
loadProfiles();
loadStreams();
connectEvents();
// What is on now and next changes with the clock: ask again every minute.
loadGuide();
setInterval(loadGuide, 60_000);
