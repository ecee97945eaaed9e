// Open a bundle served over HTTP: read manifest.json, fetch the files the page uses and check each one's sha256
// with WebCrypto against the manifest BEFORE anything uses it (a tampered graph never reaches onnxruntime).

import { FORMAT, MANIFEST, PER_ROW, READABLE_VERSIONS, SHARED, TRAIN_STEP } from "./contract.js";
import { layoutFromManifest } from "./packing.js";

export async function sha256Hex(bytes) {
  const digest = await crypto.subtle.digest("SHA-256", bytes);
  return [...new Uint8Array(digest)].map((b) => b.toString(16).padStart(2, "0")).join("");
}

/** Check the manifest fields the page relies on; every message names manifest.json's field and the fix. */
export function checkManifest(manifest, where) {
  const bad = (field, why) => new Error(`${where}: field '${field}' ${why}; the manifest is damaged: re-export the bundle.`);
  if (manifest === null || typeof manifest !== "object" || manifest.format !== FORMAT) {
    throw new Error(`${where}: field 'format' is not ${JSON.stringify(FORMAT)}; this is not an edge-eigenlora bundle.`);
  }
  if (!READABLE_VERSIONS.includes(manifest.format_version)) {
    throw new Error(`${where}: format_version ${JSON.stringify(manifest.format_version)} is not supported (this page reads ${READABLE_VERSIONS}); update the page or re-export the bundle.`);
  }
  if (manifest.kind !== "classification") throw new Error(`${where}: kind is ${JSON.stringify(manifest.kind)}; the page runs classification bundles.`);
  if (!Number.isInteger(manifest.base_model?.hidden_size)) throw bad("base_model.hidden_size", "must be an integer");
  if (typeof manifest.basis?.fingerprint !== "string") throw bad("basis.fingerprint", "must be a string");
  if (!Array.isArray(manifest.graphs)) throw bad("graphs", "must be a list");
  if (!manifest.graphs.some((g) => g.variant === SHARED)) throw new Error(`${where}: the bundle has no '${SHARED}' graph; re-export it with that variant.`);
  if (manifest.files === null || typeof manifest.files !== "object") throw bad("files", "must map file names to sha256 digests");
  for (const [rel, digest] of Object.entries(manifest.files)) {
    if (!/^[0-9a-f]{64}$/.test(digest)) throw bad(`files.${rel}`, "must be a sha256 hex digest");
    if (rel.startsWith("/") || rel.includes("\\") || rel.split("/").includes("..")) throw bad(`files.${rel}`, "leaves the bundle folder");
  }
  const tok = manifest.tokenizer?.files ?? [];
  if (!tok.some((f) => f.endsWith("tokenizer.json"))) throw bad("tokenizer.files", "lists no tokenizer.json, so the page cannot tokenize");
  return layoutFromManifest(manifest, where);
}

/** The files the page uses: its graphs (+ external data), the tokenizer, the tasks. Never the .ort forms. */
export function neededFiles(manifest) {
  const graphs = manifest.graphs.filter((g) => [SHARED, PER_ROW, TRAIN_STEP].includes(g.variant));
  const files = graphs.flatMap((g) => [g.file, ...(g.external_data ?? [])]);
  files.push(...manifest.tokenizer.files.filter((f) => f.endsWith("tokenizer.json") || f.endsWith("tokenizer_config.json")));
  files.push(...Object.values(manifest.tasks ?? {}).map((t) => t.file));
  return [...new Set(files)];
}

/**
 * Fetch and verify a bundle. base: the folder's URL. onProgress({file, done, total}) after each verified file.
 * Returns {base, manifest, layout, files: Map(rel -> Uint8Array), bytes}.
 */
export async function openBundle(base, { onProgress = () => {}, fetchImpl = fetch } = {}) {
  const root = base.endsWith("/") ? base : `${base}/`;
  const where = `${root}${MANIFEST}`;
  let response;
  try {
    response = await fetchImpl(where, { cache: "no-store" });
  } catch (exc) {
    throw new Error(`${where} cannot be fetched (${exc.message}): give the URL of a bundle folder served on this machine (edge-eigenlora-device serve BUNDLE).`);
  }
  if (!response.ok) {
    throw new Error(`${root} is not a bundle: ${where} answered HTTP ${response.status}. Give the URL of a bundle folder (one that has ${MANIFEST}).`);
  }
  let manifest;
  try {
    manifest = JSON.parse(await response.text());
  } catch (exc) {
    throw new Error(`${root} is not a bundle: ${where} is not JSON (${exc.message}).`);
  }
  const layout = checkManifest(manifest, where);
  const needed = neededFiles(manifest);
  const files = new Map();
  let bytes = 0;
  for (const [i, rel] of needed.entries()) {
    const expected = manifest.files[rel];
    if (!expected) throw new Error(`${where}: ${rel} is used but has no sha256 under 'files'; re-export the bundle.`);
    const r = await fetchImpl(root + rel, { cache: "no-store" });
    if (!r.ok) throw new Error(`bundle file ${rel} cannot be fetched (HTTP ${r.status}); re-copy the bundle.`);
    const data = new Uint8Array(await r.arrayBuffer());
    const actual = await sha256Hex(data);
    if (actual !== expected) {
      throw new Error(
        `bundle file ${rel}: sha256 mismatch (manifest ${expected.slice(0, 12)}, file ${actual.slice(0, 12)}); ` +
          "the file was modified or corrupted: re-copy the bundle or re-export it. Nothing was loaded.",
      );
    }
    files.set(rel, data);
    bytes += data.byteLength;
    onProgress({ file: rel, done: i + 1, total: needed.length });
  }
  return { base: root, manifest, layout, files, bytes };
}
