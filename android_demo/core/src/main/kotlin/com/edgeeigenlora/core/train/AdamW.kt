package com.edgeeigenlora.core.train

import kotlin.math.pow
import kotlin.math.sqrt

/**
 * AdamW (decoupled weight decay, bias-corrected moments): torch.optim.AdamW's update, operation for operation
 * the float32 arithmetic of the device runtime's numpy AdamW (edge_eigenlora/runtime/optim.py), so the phone
 * and the Python runtime take the same steps (golden test: equal within 1e-6).
 *
 * [lrs] gives each named parameter its learning rate (e.g. a faster head); [scale] multiplies them all.
 */
class AdamW(
    val lrs: Map<String, Double>,
    val beta1: Double = 0.9,
    val beta2: Double = 0.999,
    val eps: Double = 1e-8,
    val weightDecay: Double = 0.0,
    var scale: Double = 1.0,
) {
    var stepCount: Int = 0
        private set
    private val m = HashMap<String, FloatArray>()
    private val v = HashMap<String, FloatArray>()

    init { lrs.forEach { (name, lr) -> require(lr > 0) { "learning rate for '$name' must be > 0, got $lr" } } }

    fun firstMoment(name: String): FloatArray? = m[name]
    fun secondMoment(name: String): FloatArray? = v[name]

    /** Update [params] in place from [grads] (same names and sizes). */
    fun step(params: Map<String, FloatArray>, grads: Map<String, FloatArray>) {
        stepCount++
        val b1 = beta1.toFloat()
        val b2 = beta2.toFloat()
        val oneMinusB1 = (1 - beta1).toFloat()
        val oneMinusB2 = (1 - beta2).toFloat()
        val c1 = (1 - beta1.pow(stepCount)).toFloat()
        val c2 = (1 - beta2.pow(stepCount)).toFloat()
        val epsF = eps.toFloat()
        for ((name, p) in params) {
            val g = grads[name] ?: throw IllegalArgumentException("no gradient for '$name'")
            require(g.size == p.size) { "gradient of '$name' has ${g.size} values, the parameter ${p.size}" }
            val mm = m.getOrPut(name) { FloatArray(p.size) }
            val vv = v.getOrPut(name) { FloatArray(p.size) }
            val lrD = (lrs[name] ?: throw IllegalArgumentException("no learning rate for '$name'")) * scale
            val lr = lrD.toFloat()
            val decay = (1 - lrD * weightDecay).toFloat()
            for (i in p.indices) {
                mm[i] = mm[i] * b1 + oneMinusB1 * g[i]
                vv[i] = vv[i] * b2 + oneMinusB2 * g[i] * g[i]
                if (weightDecay != 0.0) p[i] = p[i] * decay
                p[i] = p[i] - lr * (mm[i] / c1) / (sqrt(vv[i] / c2) + epsF)
            }
        }
    }

    /** The moments and step count, for a checkpoint that resumes training exactly. */
    fun state(): Triple<Map<String, FloatArray>, Map<String, FloatArray>, Int> =
        Triple(m.mapValues { it.value.copyOf() }, v.mapValues { it.value.copyOf() }, stepCount)

    fun restore(state: Triple<Map<String, FloatArray>, Map<String, FloatArray>, Int>) {
        m.clear(); v.clear()
        state.first.forEach { (k, a) -> m[k] = a.copyOf() }
        state.second.forEach { (k, a) -> v[k] = a.copyOf() }
        stepCount = state.third
    }
}
