// Fine-tune a new task in the page: the train-step graph gives loss and gradients, AdamW (adamw.js) updates.
// The recipe is the Python device trainer's (runtime/trainer.py): alpha_A uniform(+-1/sqrt(width)), alpha_B = 0,
// head N(0, 0.02), zero bias, a seeded permutation per epoch, mean cross-entropy. The page's generator is not
// numpy's, so a test that compares losses passes the same init and batches to both (`init`, `batches`).

import { COEFFICIENTS, HEAD_BIAS, HEAD_WEIGHT } from "./contract.js";
import { AdamW } from "./adamw.js";

/** A small seeded generator (mulberry32) for the init and the shuffles: reproducible runs in the page. */
export function rng(seed) {
  let a = seed >>> 0;
  const next = () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
  const normal = () => Math.sqrt(-2 * Math.log(1 - next())) * Math.cos(2 * Math.PI * next());
  const permutation = (n) => {
    const p = Array.from({ length: n }, (_, i) => i);
    for (let i = n - 1; i > 0; i--) {
      const j = Math.floor(next() * (i + 1));
      [p[i], p[j]] = [p[j], p[i]];
    }
    return p;
  };
  return { next, normal, permutation };
}

/** LoRA's init moved into the subspace (delta W = 0 at step 0) and a small random head. */
export function initParams(layout, numLabels, hidden, seed = 0) {
  const r = rng(seed);
  const coefficients = new Float32Array(layout.size);
  for (const m of layout.modules) {
    const n = layout.widths[m] * layout.rank;
    const bound = 1 / Math.sqrt(layout.widths[m]);
    for (let i = 0; i < n; i++) coefficients[layout.offsets[m] + i] = (2 * r.next() - 1) * bound;
  }
  const head = new Float32Array(numLabels * hidden).map(() => 0.02 * r.normal());
  return { [COEFFICIENTS]: coefficients, [HEAD_WEIGHT]: head, [HEAD_BIAS]: new Float32Array(numLabels) };
}

/** Batches of example indices: a seeded permutation per epoch, cut into batchSize pieces, `steps` of them. */
export function batchSchedule(n, batchSize, steps, seed = 0) {
  const r = rng(seed ^ 0x9e3779b9);
  const out = [];
  let order = [];
  while (out.length < steps) {
    if (!order.length) order = r.permutation(n);
    out.push(order.splice(0, batchSize));
  }
  return out;
}

/**
 * Train: for each batch, lossAndGrads(indices, params) -> {loss, grads}; AdamW steps; onStep({step, loss}) after
 * each. Stops early (with the last good params) when a loss turns NaN/Inf. Returns {params, losses}.
 */
export async function train({ params, batches, lossAndGrads, lr = 5e-3, headLr, weightDecay = 0, onStep = () => {}, shouldStop = () => false }) {
  const head = headLr ?? lr;
  const opt = new AdamW({ lrs: { [COEFFICIENTS]: lr, [HEAD_WEIGHT]: head, [HEAD_BIAS]: head }, weightDecay });
  const losses = [];
  for (const [i, batch] of batches.entries()) {
    if (shouldStop()) break;
    const { loss, grads } = await lossAndGrads(batch, params);
    if (!Number.isFinite(loss) || !Object.values(grads).every((g) => g.every(Number.isFinite))) {
      throw new Error(`training diverged at step ${i + 1} (loss ${loss}); lower the learning rate (now ${lr}) or check the data.`);
    }
    opt.step(params, grads);
    losses.push(loss);
    await onStep({ step: i + 1, total: batches.length, loss });
  }
  return { params, losses };
}
