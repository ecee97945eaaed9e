// The bundle's graphs on onnxruntime-web (WebAssembly): one session per variant, created on first use and kept,
// so a task switch only changes the coefficient inputs. The train-step graph is an ordinary inference graph whose
// outputs are the loss and the gradients: training needs no ONNX Runtime training build.

import * as ort from "onnxruntime-web";
import {
  ATTENTION_MASK,
  COEFFICIENTS,
  GRAD_PREFIX,
  HEAD_BIAS,
  HEAD_WEIGHT,
  INPUT_IDS,
  LABELS,
  LOGITS,
  LOSS,
  PER_ROW,
  SHARED,
  TRAIN_PARAMS,
  TRAIN_STEP,
} from "./contract.js";

/** wasm settings before the first session: threads (1 without cross-origin isolation) and where the .wasm lives. */
export function configureOrt({ threads = 1, wasmPaths } = {}) {
  ort.env.wasm.numThreads = threads;
  if (wasmPaths) ort.env.wasm.wasmPaths = wasmPaths;
  ort.env.logLevel = "error";
}

export class Engine {
  constructor(bundle) {
    this.bundle = bundle;
    this.manifest = bundle.manifest;
    this.hidden = bundle.manifest.base_model.hidden_size;
    this.sessions = new Map();
  }

  has(variant) {
    return this.manifest.graphs.some((g) => g.variant === variant);
  }

  async session(variant) {
    if (!this.sessions.has(variant)) {
      const graph = this.manifest.graphs.find((g) => g.variant === variant);
      if (!graph) throw new Error(`this bundle has no '${variant}' graph; re-export it with that variant.`);
      const externalData = (graph.external_data ?? []).map((path) => ({ path, data: this.bundle.files.get(path) }));
      const created = ort.InferenceSession.create(this.bundle.files.get(graph.file), {
        executionProviders: ["wasm"],
        graphOptimizationLevel: "all",
        externalData,
      });
      this.sessions.set(variant, created);
      try {
        await created;
      } catch (exc) {
        this.sessions.delete(variant);
        throw new Error(`onnxruntime-web cannot load ${graph.file} (${exc.message ?? exc}); re-copy or re-export the bundle.`);
      }
    }
    return this.sessions.get(variant);
  }

  tokens(enc) {
    return {
      [INPUT_IDS]: new ort.Tensor("int64", enc.ids, [enc.batch, enc.width]),
      [ATTENTION_MASK]: new ort.Tensor("int64", enc.mask, [enc.batch, enc.width]),
    };
  }

  taskFeeds(task) {
    return {
      [COEFFICIENTS]: new ort.Tensor("float32", task.coefficients, [task.coefficients.length]),
      [HEAD_WEIGHT]: new ort.Tensor("float32", task.headWeight, [task.numLabels, this.hidden]),
      [HEAD_BIAS]: new ort.Tensor("float32", task.headBias, [task.numLabels]),
    };
  }

  /** One task for every row: logits rows (Float32Array of numLabels each). */
  async run(enc, task) {
    const session = await this.session(SHARED);
    const out = await session.run({ ...this.tokens(enc), ...this.taskFeeds(task) });
    return rows(out[LOGITS].data, enc.batch, task.numLabels);
  }

  /** Row i runs tasks[i] in one per-row graph call; heads padded like bundle.row_feeds (zero rows, bias -inf). */
  async runRows(enc, tasks) {
    if (tasks.length !== enc.batch) throw new Error(`${enc.batch} rows but ${tasks.length} tasks; give one task per row.`);
    if (!this.has(PER_ROW)) {
      const out = [];
      for (let i = 0; i < tasks.length; i++) out.push((await this.run(sliceRow(enc, i), tasks[i]))[0]);
      return out;
    }
    const size = tasks[0].coefficients.length;
    const width = Math.max(...tasks.map((t) => t.numLabels));
    const coeff = new Float32Array(tasks.length * size);
    const hw = new Float32Array(tasks.length * width * this.hidden);
    const hb = new Float32Array(tasks.length * width).fill(-Infinity);
    tasks.forEach((t, i) => {
      coeff.set(t.coefficients, i * size);
      hw.set(t.headWeight, i * width * this.hidden);
      hb.set(t.headBias, i * width);
    });
    const session = await this.session(PER_ROW);
    const out = await session.run({
      ...this.tokens(enc),
      [COEFFICIENTS]: new ort.Tensor("float32", coeff, [tasks.length, size]),
      [HEAD_WEIGHT]: new ort.Tensor("float32", hw, [tasks.length, width, this.hidden]),
      [HEAD_BIAS]: new ort.Tensor("float32", hb, [tasks.length, width]),
    });
    return rows(out[LOGITS].data, enc.batch, width).map((r, i) => r.slice(0, tasks[i].numLabels));
  }

  /** Loss, logits and gradients of one batch from the train-step graph; params: {coefficients, head_weight, head_bias}. */
  async trainStep(enc, labels, params, numLabels) {
    const session = await this.session(TRAIN_STEP);
    const out = await session.run({
      ...this.tokens(enc),
      [LABELS]: new ort.Tensor("int64", BigInt64Array.from(labels, BigInt), [labels.length]),
      [COEFFICIENTS]: new ort.Tensor("float32", params[COEFFICIENTS], [params[COEFFICIENTS].length]),
      [HEAD_WEIGHT]: new ort.Tensor("float32", params[HEAD_WEIGHT], [numLabels, this.hidden]),
      [HEAD_BIAS]: new ort.Tensor("float32", params[HEAD_BIAS], [numLabels]),
    });
    const grads = Object.fromEntries(TRAIN_PARAMS.map((p) => [p, Float32Array.from(out[GRAD_PREFIX + p].data)]));
    return { loss: Number(out[LOSS].data[0]), logits: rows(out[LOGITS].data, enc.batch, numLabels), grads };
  }
}

function rows(data, batch, width) {
  return Array.from({ length: batch }, (_, i) => Float32Array.from(data.subarray(i * width, (i + 1) * width)));
}

function sliceRow(enc, i) {
  const ids = enc.ids.slice(i * enc.width, (i + 1) * enc.width);
  const mask = enc.mask.slice(i * enc.width, (i + 1) * enc.width);
  return { ids, mask, batch: 1, width: enc.width };
}
