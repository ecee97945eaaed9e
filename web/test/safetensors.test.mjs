import assert from "node:assert/strict";
import { test } from "node:test";

import { readSafetensors, writeSafetensors } from "../src/safetensors.js";
import { bytes } from "./golden.mjs";

test("a task file written by Python reads, writes and reads back to the same tensors and metadata", () => {
  for (const name of ["topic", "sentiment"]) {
    const original = readSafetensors(bytes(`bundle/tasks/${name}.safetensors`), name);
    assert.ok(Object.keys(original.tensors).length > 20);
    const written = writeSafetensors(original.tensors, original.metadata);
    const again = readSafetensors(written, "written");
    assert.deepEqual(again.metadata, original.metadata);
    assert.deepEqual(Object.keys(again.tensors).sort(), Object.keys(original.tensors).sort());
    for (const [key, t] of Object.entries(original.tensors)) {
      assert.deepEqual(again.tensors[key].shape, t.shape, key);
      assert.deepEqual([...again.tensors[key].data], [...t.data], key);
    }
    const headerLength = Number(new DataView(written.buffer).getBigUint64(0, true));
    assert.equal(headerLength % 8, 0, "the header is padded to 8 bytes like the Python writer's");
  }
});

test("all the dtypes a bundle uses round trip, int64 included", () => {
  const tensors = {
    a: { shape: [2, 2], data: Float32Array.from([1.5, -2, 3.25, 1e-30]) },
    b: { shape: [3], data: BigInt64Array.from([1n, -2n, 9007199254740993n]) },
    c: { shape: [0], data: new Float32Array(0) },
  };
  const back = readSafetensors(writeSafetensors(tensors, { k: "v" })).tensors;
  assert.deepEqual([...back.a.data], [...tensors.a.data]);
  assert.deepEqual([...back.b.data], [...tensors.b.data]);
  assert.deepEqual(back.c.shape, [0]);
});

test("damaged files are refused with the file named", () => {
  assert.throws(() => readSafetensors(new Uint8Array(4), "task x"), /task x: only 4 bytes/);
  const good = writeSafetensors({ a: { shape: [2], data: Float32Array.from([1, 2]) } });
  assert.throws(() => readSafetensors(good.slice(0, good.length - 4), "task y"), /task y: tensor a's data_offsets/);
  const bad = good.slice();
  bad[8] = "!".charCodeAt(0);
  assert.throws(() => readSafetensors(bad, "task z"), /task z: the header is not JSON/);
});
