// The packed coefficient vector (bundle.py's CoefficientLayout): basis modules in sorted name order; for each,
// alpha_A (width x r, row-major) then alpha_B. One float32 vector per task is what the graphs take as input.

import { ALPHA_A, ALPHA_B } from "./contract.js";

/** The layout from manifest.coefficients, checked like bundle._read_layout (sorted, contiguous, float32). */
export function layoutFromManifest(manifest, where = "manifest.json") {
  const c = manifest?.coefficients;
  const bad = (why) => new Error(`${where}: field 'coefficients' ${why}; the manifest is damaged: re-export the bundle.`);
  if (!c || !Array.isArray(c.segments) || !Number.isInteger(c.rank) || c.rank < 1) throw bad("needs 'rank' and 'segments'");
  if (c.dtype !== undefined && c.dtype !== "float32") throw bad(`has dtype ${JSON.stringify(c.dtype)}, not float32`);
  const widths = {};
  for (const seg of c.segments) {
    const name = String(seg?.name ?? "");
    const dot = name.lastIndexOf(".");
    if (name.slice(dot + 1) === ALPHA_A && Array.isArray(seg.shape)) widths[name.slice(0, dot)] = seg.shape[0];
  }
  const layout = makeLayout(widths, c.rank);
  if (JSON.stringify(segments(layout)) !== JSON.stringify(c.segments.map((s) => ({ name: s.name, offset: s.offset, shape: s.shape })))) {
    throw bad("is inconsistent (segments are not the sorted, contiguous alpha_A/alpha_B layout)");
  }
  if (layout.size !== c.size) throw bad(`has size ${c.size}, its segments add up to ${layout.size}`);
  return layout;
}

/** A layout from module widths and rank (modules sorted like Python's sorted()). */
export function makeLayout(widths, rank) {
  const modules = Object.keys(widths).sort(byCodePoint);
  const offsets = {};
  let size = 0;
  for (const m of modules) {
    offsets[m] = size;
    size += 2 * widths[m] * rank;
  }
  return { modules, widths: { ...widths }, rank, size, offsets };
}

// Python sorts str by code point; JS's default sort compares UTF-16 units (differs only past U+FFFF).
function byCodePoint(a, b) {
  const x = [...a].map((ch) => ch.codePointAt(0));
  const y = [...b].map((ch) => ch.codePointAt(0));
  for (let i = 0; i < Math.min(x.length, y.length); i++) if (x[i] !== y[i]) return x[i] - y[i];
  return x.length - y.length;
}

export function segments(layout) {
  const out = [];
  let offset = 0;
  for (const m of layout.modules) {
    for (const side of [ALPHA_A, ALPHA_B]) {
      out.push({ name: `${m}.${side}`, offset, shape: [layout.widths[m], layout.rank] });
      offset += layout.widths[m] * layout.rank;
    }
  }
  return out;
}

/** {module: [alphaA, alphaB]} (Float32Array, width*r each) -> the packed Float32Array [size]. */
export function pack(coefficients, layout, where = "task") {
  const missing = layout.modules.filter((m) => !(m in coefficients));
  const extra = Object.keys(coefficients).filter((m) => !(m in layout.widths));
  if (missing.length || extra.length) {
    throw new Error(
      `${where}: coefficients do not fit the bundle layout: missing modules ${JSON.stringify(missing.slice(0, 3))}, ` +
        `unknown modules ${JSON.stringify(extra.slice(0, 3))}. The task belongs to another basis or model: re-train it on this bundle.`,
    );
  }
  const out = new Float32Array(layout.size);
  for (const m of layout.modules) {
    const n = layout.widths[m] * layout.rank;
    coefficients[m].forEach((arr, side) => {
      if (arr.length !== n) {
        throw new Error(
          `${where}: ${m}.${side ? ALPHA_B : ALPHA_A} has ${arr.length} values, the layout expects ${n} ` +
            `([${layout.widths[m]}, ${layout.rank}]); re-train the task at rank ${layout.rank} on this bundle's basis.`,
        );
      }
      out.set(arr, layout.offsets[m] + side * n);
    });
  }
  if (!out.every(Number.isFinite)) throw new Error(`${where}: coefficients contain NaN or Inf; re-train the task.`);
  return out;
}

/** Inverse of pack: the packed vector -> {module: [alphaA, alphaB]}. */
export function unpack(vector, layout) {
  if (vector.length !== layout.size) throw new Error(`coefficient vector has ${vector.length} values, the bundle expects ${layout.size}.`);
  const out = {};
  for (const m of layout.modules) {
    const n = layout.widths[m] * layout.rank;
    const off = layout.offsets[m];
    out[m] = [Float32Array.from(vector.subarray(off, off + n)), Float32Array.from(vector.subarray(off + n, off + 2 * n))];
  }
  return out;
}
