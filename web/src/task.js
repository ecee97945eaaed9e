// A task file as the page reads and writes it: the same safetensors the Python runtime uses (task.py), so a task
// trained in the browser is a file `edge-eigenlora-device` loads unchanged, and the reverse.

import {
  ALPHA_A,
  ALPHA_B,
  HEAD_BIAS_TENSOR,
  HEAD_WEIGHT_TENSOR,
  TASK_FORMAT,
  TASK_FORMAT_VERSION,
  checkTaskName,
} from "./contract.js";
import { pack, unpack } from "./packing.js";
import { readSafetensors, writeSafetensors } from "./safetensors.js";

/** Task bytes -> {name, labels, coefficients (packed), headWeight [labels*hidden], headBias, numLabels, info}. */
export function decodeTask(bytes, manifest, layout, where = "task file") {
  const { tensors, metadata } = readSafetensors(bytes, where);
  if (metadata.format !== TASK_FORMAT) throw new Error(`${where}: metadata field 'format' is ${JSON.stringify(metadata.format)}; not a task file.`);
  if (metadata.format_version !== TASK_FORMAT_VERSION) {
    throw new Error(`${where}: task format_version ${JSON.stringify(metadata.format_version)} is not supported (this page reads ${TASK_FORMAT_VERSION}).`);
  }
  const expected = manifest.basis.fingerprint;
  if (metadata.basis_fingerprint !== expected) {
    throw new Error(
      `${where} was trained for basis ${String(metadata.basis_fingerprint).slice(0, 12)} but this bundle carries basis ` +
        `${expected.slice(0, 12)}. Coefficients only mean something on their own basis: re-train the task on this bundle.`,
    );
  }
  const coefficients = {};
  for (const [name, t] of Object.entries(tensors)) {
    if (name.endsWith(`.${ALPHA_A}`)) {
      const m = name.slice(0, -ALPHA_A.length - 1);
      const b = tensors[`${m}.${ALPHA_B}`];
      if (!b) throw new Error(`${where}: ${m}.${ALPHA_B} is missing; the task file is incomplete.`);
      coefficients[m] = [f32(t, where, name), f32(b, where, `${m}.${ALPHA_B}`)];
    }
  }
  const hw = tensors[HEAD_WEIGHT_TENSOR];
  const hidden = manifest.base_model.hidden_size;
  if (!hw || hw.shape.length !== 2 || hw.shape[1] !== hidden) {
    throw new Error(`${where}: field '${HEAD_WEIGHT_TENSOR}' must have shape [labels, ${hidden}] (got ${hw ? `[${hw.shape}]` : "none"}); the head was trained for another model.`);
  }
  const numLabels = hw.shape[0];
  const hb = tensors[HEAD_BIAS_TENSOR];
  if (hb && (hb.shape.length !== 1 || hb.shape[0] !== numLabels)) throw new Error(`${where}: ${HEAD_BIAS_TENSOR} has shape [${hb.shape}], expected [${numLabels}].`);
  let labels = [];
  let info = {};
  try {
    labels = JSON.parse(metadata.labels ?? "[]");
    info = JSON.parse(metadata.info ?? "{}");
  } catch (exc) {
    throw new Error(`${where}: metadata field 'labels' or 'info' is not valid JSON (${exc.message}).`);
  }
  if (labels.length && labels.length !== numLabels) throw new Error(`${where}: metadata field 'labels' names ${labels.length} labels but head.weight has ${numLabels} rows.`);
  const headWeight = f32(hw, where, HEAD_WEIGHT_TENSOR);
  const headBias = hb ? f32(hb, where, HEAD_BIAS_TENSOR) : new Float32Array(numLabels);
  if (!headWeight.every(Number.isFinite) || !headBias.every(Number.isFinite)) throw new Error(`${where}: the head contains NaN or Inf.`);
  return {
    name: metadata.name ?? "",
    labels: labels.length ? labels : Array.from({ length: numLabels }, (_, i) => String(i)),
    coefficients: pack(coefficients, layout, where),
    headWeight,
    headBias,
    numLabels,
    info,
  };
}

function f32(t, where, name) {
  if (t.dtype !== "F32") throw new Error(`${where}: tensor ${name} is ${t.dtype}, expected F32.`);
  return t.data;
}

/** A task (packed coefficients + head) -> task file bytes that edge_eigenlora.task.load_task reads. */
export function encodeTask(task, manifest, layout) {
  checkTaskName(task.name);
  const tensors = {};
  for (const [m, [a, b]] of Object.entries(unpack(task.coefficients, layout))) {
    tensors[`${m}.${ALPHA_A}`] = { shape: [layout.widths[m], layout.rank], data: a };
    tensors[`${m}.${ALPHA_B}`] = { shape: [layout.widths[m], layout.rank], data: b };
  }
  const hidden = manifest.base_model.hidden_size;
  tensors[HEAD_WEIGHT_TENSOR] = { shape: [task.numLabels, hidden], data: Float32Array.from(task.headWeight) };
  tensors[HEAD_BIAS_TENSOR] = { shape: [task.numLabels], data: Float32Array.from(task.headBias) };
  return writeSafetensors(tensors, {
    format: TASK_FORMAT,
    format_version: TASK_FORMAT_VERSION,
    name: task.name,
    basis_fingerprint: manifest.basis.fingerprint,
    kind: "classification",
    labels: JSON.stringify(task.labels),
    info: JSON.stringify(task.info ?? {}),
  });
}
