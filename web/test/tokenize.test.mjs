import assert from "node:assert/strict";
import fs from "node:fs";
import path from "node:path";
import { test } from "node:test";

import { BundleTokenizer, padRows } from "../src/tokenize.js";
import { GOLDEN, bertTokenizerJson, json } from "./golden.mjs";

const vocab = fs.readFileSync(path.join(GOLDEN, "bundle/tokenizer/vocab.txt"), "utf-8");
const config = json("bundle/tokenizer/tokenizer_config.json");
const definition = bertTokenizerJson(vocab, config);
const golden = json("tokenizer_cases.json");

test("token ids equal Python's (tokenizers) on every tricky golden text, truncation included", () => {
  assert.ok(golden.cases.length >= 27);
  const byLength = new Map();
  for (const c of golden.cases) {
    if (!byLength.has(c.max_length)) byLength.set(c.max_length, new BundleTokenizer(definition, config, { maxLength: c.max_length }));
    const { ids, cut } = byLength.get(c.max_length).encodeOne(c.text);
    assert.deepEqual(ids, c.ids, `text ${JSON.stringify(c.text.slice(0, 60))}`);
    assert.equal(ids.length <= c.max_length, true);
    if (cut) assert.equal(ids.length, c.max_length);
  }
});

test("a word-final capital sigma is lowercased one character at a time, as Rust's tokenizers do", () => {
  const tok = new BundleTokenizer(definition, config, { maxLength: 128 });
  assert.deepEqual(tok.encodeOne("ΟΔΟΣ").ids, tok.encodeOne("οδοσ").ids);
});

test("a batch is right-padded to its longest row with an attention mask", () => {
  const tok = new BundleTokenizer(definition, config, { maxLength: 128, padId: 0 });
  const enc = tok.encodeBatch(["a b c d", "x"]);
  assert.equal(enc.batch, 2);
  assert.equal(enc.width, 6);
  assert.deepEqual([...enc.mask], [1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0].map(BigInt));
  assert.equal(enc.ids[9], 0n);
  assert.deepEqual(padRows([[5]], 7).ids, BigInt64Array.from([5n]));
  assert.throws(() => tok.encodeBatch([]), /no texts given/);
});
