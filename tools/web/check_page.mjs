// The web page of `semla serve` in a real headless Chromium, driven over the
// DevTools protocol (Node's own WebSocket; no npm packages): upload an image
// through the page's file input, wait for the overlay, check the adapters
// table and the legend against the API's own answer, take the sample image
// too, and save a screenshot.
//
// usage: node --experimental-websocket check_page.mjs URL IMAGE SCREENSHOT.png
import { spawn } from "node:child_process";
import { mkdtempSync, writeFileSync, rmSync, readFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";

const [url, image, screenshot] = process.argv.slice(2);
if (!url || !image || !screenshot) {
  console.error("usage: check_page.mjs URL IMAGE SCREENSHOT.png");
  process.exit(2);
}
const chromium = process.env.CHROMIUM || "chromium";
const profile = mkdtempSync(join(tmpdir(), "semla-chromium-"));
const browser = spawn(chromium, [
  "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
  "--no-first-run", "--remote-debugging-port=0", `--user-data-dir=${profile}`,
  "--window-size=1280,1000", "about:blank",
], { stdio: ["ignore", "ignore", "pipe"] });

// Chromium may still be writing its profile as it exits: best effort.
function removeProfile() {
  try { rmSync(profile, { recursive: true, force: true, maxRetries: 5, retryDelay: 100 }); } catch { /* left in the temp dir */ }
}

function fail(message) {
  console.error(`page check FAILED: ${message}`);
  browser.kill("SIGKILL");
  removeProfile();
  process.exit(1);
}
let finished = false;
const overall = setTimeout(() => fail("no result after 90 s"), 90_000);

const devtools = await new Promise((ok) => {
  let text = "";
  browser.stderr.on("data", (chunk) => {
    text += chunk;
    const m = text.match(/DevTools listening on (ws:\/\/\S+)/);
    if (m) ok(m[1]);
  });
  browser.on("exit", (code) => { if (!finished) fail(`Chromium exited (${code}): ${text.slice(-500)}`); });
});
const port = new URL(devtools).port;
const targets = await (await fetch(`http://127.0.0.1:${port}/json/list`)).json();
const pageTarget = targets.find((t) => t.type === "page");
if (!pageTarget) fail("Chromium has no page target");

const socket = new WebSocket(pageTarget.webSocketDebuggerUrl);
await new Promise((ok, ko) => { socket.onopen = ok; socket.onerror = () => ko(new Error("DevTools socket")); });
let nextId = 1;
const pending = new Map();
const listeners = [];
socket.onmessage = (event) => {
  const message = JSON.parse(event.data);
  if (message.id && pending.has(message.id)) {
    const { ok, ko } = pending.get(message.id);
    pending.delete(message.id);
    if (message.error) ko(new Error(JSON.stringify(message.error))); else ok(message.result);
  } else if (message.method) {
    for (const l of listeners) l(message);
  }
};
const send = (method, params = {}) => new Promise((ok, ko) => {
  const id = nextId++;
  pending.set(id, { ok, ko });
  socket.send(JSON.stringify({ id, method, params }));
});
const evaluate = async (expression) => {
  const r = await send("Runtime.evaluate", { expression, returnByValue: true, awaitPromise: true });
  if (r.exceptionDetails) throw new Error(`${expression}: ${JSON.stringify(r.exceptionDetails)}`);
  return r.result.value;
};
const waitFor = async (expression, what, seconds = 30) => {
  const started = Date.now();
  for (;;) {
    const value = await evaluate(expression);
    if (value) return value;
    if (Date.now() - started > seconds * 1000) fail(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 100));
  }
};
const consoleErrors = [];
listeners.push((m) => {
  if (m.method === "Runtime.exceptionThrown") consoleErrors.push(JSON.stringify(m.params.exceptionDetails));
  if (m.method === "Runtime.consoleAPICalled" && m.params.type === "error") consoleErrors.push(JSON.stringify(m.params.args));
});

await send("Page.enable");
await send("Runtime.enable");
await send("Emulation.setDeviceMetricsOverride", { width: 1280, height: 1000, deviceScaleFactor: 1, mobile: false });
const loaded = new Promise((ok) => listeners.push((m) => { if (m.method === "Page.loadEventFired") ok(); }));
await send("Page.navigate", { url });
await loaded;
await waitFor(`document.getElementById("served").textContent.includes("adapters")`, "the served model line");

// Upload through the page's own file input (as a user choosing a file does).
const { root } = await send("DOM.getDocument");
const { nodeId } = await send("DOM.querySelector", { nodeId: root.nodeId, selector: "#file" });
await send("DOM.setFileInputFiles", { nodeId, files: [resolve(image)] });
await waitFor(`document.getElementById("status").textContent.startsWith("Done")`, "the segmentation of the upload");
const page = await evaluate(`(() => {
  const img = document.getElementById("overlay");
  const rows = [...document.querySelectorAll("#adapters tbody tr")].map((tr) => [...tr.cells].map((c) => c.textContent));
  const legend = [...document.querySelectorAll("#legend tbody tr")].map((tr) => [...tr.cells].map((c) => c.textContent));
  const mask = document.getElementById("mask");
  return { overlay: img.src.startsWith("data:image/png;base64,") && img.naturalWidth, rows, legend,
           mask: [mask.width, mask.height], status: document.getElementById("status").textContent };
})()`);

// The API's own answer for the same image and settings.
const form = new FormData();
form.append("image", new Blob([readFileSync(image)]), "image");
form.append("params", JSON.stringify({ outputs: ["labels", "overlay"], mode: "semla" }));
const api = await (await fetch(new URL("v1/segment", url), { method: "POST", body: form })).json();
if (!page.overlay) fail("the overlay did not load");
if (page.mask[0] !== api.width || page.mask[1] !== api.height) fail(`mask ${page.mask} for a ${api.width}x${api.height} image`);
if (page.rows.length !== api.explanation.adapters.length) fail(`${page.rows.length} adapter rows, the API used ${api.explanation.adapters.length}`);
page.rows.forEach((row, i) => {
  const a = api.explanation.adapters[i];
  if (row[0] !== a.name) fail(`row ${i} names ${row[0]}, the API ${a.name}`);
  if (Math.abs(Number(row[3]) - a.weight) > 5e-5) fail(`row ${i} weight ${row[3]}, the API ${a.weight}`);
});
if (page.legend.length !== api.present_classes.length) fail(`${page.legend.length} legend rows, ${api.present_classes.length} classes present`);
page.legend.forEach((row, i) => {
  if (Number(row[1]) !== api.present_classes[i].pixels) fail(`legend row ${i}: ${row} vs ${JSON.stringify(api.present_classes[i])}`);
});

// The sample button segments too.
await evaluate(`document.getElementById("status").textContent = ""; document.getElementById("sample").click(); true`);
await waitFor(`document.getElementById("status").textContent.startsWith("Done")`, "the segmentation of the sample");
const sample = await evaluate(`document.getElementById("status").textContent`);
// Back to the uploaded image for the screenshot.
await evaluate(`document.getElementById("status").textContent = ""; true`);
await send("DOM.setFileInputFiles", { nodeId, files: [resolve(image)] });
await waitFor(`document.getElementById("status").textContent.startsWith("Done")`, "the second upload");
const shot = await send("Page.captureScreenshot", { format: "png", captureBeyondViewport: true });
writeFileSync(screenshot, Buffer.from(shot.data, "base64"));
if (consoleErrors.length) fail(`the page logged errors: ${consoleErrors.join("; ")}`);
clearTimeout(overall);
finished = true;
console.log(JSON.stringify({ upload: page.status, adapters: page.rows, legend: page.legend.length, sample, screenshot }));
socket.close();
browser.kill("SIGTERM");
removeProfile();
process.exit(0);
