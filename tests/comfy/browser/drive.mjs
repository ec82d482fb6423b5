// Drives the ComfyUI frontend in a real headless Chromium for tests/comfy/test_browser.py.
//
//   node drive.mjs <job.json>
//
// job.json: {url, playwright (path of the playwright-core package), chromium, out_dir,
//            workflows: [{name, path}], run (name of the workflow to queue),
//            timeouts: {load_s, drop_s, run_s}}
// For each workflow it drops the file onto the canvas the way a user's file drag does (DragEvent
// with a DataTransfer holding a File), then reports what the page shows: open dialogs, error
// toasts, and every graph node with its widgets. For `run` it presses the Run button and waits
// for the <video> preview of the saved output. Screenshots go to out_dir. The judging is left to
// the Python test: this script prints one JSON report on stdout, also when a step failed (its
// error is in the report); it exits non-zero only when the job or playwright-core can't be read.
import { readFileSync } from 'node:fs';
import { basename, join } from 'node:path';
import { createRequire } from 'node:module';

const job = JSON.parse(readFileSync(process.argv[2], 'utf8'));
const { chromium } = createRequire(import.meta.url)(job.playwright);
const ms = (s) => Math.round(s * 1000);
const report = { workflows: [], run: null, page_errors: [], error: null };

// Visible PrimeVue dialogs and toasts: the missing-node warning, load / execution errors and
// alerts all end up as one of these.
function pageMessages() {
  const visible = (el) => !!(el.offsetWidth || el.offsetHeight || el.getClientRects().length);
  return {
    dialogs: [...document.querySelectorAll('.p-dialog')].filter(visible)
      .map((d) => d.innerText.trim()),
    toasts: [...document.querySelectorAll('.p-toast-message')].filter(visible)
      .map((t) => ({ severity: [...t.classList].find((c) => /^p-toast-message-(?!content)/.test(c))
                       ?.replace('p-toast-message-', '') ?? '', text: t.innerText.trim() })),
  };
}

// The graph as the frontend holds it: node id, type, and widget names / values in order.
function graphNodes() {
  const plain = (v) => (v === undefined || typeof v === 'function' ? null
    : JSON.parse(JSON.stringify(v)));
  return window.app.graph.nodes.map((n) => ({
    id: n.id, type: n.type,
    widgets: (n.widgets ?? []).map((w) => ({ name: w.name, type: w.type, value: plain(w.value) })),
  }));
}

// A user's file drop: dragenter / dragover / drop on the canvas centre, carrying a File.
function dropFile({ name, text }) {
  const canvas = document.querySelector('canvas.lgraphcanvas');
  const box = canvas.getBoundingClientRect();
  const at = { clientX: box.left + box.width / 2, clientY: box.top + box.height / 2 };
  const data = new DataTransfer();
  data.items.add(new File([text], name, { type: 'application/json' }));
  for (const type of ['dragenter', 'dragover', 'drop']) {
    canvas.dispatchEvent(new DragEvent(type, { bubbles: true, cancelable: true, dataTransfer: data, ...at }));
  }
}

// Each step is judged on its own: close what the previous one left open (Escape, as a user would).
async function closeDialogs(page) {
  for (let i = 0; i < 5 && await page.locator('.p-dialog:visible').count(); i++) {
    await page.keyboard.press('Escape');
    await page.waitForTimeout(300);
  }
}

async function dropWorkflow(page, wf) {
  const text = readFileSync(wf.path, 'utf8');
  const ids = JSON.parse(text).nodes.map((n) => n.id).sort((a, b) => a - b);
  const entry = { name: wf.name, loaded: false };
  await page.evaluate(dropFile, { name: basename(wf.path), text });
  try {
    // Loaded = the canvas graph holds exactly the file's node ids (a new tab opens per drop).
    await page.waitForFunction((want) => {
      const got = window.app.graph.nodes.map((n) => n.id).sort((a, b) => a - b);
      return JSON.stringify(got) === JSON.stringify(want);
    }, ids, { timeout: ms(job.timeouts.drop_s), polling: 100 });
    entry.loaded = true;
  } catch (e) {
    entry.load_error = String(e.message).split('\n')[0];
  }
  // The missing-node dialog opens inside the load, toasts a moment later: let them show.
  await page.waitForTimeout(1000);
  // Frame the whole graph for the screenshot, as a user would with the Fit View button
  // (cosmetic: a frontend without that button still gets judged).
  await page.getByRole('button', { name: /^Fit View/ }).click({ timeout: 5000 }).catch(() => {});
  Object.assign(entry, await page.evaluate(pageMessages), { nodes: await page.evaluate(graphNodes) });
  entry.screenshot = join(job.out_dir, `${wf.name}.png`);
  await page.screenshot({ path: entry.screenshot });
  return entry;
}

async function runWorkflow(page, name) {
  const entry = { name, videos: [] };
  const t0 = Date.now();
  await page.getByRole('button', { name: 'Run', exact: true }).click({ timeout: 10000 });
  try {
    // The SaveVideo node previews its result as a <video> served from /view; readyState >= 2
    // means the browser fetched and decoded its first frame. An error dialog ends the wait early.
    await page.waitForFunction(() => document.querySelector('.p-dialog') || [...document.querySelectorAll('video')]
      .some((v) => (v.currentSrc || v.src).includes('/view?') && v.readyState >= 2),
    null, { timeout: ms(job.timeouts.run_s), polling: 250 });
  } catch (e) {
    entry.wait_error = String(e.message).split('\n')[0];
  }
  entry.seconds = (Date.now() - t0) / 1000;
  entry.videos = await page.evaluate(() => [...document.querySelectorAll('video')].map((v) => ({
    src: v.currentSrc || v.src, ready_state: v.readyState, width: v.videoWidth,
    height: v.videoHeight, duration: v.duration })));
  Object.assign(entry, await page.evaluate(pageMessages));
  entry.screenshot = join(job.out_dir, `${name}_run.png`);
  await page.screenshot({ path: entry.screenshot });
  return entry;
}

let browser;
try {
  browser = await chromium.launch({
    executablePath: job.chromium,
    headless: true,
    timeout: 60000,
    args: ['--no-sandbox', '--disable-gpu', '--disable-dev-shm-usage',
           '--disable-background-networking', '--disable-extensions', '--no-first-run',
           '--mute-audio'],
  });
  const page = await browser.newPage({ viewport: { width: 1600, height: 1000 } });
  page.setDefaultTimeout(ms(job.timeouts.load_s));
  // Uncaught exceptions in the page: shown with a failed run (the console has only the frontend's
  // own noise: 404s of optional files, blocked calls to api.comfy.org).
  page.on('pageerror', (e) => report.page_errors.push(String(e.message).slice(0, 500)));
  // A first visit opens the template browser over the canvas; a returning user has it closed.
  await page.request.post(`${job.url}/settings`, { data: { 'Comfy.TutorialCompleted': true } });
  await page.goto(job.url, { timeout: ms(job.timeouts.load_s) });
  await page.waitForFunction(() => window.app?.graph && document.querySelector('canvas.lgraphcanvas'),
    null, { timeout: ms(job.timeouts.load_s) });
  // Node definitions arrive from /object_info before the app is usable; the Run button last.
  await page.getByRole('button', { name: 'Run', exact: true }).waitFor({ timeout: ms(job.timeouts.load_s) });
  report.initial = await page.evaluate(pageMessages);
  for (const wf of job.workflows) {
    const entry = await dropWorkflow(page, wf);
    report.workflows.push(entry);
    await closeDialogs(page);
    if (wf.name === job.run) {
      report.run = await runWorkflow(page, wf.name);
      await closeDialogs(page);
    }
  }
} catch (e) {
  report.error = String(e.stack || e);
} finally {
  await browser?.close();
}
process.stdout.write(JSON.stringify(report));
