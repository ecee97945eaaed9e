// AdamW exactly as edge_eigenlora/runtime/optim.py computes it in float32 numpy (torch.optim.AdamW's update):
// every operation is rounded to float32 (Math.fround), scalars included, as numpy 2 does with Python floats,
// so the page's training follows the Python device trainer step for step.

const f = Math.fround;

export class AdamW {
  /** lrs: {param: lr}; betas, eps, weightDecay as in optim.AdamW; scale multiplies every lr (NaN back-off). */
  constructor({ lrs, betas = [0.9, 0.999], eps = 1e-8, weightDecay = 0 }) {
    for (const [name, lr] of Object.entries(lrs)) {
      if (!(lr > 0)) throw new Error(`learning rate for ${JSON.stringify(name)} must be > 0, got ${lr}.`);
    }
    this.lrs = { ...lrs };
    this.betas = betas;
    this.eps = eps;
    this.weightDecay = weightDecay;
    this.scale = 1;
    this.stepCount = 0;
    this.m = {};
    this.v = {};
  }

  /** Update params (name -> Float32Array) in place from grads (name -> Float32Array). */
  step(params, grads) {
    this.stepCount += 1;
    const [b1, b2] = this.betas;
    const c1 = f(1 - b1 ** this.stepCount);
    const c2 = f(1 - b2 ** this.stepCount);
    const fb1 = f(b1), fb2 = f(b2), g1 = f(1 - b1), g2 = f(1 - b2), eps = f(this.eps);
    for (const [name, p] of Object.entries(params)) {
      const g = grads[name];
      if (!g || g.length !== p.length) throw new Error(`AdamW: gradient of ${name} has ${g?.length} values, the parameter ${p.length}.`);
      if (!this.m[name]) {
        this.m[name] = new Float32Array(p.length);
        this.v[name] = new Float32Array(p.length);
      }
      const m = this.m[name], v = this.v[name];
      const lr = this.lrs[name] * this.scale;
      const flr = f(lr);
      const decay = this.weightDecay ? f(1 - lr * this.weightDecay) : 1;
      for (let i = 0; i < p.length; i++) {
        const gi = f(g[i]);
        m[i] = f(f(m[i] * fb1) + f(g1 * gi));
        v[i] = f(f(v[i] * fb2) + f(f(g2 * gi) * gi));
        if (this.weightDecay) p[i] = f(p[i] * decay);
        const update = f(f(flr * f(m[i] / c1)) / f(f(Math.sqrt(f(v[i] / c2))) + eps));
        p[i] = f(p[i] - update);
      }
    }
  }
}
