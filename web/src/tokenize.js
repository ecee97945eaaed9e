// Text -> (input_ids, attention_mask) with the bundle's own tokenizer.json through @huggingface/tokenizers,
// matching runtime/tokenize.py: truncation at max_length keeps the special tokens, right padding to the longest.

import { Tokenizer } from "@huggingface/tokenizers";

// Rust's tokenizers lowercase one character at a time (Σ -> σ always); JS's toLowerCase applies the Unicode
// Final_Sigma rule (word-final Σ -> ς), which changes WordPiece pieces. Pre-mapping Σ keeps the two equal.
function lowercases(normalizer) {
  if (!normalizer) return false;
  if (normalizer.type === "BertNormalizer") return normalizer.lowercase !== false;
  if (normalizer.type === "Lowercase") return true;
  if (normalizer.type === "Sequence") return (normalizer.normalizers ?? []).some(lowercases);
  return false;
}

export class BundleTokenizer {
  /** tokenizerJson / tokenizerConfig: the parsed files; maxLength and padId from the manifest's tokenizer. */
  constructor(tokenizerJson, tokenizerConfig, { maxLength, padId = 0 }) {
    if (!(maxLength >= 2)) throw new Error(`max_length must be >= 2, got ${maxLength}.`);
    this.tok = new Tokenizer(tokenizerJson, tokenizerConfig ?? {});
    this.maxLength = maxLength;
    this.padId = padId;
    this.sigma = lowercases(tokenizerJson.normalizer);
  }

  /** One text's ids (with special tokens), truncated to maxLength; `cut` says whether it was. */
  encodeOne(text) {
    if (typeof text !== "string") throw new Error(`a text must be a string, got ${typeof text}.`);
    const input = this.sigma ? text.replaceAll("Σ", "σ") : text;
    const full = this.tok.encode(input).ids;
    if (full.length <= this.maxLength) return { ids: full, cut: false };
    const inner = this.tok.encode(input, { add_special_tokens: false }).ids;
    const specials = full.length - inner.length;
    const start = findRun(full, inner);
    const keep = Math.max(0, this.maxLength - specials);
    return { ids: [...full.slice(0, start), ...inner.slice(0, keep), ...full.slice(start + inner.length)], cut: true };
  }

  /** Texts -> {ids, mask: BigInt64Array [batch*width], batch, width, cut: indices of truncated texts}. */
  encodeBatch(texts) {
    if (!texts.length) throw new Error("no texts given: enter at least one text.");
    const rows = texts.map((t) => this.encodeOne(t));
    return { ...padRows(rows.map((r) => r.ids), this.padId), cut: rows.flatMap((r, i) => (r.cut ? [i] : [])) };
  }
}

function findRun(full, inner) {
  for (let s = 0; s + inner.length <= full.length; s++) {
    let ok = true;
    for (let j = 0; j < inner.length && ok; j++) ok = full[s + j] === inner[j];
    if (ok) return s;
  }
  throw new Error("the tokenizer's special tokens are not around the text; this tokenizer is not supported.");
}

/** Right-pad id rows to the longest: int64 ids and mask, as the graphs take them. */
export function padRows(rows, padId = 0) {
  const batch = rows.length;
  const width = Math.max(...rows.map((r) => r.length));
  const ids = new BigInt64Array(batch * width).fill(BigInt(padId));
  const mask = new BigInt64Array(batch * width);
  rows.forEach((r, i) => {
    r.forEach((id, j) => {
      ids[i * width + j] = BigInt(id);
      mask[i * width + j] = 1n;
    });
  });
  return { ids, mask, batch, width };
}
