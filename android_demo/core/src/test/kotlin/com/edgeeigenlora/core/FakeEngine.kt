package com.edgeeigenlora.core

import com.edgeeigenlora.core.engine.Engine
import com.edgeeigenlora.core.engine.TrainStepResult
import com.edgeeigenlora.core.task.Head
import com.edgeeigenlora.core.text.TokenBatch
import kotlin.math.exp
import kotlin.math.ln

/**
 * A plain-Kotlin stand-in for the ONNX engine with exact gradients: pooled = mean of fixed pseudo-random token
 * embeddings + coefficients[0 until hidden] (so coefficients matter), logits = W pooled + b, mean cross-entropy.
 */
class FakeEngine(private val hidden: Int, override val canTrain: Boolean = true) : Engine {
    var classifyCalls = 0
    var lastCoefficients: FloatArray? = null

    private fun embedding(id: Long, j: Int): Float {
        var x = id * 0x9E3779B97F4A7C15uL.toLong() + j * 0xBF58476D1CE4E5B9uL.toLong()
        x = x xor (x ushr 31)
        x *= 0x94D049BB133111EBuL.toLong()
        return ((x ushr 40).toInt() and 0xFFFF) / 65535f - 0.5f
    }

    private fun pooled(batch: TokenBatch, row: Int, coefficients: FloatArray): FloatArray {
        val out = FloatArray(hidden) { coefficients[it] }
        var n = 0
        for (c in 0 until batch.cols) if (batch.mask[row * batch.cols + c] != 0L) {
            n++
            val id = batch.ids[row * batch.cols + c]
            for (j in 0 until hidden) out[j] += embedding(id, j) / batch.cols
        }
        return out
    }

    private fun logits(f: FloatArray, head: Head) = FloatArray(head.numLabels) { l ->
        var s = head.bias[l]
        for (j in 0 until hidden) s += head.weight[l * hidden + j] * f[j]
        s
    }

    override fun classify(batch: TokenBatch, coefficients: FloatArray, head: Head): Array<FloatArray> {
        classifyCalls++
        lastCoefficients = coefficients
        return Array(batch.rows) { logits(pooled(batch, it, coefficients), head) }
    }

    override fun trainStep(batch: TokenBatch, labels: IntArray, coefficients: FloatArray, head: Head): TrainStepResult {
        val gc = FloatArray(coefficients.size)
        val gw = FloatArray(head.weight.size)
        val gb = FloatArray(head.numLabels)
        var loss = 0.0
        for (r in 0 until batch.rows) {
            val f = pooled(batch, r, coefficients)
            val z = logits(f, head)
            val max = z.maxOrNull()!!
            val e = z.map { exp((it - max).toDouble()) }
            val sum = e.sum()
            loss += -(z[labels[r]] - max - ln(sum))
            for (l in 0 until head.numLabels) {
                val d = ((e[l] / sum) - if (l == labels[r]) 1.0 else 0.0).toFloat() / batch.rows
                gb[l] += d
                for (j in 0 until hidden) {
                    gw[l * hidden + j] += d * f[j]
                    gc[j] += d * head.weight[l * hidden + j]
                }
            }
        }
        return TrainStepResult((loss / batch.rows).toFloat(), gc, gw, gb)
    }

    override fun close() = Unit
}
