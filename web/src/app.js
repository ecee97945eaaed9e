// The page: open and verify a bundle, run / swap / per-row tasks, fine-tune a new task from CSV, keep it in
// IndexedDB and offer its task file. `window.edgeEigenlora` exposes the same operations for the browser test
// and the benchmark (tests/test_web.py, benchmarks/web.py).

import { COEFFICIENTS, HEAD_BIAS, HEAD_WEIGHT, TRAIN_STEP, checkTaskName, taskFile } from "./contract.js";
import { openBundle } from "./bundle.js";
import { configureOrt, Engine } from "./engine.js";
import { readLabelledCsv } from "./labelled.js";
import { drawLoss } from "./plot.js";
import { listStored, storeTask } from "./store.js";
import { decodeTask, encodeTask } from "./task.js";
import { BundleTokenizer, padRows } from "./tokenize.js";
import { batchSchedule, initParams, train } from "./trainer.js";

const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);
const state = { bundle: null, engine: null, tokenizer: null, tasks: new Map(), timings: {}, busy: false };

configureOrt({ threads: Number(params.get("threads") ?? 1), wasmPaths: new URL("../vendor/onnxruntime-web/", import.meta.url).href });

function showError(exc) {
  const box = $("error");
  box.textContent = exc ? `Error: ${exc.message ?? exc}` : "";
  box.hidden = !exc;
  if (exc) console.error(exc);
}

async function guarded(fn) {
  if (state.busy) return undefined;
  state.busy = true;
  showError(null);
  try {
    return await fn();
  } catch (exc) {
    showError(exc);
    throw exc;
  } finally {
    state.busy = false;
  }
}

function softmax(logits) {
  const max = Math.max(...logits);
  const e = [...logits].map((v) => Math.exp(v - max));
  const s = e.reduce((a, b) => a + b, 0);
  return e.map((v) => v / s);
}

// ------------------------------------------------------------------------------------------ bundle

async function openUrl(url) {
  const t0 = performance.now();
  state.bundle = state.engine = state.tokenizer = null;
  state.tasks.clear();
  refreshTasks();
  $("bundle-status").textContent = `Opening ${url} ...`;
  const bundle = await openBundle(new URL(url, location.href).href, {
    onProgress: ({ done, total, file }) => {
      $("load-progress").value = done / total;
      $("bundle-status").textContent = `verified ${done}/${total}: ${file}`;
    },
  });
  const m = bundle.manifest;
  const tokFile = m.tokenizer.files.find((f) => f.endsWith("tokenizer.json"));
  const cfgFile = m.tokenizer.files.find((f) => f.endsWith("tokenizer_config.json"));
  const json = (rel) => JSON.parse(new TextDecoder().decode(bundle.files.get(rel)));
  const tokenizer = new BundleTokenizer(json(tokFile), cfgFile ? json(cfgFile) : {}, {
    maxLength: m.tokenizer.max_length ?? 128,
    padId: m.tokenizer.pad_token_id ?? 0,
  });
  const tasks = new Map();
  for (const [name, entry] of Object.entries(m.tasks ?? {})) {
    tasks.set(name, { ...decodeTask(bundle.files.get(entry.file), m, bundle.layout, `task file ${entry.file}`), name, source: "bundle" });
  }
  for (const { name, bytes } of await listStored(m.basis.fingerprint)) {
    if (!tasks.has(name)) tasks.set(name, { ...decodeTask(bytes, m, bundle.layout, `stored task ${name}`), name, source: "browser", bytes });
  }
  const engine = new Engine(bundle);
  state.timings.verified = performance.now();
  await engine.session("shared");
  state.timings.sessionReady = performance.now();
  Object.assign(state, { bundle, engine, tokenizer, tasks });
  refreshTasks();
  const mb = (bundle.bytes / 1e6).toFixed(1);
  $("bundle-status").textContent =
    `${m.base_model.name}: ${bundle.files.size} files (${mb} MB) verified by sha256 in ${((performance.now() - t0) / 1000).toFixed(1)} s; ` +
    `graphs ${m.graphs.map((g) => g.variant).join(", ")}; ${tasks.size} task(s); ${bundle.layout.size} coefficients per task.`;
  return { files: [...bundle.files.keys()], tasks: [...tasks.keys()] };
}

function refreshTasks() {
  const select = $("task");
  const keep = select.value;
  select.replaceChildren(
    ...[...state.tasks.values()].map((t) => new Option(`${t.name} (${t.labels.join(" / ")})${t.source === "browser" ? " *" : ""}`, t.name)),
  );
  if (state.tasks.has(keep)) select.value = keep;
  const ready = !!state.engine;
  $("run").disabled = $("run-rows").disabled = !ready || !state.tasks.size;
  $("train").disabled = !ready || !state.engine.has(TRAIN_STEP);
}

function task(name) {
  const t = state.tasks.get(name);
  if (!t) throw new Error(`task ${JSON.stringify(name)} is not loaded; open a bundle that has it, or train it.`);
  return t;
}

// ------------------------------------------------------------------------------------------ run

function textsFromBox() {
  const texts = $("texts").value.split("\n").map((t) => t.trim()).filter(Boolean);
  if (!texts.length) throw new Error("no texts to run: write one text per line in the box.");
  return texts;
}

function requireOpen() {
  if (!state.engine) throw new Error("open a bundle first (section 1).");
}

async function predict(texts, name) {
  requireOpen();
  const enc = state.tokenizer.encodeBatch(texts);
  return (await state.engine.run(enc, task(name))).map((r) => [...r]);
}

async function predictRows(texts, names) {
  requireOpen();
  const enc = state.tokenizer.encodeBatch(texts);
  return (await state.engine.runRows(enc, names.map(task))).map((r) => [...r]);
}

function showResults(texts, names, logits, ms) {
  const body = $("results").tBodies[0];
  body.replaceChildren(
    ...texts.map((text, i) => {
      const t = task(names[i]);
      const p = softmax(logits[i]);
      const k = p.indexOf(Math.max(...p));
      const tr = document.createElement("tr");
      for (const cell of [text, t.name, t.labels[k], p[k].toFixed(3)]) tr.insertCell().textContent = cell;
      return tr;
    }),
  );
  $("run-status").textContent = `${texts.length} text(s) in ${ms.toFixed(1)} ms (${(ms / texts.length).toFixed(1)} ms per text)`;
}

async function runUi() {
  const texts = textsFromBox();
  const name = $("task").value;
  const t0 = performance.now();
  const logits = await predict(texts, name);
  const ms = performance.now() - t0;
  state.timings.firstResult ??= performance.now();
  showResults(texts, texts.map(() => name), logits, ms);
  return logits;
}

async function runRowsUi() {
  const texts = textsFromBox();
  const names = [...state.tasks.keys()];
  const perRow = texts.map((_, i) => names[i % names.length]);
  const t0 = performance.now();
  const logits = await predictRows(texts, perRow);
  showResults(texts, perRow, logits, performance.now() - t0);
  return { tasks: perRow, logits };
}

// ------------------------------------------------------------------------------------------ train

function checkNewName(name) {
  checkTaskName(name);
  if (state.tasks.has(name)) {
    const where = state.tasks.get(name).source === "bundle" ? "in the bundle" : "in this browser";
    throw new Error(`task ${JSON.stringify(name)} already exists ${where}; choose another name. Nothing was trained or stored.`);
  }
}

/**
 * Train from texts/labels. init / batches: given by the parity test (the Python trainer's), else the page's own.
 * Returns {losses, task} and, unless store is false, keeps the task in IndexedDB and offers its file.
 */
async function trainWith({ name, texts, labels, labelNames, steps = 30, batchSize = 8, lr = 5e-3, headLr, seed = 0, init, batches, store = true }) {
  requireOpen();
  checkNewName(name);
  const numLabels = labelNames.length;
  const m = state.bundle.manifest;
  const hidden = m.base_model.hidden_size;
  const params = init
    ? {
        [COEFFICIENTS]: Float32Array.from(init[COEFFICIENTS]),
        [HEAD_WEIGHT]: Float32Array.from(init[HEAD_WEIGHT].flat()),
        [HEAD_BIAS]: Float32Array.from(init[HEAD_BIAS]),
      }
    : initParams(state.bundle.layout, numLabels, hidden, seed);
  const schedule = batches ?? batchSchedule(texts.length, batchSize, steps, seed);
  const rows = texts.map((t) => state.tokenizer.encodeOne(t).ids);
  const losses = [];
  const stepMs = [];
  $("train-progress").value = 0;
  $("download").hidden = true;
  let last = performance.now();
  await train({
    params,
    batches: schedule,
    lr,
    headLr,
    lossAndGrads: async (idx, p) => {
      const enc = padRows(idx.map((i) => rows[i]), state.tokenizer.padId);
      const out = await state.engine.trainStep(enc, idx.map((i) => labels[i]), p, numLabels);
      return out;
    },
    onStep: async ({ step, total, loss }) => {
      stepMs.push(performance.now() - last); // tokens -> train-step graph -> AdamW, without the painting below
      losses.push(loss);
      $("train-progress").value = step / total;
      $("train-status").textContent = `step ${step}/${total}: loss ${loss.toFixed(4)}`;
      drawLoss($("loss-plot"), losses, total);
      await new Promise((r) => setTimeout(r, 0)); // let the page paint the bar and the plot
      last = performance.now();
    },
  });
  const trained = {
    name,
    labels: labelNames,
    coefficients: params[COEFFICIENTS],
    headWeight: params[HEAD_WEIGHT],
    headBias: params[HEAD_BIAS],
    numLabels,
    info: { source: "web", trainer: "gradient", steps: losses.length, lr, batch_size: batchSize, losses },
  };
  const bytes = encodeTask(trained, m, state.bundle.layout);
  if (store) {
    checkNewName(name); // a second tab may have stored it meanwhile
    await storeTask(m.basis.fingerprint, name, bytes);
    state.tasks.set(name, { ...trained, source: "browser", bytes });
    refreshTasks();
    $("task").value = name;
    offerDownload(name, bytes);
  }
  $("train-status").textContent = `trained ${JSON.stringify(name)}: ${losses.length} steps, loss ${losses[0].toFixed(3)} -> ${losses.at(-1).toFixed(3)}; kept in this browser.`;
  return { losses, stepMs, bytes };
}

function offerDownload(name, bytes) {
  const link = $("download");
  if (link.href) URL.revokeObjectURL(link.href);
  link.href = URL.createObjectURL(new Blob([bytes], { type: "application/octet-stream" }));
  link.download = taskFile(name).split("/").pop();
  link.textContent = `Download ${link.download} (${(bytes.byteLength / 1024).toFixed(1)} KB; edge-eigenlora-device loads it as is)`;
  link.hidden = false;
}

async function trainUi() {
  const name = $("train-name").value.trim();
  checkNewName(name);
  const data = readLabelledCsv($("csv").value, "the training CSV");
  const steps = Number($("steps").value), batchSize = Number($("batch").value), lr = Number($("lr").value);
  if (!(steps >= 1) || !(batchSize >= 1) || !(lr > 0)) throw new Error("steps and batch must be >= 1 and the learning rate > 0.");
  const out = await trainWith({ name, ...data, steps, batchSize, lr });
  await runUi();
  return out;
}

// ------------------------------------------------------------------------------------------ wiring

$("open").onclick = () => guarded(() => openUrl($("bundle-url").value)).catch(() => {});
$("run").onclick = () => guarded(runUi).catch(() => {});
$("run-rows").onclick = () => guarded(runRowsUi).catch(() => {});
$("train").onclick = () => guarded(trainUi).catch(() => {});
$("task").onchange = () => state.engine && $("run").click();
$("csv-file").onchange = async (e) => {
  const file = e.target.files[0];
  if (file) $("csv").value = await file.text();
};

window.edgeEigenlora = {
  state,
  open: (url) => guarded(() => openUrl(url)),
  predict,
  predictRows,
  tokenize: (texts) => texts.map((t) => state.tokenizer.encodeOne(t).ids),
  trainWith: (opts) => guarded(() => trainWith(opts)).then((r) => ({ losses: r.losses, stepMs: r.stepMs })),
  trainUi: () => guarded(trainUi).then((r) => ({ losses: r.losses })),
  runUi: () => guarded(runUi),
  runRowsUi: () => guarded(runRowsUi),
  memory: () => ({ jsHeap: performance.memory?.usedJSHeapSize ?? null }),
  ready: true,
};

if (params.get("bundle")) $("bundle-url").value = params.get("bundle");
if (params.has("autorun")) {
  guarded(async () => {
    await openUrl($("bundle-url").value);
    await runUi();
  }).catch(() => {});
}
