package com.edgeeigenlora.core

import com.edgeeigenlora.core.train.AdamW
import org.junit.Assert.assertEquals
import org.junit.Assert.assertTrue
import org.junit.Test
import kotlin.math.abs

/**
 * Three AdamW steps equal the device runtime's numpy AdamW within 1e-6 (absolute), on the real sentiment
 * task's coefficients and head with gradients from the real train-step graph.
 */
class AdamWGoldenTest {
    private val spec = Golden.json("adamw.json")
    private val names = listOf("coefficients", "head_weight", "head_bias")

    @Test fun threeStepsMatchNumpy() {
        @Suppress("UNCHECKED_CAST")
        val lrs = (spec["lrs"] as Map<String, Number>).mapValues { it.value.toDouble() }
        val betas = (spec["betas"] as List<*>).map { (it as Number).toDouble() }
        val opt = AdamW(lrs, betas[0], betas[1], (spec["eps"] as Number).toDouble(), (spec["weight_decay"] as Number).toDouble())
        val params = names.associateWith { Golden.floats("adamw_param0_$it.bin") }
        for (step in 1..(spec["steps"] as Number).toInt()) {
            opt.step(params, names.associateWith { Golden.floats("adamw_grad${step}_$it.bin") })
        }
        assertEquals(3, opt.stepCount)
        var worst = 0f
        for (n in names) {
            worst = maxOf(worst, maxDiff(Golden.floats("adamw_param3_$n.bin"), params.getValue(n)))
            worst = maxOf(worst, maxDiff(Golden.floats("adamw_m3_$n.bin"), opt.firstMoment(n)!!))
            worst = maxOf(worst, maxDiff(Golden.floats("adamw_v3_$n.bin"), opt.secondMoment(n)!!))
        }
        println("AdamW vs numpy: max abs diff $worst over params, m, v")
        assertTrue("max abs diff $worst > 1e-6", worst <= 1e-6f)
    }

    @Test fun restoreResumesExactly() {
        val p = floatArrayOf(1f, -1f, 0.5f)
        val g = floatArrayOf(0.1f, 0.2f, -0.3f)
        val a = AdamW(mapOf("p" to 0.01), weightDecay = 0.1)
        a.step(mapOf("p" to p), mapOf("p" to g))
        val saved = a.state()
        val copy = p.copyOf()
        a.step(mapOf("p" to p), mapOf("p" to g))
        val b = AdamW(mapOf("p" to 0.01), weightDecay = 0.1).apply { restore(saved) }
        b.step(mapOf("p" to copy), mapOf("p" to g))
        assertEquals(p.toList(), copy.toList())
    }

    private fun maxDiff(a: FloatArray, b: FloatArray): Float {
        assertEquals(a.size, b.size)
        return a.indices.maxOf { abs(a[it] - b[it]) }
    }
}
