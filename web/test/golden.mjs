// The Android goldens (android_demo/core/src/test/resources/golden), written from a real exported bundle by
// scripts/make_android_goldens.py: the page's pure modules are checked against the same numbers as Kotlin's.

import fs from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";

export const GOLDEN = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../../android_demo/core/src/test/resources/golden");

export const json = (rel) => JSON.parse(fs.readFileSync(path.join(GOLDEN, rel), "utf-8"));
export const bytes = (rel) => new Uint8Array(fs.readFileSync(path.join(GOLDEN, rel)));
export const f32 = (rel) => {
  const b = bytes(rel);
  return new Float32Array(b.buffer, b.byteOffset, b.byteLength / 4).slice();
};

/**
 * The goldens keep vocab.txt and tokenizer_config.json, not tokenizer.json (0.7 MB). This is the definition
 * transformers writes as tokenizer.json for a BertTokenizerFast with that vocabulary and config (the real bundle's
 * file has exactly these parts); the browser test runs the bundle's own tokenizer.json on the same texts.
 */
export function bertTokenizerJson(vocabText, config) {
  const vocab = {};
  vocabText.split("\n").forEach((token, i) => {
    if (token !== "" || i < vocabText.split("\n").length - 1) vocab[token.replace(/\r$/, "")] = i;
  });
  const added = Object.entries(config.added_tokens_decoder).map(([id, t]) => ({ id: Number(id), ...t }));
  const special = (name) => ({ id: config[name], ids: [vocab[config[name]]], tokens: [config[name]] });
  return {
    version: "1.0",
    truncation: null,
    padding: null,
    added_tokens: added,
    normalizer: {
      type: "BertNormalizer",
      clean_text: true,
      handle_chinese_chars: config.tokenize_chinese_chars ?? true,
      strip_accents: config.strip_accents ?? null,
      lowercase: config.do_lower_case ?? true,
    },
    pre_tokenizer: { type: "BertPreTokenizer" },
    post_processor: {
      type: "TemplateProcessing",
      single: [{ SpecialToken: { id: config.cls_token, type_id: 0 } }, { Sequence: { id: "A", type_id: 0 } }, { SpecialToken: { id: config.sep_token, type_id: 0 } }],
      pair: [],
      special_tokens: { [config.cls_token]: special("cls_token"), [config.sep_token]: special("sep_token") },
    },
    decoder: { type: "WordPiece", prefix: "##", cleanup: true },
    model: { type: "WordPiece", unk_token: config.unk_token, continuing_subword_prefix: "##", max_input_chars_per_word: 100, vocab },
  };
}
