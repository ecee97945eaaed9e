import assert from "node:assert/strict";
import { test } from "node:test";

import * as contract from "../src/contract.js";
import { layoutFromManifest, pack, unpack } from "../src/packing.js";
import { decodeTask, encodeTask } from "../src/task.js";
import { bytes, f32, json } from "./golden.mjs";

const manifest = json("bundle/manifest.json");
const layout = layoutFromManifest(manifest);

test("the layout read from the manifest is Python's: sorted modules, size 3072", () => {
  assert.equal(layout.size, manifest.coefficients.size);
  assert.equal(layout.size, json("packed.json").topic.size);
  assert.deepEqual(layout.modules, [...layout.modules].sort());
});

test("packing a task file's coefficients equals bundle.pack bit for bit", () => {
  for (const name of ["sentiment", "topic"]) {
    const task = decodeTask(bytes(`bundle/tasks/${name}.safetensors`), manifest, layout, name);
    const expected = f32(`packed_${name}.bin`);
    assert.equal(task.coefficients.length, expected.length);
    assert.deepEqual([...task.coefficients], [...expected], name);
    assert.deepEqual(task.labels, manifest.tasks[name].labels);
    assert.deepEqual([...pack(unpack(task.coefficients, layout), layout)], [...expected]);
  }
});

test("a task the page writes decodes to the same task (what Python then loads)", () => {
  const task = decodeTask(bytes("bundle/tasks/topic.safetensors"), manifest, layout, "topic");
  const again = decodeTask(encodeTask({ ...task, name: "topic-copy" }, manifest, layout), manifest, layout, "copy");
  assert.equal(again.name, "topic-copy");
  assert.deepEqual([...again.coefficients], [...task.coefficients]);
  assert.deepEqual([...again.headWeight], [...task.headWeight]);
  assert.deepEqual([...again.headBias], [...task.headBias]);
  assert.deepEqual(again.labels, task.labels);
});

test("a task of another basis, a wrong shape or a bad name is refused with the fix", () => {
  const other = { ...manifest, basis: { ...manifest.basis, fingerprint: "f".repeat(64) } };
  assert.throws(() => decodeTask(bytes("bundle/tasks/topic.safetensors"), other, layout, "t"), /was trained for basis .* re-train the task/);
  const coefficients = unpack(new Float32Array(layout.size), layout);
  coefficients[layout.modules[0]][0] = new Float32Array(3);
  assert.throws(() => pack(coefficients, layout, "t"), /alpha_A has 3 values, the layout expects/);
  assert.throws(() => contract.checkTaskName("../evil"), /not allowed/);
  const broken = { ...manifest, coefficients: { ...manifest.coefficients, size: 7 } };
  assert.throws(() => layoutFromManifest(broken, "m.json"), /m.json: field 'coefficients' has size 7/);
});

test("the contract names match the real manifest's graph inputs and outputs", () => {
  const full = json("manifest_full.json");
  const shared = full.graphs.find((g) => g.variant === contract.SHARED);
  assert.deepEqual(shared.inputs.map((i) => i.name), [contract.INPUT_IDS, contract.ATTENTION_MASK, contract.COEFFICIENTS, contract.HEAD_WEIGHT, contract.HEAD_BIAS]);
  const train = full.graphs.find((g) => g.variant === contract.TRAIN_STEP);
  assert.deepEqual(train.inputs.map((i) => i.name), [contract.INPUT_IDS, contract.ATTENTION_MASK, contract.LABELS, contract.COEFFICIENTS, contract.HEAD_WEIGHT, contract.HEAD_BIAS]);
  assert.deepEqual(train.outputs.map((o) => o.name), [contract.LOSS, contract.LOGITS, ...contract.TRAIN_PARAMS.map((p) => contract.GRAD_PREFIX + p)]);
});
