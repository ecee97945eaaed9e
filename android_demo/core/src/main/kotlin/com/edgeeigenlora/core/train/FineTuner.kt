package com.edgeeigenlora.core.train

import com.edgeeigenlora.core.bundle.Bundle
import com.edgeeigenlora.core.engine.Engine
import com.edgeeigenlora.core.task.Head
import com.edgeeigenlora.core.task.Task
import com.edgeeigenlora.core.text.TokenBatch
import java.util.Random
import kotlin.math.sqrt

/** One optimizer step as the UI shows it. */
data class StepReport(val step: Int, val epoch: Int, val loss: Float, val lrScale: Double, val millis: Double, val rolledBack: Boolean)

/**
 * Trains a new task on the phone: the bundle's train-step graph gives loss and gradients ([Engine.trainStep]),
 * [AdamW] updates the packed coefficients and the head. Same init as the workstation (alpha_B = 0 so the
 * model starts as the base model, alpha_A uniform in +-1/sqrt(width), head N(0, 0.02)).
 */
class FineTuner(private val engine: Engine, private val bundle: Bundle) {
    fun train(
        name: String,
        examples: LabelledExamples,
        config: FineTuneConfig = FineTuneConfig(),
        onStep: (StepReport) -> Unit = {},
        cancelled: () -> Boolean = { false },
    ): Task {
        require(engine.canTrain) { "this bundle has no train-step graph; re-export it with the train step (add_train_step)" }
        val rng = Random(config.seed)
        val params = linkedMapOf(
            "coefficients" to initialCoefficients(rng),
            "head_weight" to FloatArray(examples.labelNames.size * bundle.hidden) { (rng.nextGaussian() * 0.02).toFloat() },
            "head_bias" to FloatArray(examples.labelNames.size),
        )
        val headLr = config.headLr ?: config.lr
        val opt = AdamW(mapOf("coefficients" to config.lr, "head_weight" to headLr, "head_bias" to headLr), weightDecay = config.weightDecay)
        val ids = examples.texts.map { bundle.tokenizer.encode(it).ids }
        val recent = ArrayDeque<Float>()
        var rollbacks = 0
        var step = 0
        var lastLoss = Float.NaN
        var lastGood: Pair<Map<String, FloatArray>, Triple<Map<String, FloatArray>, Map<String, FloatArray>, Int>>? = null
        val order = (0 until examples.size).toMutableList()
        training@ for (epoch in 1..config.epochs) {
            order.shuffle(rng)
            for (start in order.indices step config.batchSize) {
                if (cancelled()) break@training
                val rows = order.subList(start, minOf(start + config.batchSize, order.size))
                val batch = TokenBatch.pad(rows.map { ids[it] }, bundle.tokenizer.padId)
                val labels = IntArray(rows.size) { examples.labels[rows[it]] }
                val t0 = System.nanoTime()
                val head = Head(params.getValue("head_weight"), params.getValue("head_bias"), examples.labelNames.size, bundle.hidden)
                val result = engine.trainStep(batch, labels, params.getValue("coefficients"), head)
                val median = recent.sorted().getOrNull(recent.size / 2)
                val exploded = !result.isFinite || (recent.size >= 3 && median != null && result.loss > config.explodeFactor * median)
                step++
                if (exploded) {
                    rollbacks++
                    if (rollbacks > config.maxRollbacks) {
                        throw IllegalStateException("training diverged $rollbacks times (loss ${result.loss}); lower the learning rate (now ${config.lr * opt.scale}).")
                    }
                    // Undo the update that led here (weights and moments), then retry with a smaller step.
                    lastGood?.let { (weights, state) ->
                        weights.forEach { (k, v) -> v.copyInto(params.getValue(k)) }
                        opt.restore(state)
                    }
                    opt.scale *= config.lrBackoff
                } else {
                    lastGood = params.mapValues { it.value.copyOf() } to opt.state()
                    opt.step(params, mapOf("coefficients" to result.gradCoefficients, "head_weight" to result.gradHeadWeight, "head_bias" to result.gradHeadBias))
                    recent.addLast(result.loss)
                    if (recent.size > 10) recent.removeFirst()
                    lastLoss = result.loss
                }
                onStep(StepReport(step, epoch, result.loss, opt.scale, (System.nanoTime() - t0) / 1e6, exploded))
            }
        }
        val head = Head(params.getValue("head_weight"), params.getValue("head_bias"), examples.labelNames.size, bundle.hidden)
        val info = mapOf("trained_on" to "android", "examples" to examples.size, "steps" to step,
            "final_loss" to if (lastLoss.isFinite()) lastLoss.toDouble() else null, "lr" to config.lr, "rollbacks" to rollbacks)
        return Task(name, bundle.basisFingerprint, examples.labelNames, params.getValue("coefficients"), head, info)
    }

    private fun initialCoefficients(rng: Random): FloatArray {
        val layout = bundle.layout
        val out = FloatArray(layout.size)
        for (seg in layout.segments.filter { it.name.endsWith(".alpha_A") }) {
            val bound = 1.0 / sqrt(seg.rows.toDouble())
            for (i in 0 until seg.size) out[seg.offset + i] = ((rng.nextDouble() * 2 - 1) * bound).toFloat()
        }
        return out // alpha_B segments stay 0: delta W = 0 at the start
    }
}
