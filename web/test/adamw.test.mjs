import assert from "node:assert/strict";
import { test } from "node:test";

import { AdamW } from "../src/adamw.js";
import { f32, json } from "./golden.mjs";

const golden = json("adamw.json");
const names = Object.keys(golden.params);

test("three AdamW steps equal runtime.optim.AdamW (numpy float32) on the golden gradients", () => {
  const params = Object.fromEntries(names.map((n) => [n, f32(`adamw_param0_${n}.bin`)]));
  const opt = new AdamW({ lrs: golden.lrs, betas: golden.betas, eps: golden.eps, weightDecay: golden.weight_decay });
  for (let step = 1; step <= golden.steps; step++) {
    opt.step(params, Object.fromEntries(names.map((n) => [n, f32(`adamw_grad${step}_${n}.bin`)])));
  }
  assert.equal(opt.stepCount, 3);
  let worst = 0;
  for (const n of names) {
    for (const [got, file] of [[params[n], `adamw_param3_${n}.bin`], [opt.m[n], `adamw_m3_${n}.bin`], [opt.v[n], `adamw_v3_${n}.bin`]]) {
      const want = f32(file);
      assert.equal(got.length, want.length);
      for (let i = 0; i < want.length; i++) worst = Math.max(worst, Math.abs(got[i] - want[i]));
    }
  }
  assert.ok(worst <= 1e-6, `max abs difference ${worst} > 1e-6`);
});

test("a learning rate that is not positive is refused", () => {
  assert.throws(() => new AdamW({ lrs: { coefficients: 0 } }), /learning rate for "coefficients" must be > 0/);
});
