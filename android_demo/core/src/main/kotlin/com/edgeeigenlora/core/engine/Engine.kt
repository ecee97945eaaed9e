package com.edgeeigenlora.core.engine

import com.edgeeigenlora.core.task.Head
import com.edgeeigenlora.core.text.TokenBatch

/**
 * What the core needs from an inference runtime. The Android app implements it with ONNX Runtime's Java API
 * (app module, `OrtEngine`); tests implement it in plain Kotlin. A task is only arrays passed per call, so an
 * engine loads its graphs once and every task switch is free.
 *
 * Graph contract (manifest): `shared` takes input_ids, attention_mask [rows, cols] int64, coefficients [P],
 * head_weight [labels, hidden], head_bias [labels] -> logits [rows, labels]; `train_step` also takes labels
 * [rows] int64 -> loss, logits, grad_coefficients [P], grad_head_weight, grad_head_bias.
 */
interface Engine : AutoCloseable {
    /** Logits [rows][labels]. */
    fun classify(batch: TokenBatch, coefficients: FloatArray, head: Head): Array<FloatArray>

    /** True when the bundle carries the train-step graph. */
    val canTrain: Boolean

    /** Mean cross-entropy loss and its gradients for one batch. */
    fun trainStep(batch: TokenBatch, labels: IntArray, coefficients: FloatArray, head: Head): TrainStepResult
}

class TrainStepResult(
    val loss: Float,
    val gradCoefficients: FloatArray,
    val gradHeadWeight: FloatArray,
    val gradHeadBias: FloatArray,
) {
    val isFinite: Boolean
        get() = loss.isFinite() && gradCoefficients.all { it.isFinite() } &&
            gradHeadWeight.all { it.isFinite() } && gradHeadBias.all { it.isFinite() }
}
