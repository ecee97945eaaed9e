package com.edgeeigenlora.demo

import ai.onnxruntime.OnnxTensor
import ai.onnxruntime.OrtEnvironment
import ai.onnxruntime.OrtSession
import com.edgeeigenlora.core.bundle.Bundle
import com.edgeeigenlora.core.engine.Engine
import com.edgeeigenlora.core.engine.TrainStepResult
import com.edgeeigenlora.core.task.Head
import com.edgeeigenlora.core.text.TokenBatch
import java.nio.FloatBuffer
import java.nio.LongBuffer

/**
 * [Engine] on ONNX Runtime's Java API (CPU execution provider: the train step's dynamic shapes and ScatterND
 * are outside NNAPI's reach). Sessions are created once from the bundle's .ort files; a task is only the
 * coefficient and head tensors of each call, so switching tasks costs nothing here.
 */
class OrtEngine(private val bundle: Bundle, threads: Int = 0) : Engine {
    private val env = OrtEnvironment.getEnvironment()
    private val options = OrtSession.SessionOptions().apply {
        if (threads > 0) setIntraOpNumThreads(threads)
        setMemoryPatternOptimization(true)
    }
    private val shared: OrtSession = env.createSession(bundle.graphFile("shared").path, options)
    private var train: OrtSession? = null

    override val canTrain: Boolean get() = bundle.manifest.hasGraph("train_step")

    override fun classify(batch: TokenBatch, coefficients: FloatArray, head: Head): Array<FloatArray> {
        val feeds = feeds(batch, coefficients, head)
        try {
            shared.run(feeds).use { result ->
                @Suppress("UNCHECKED_CAST")
                return result.get("logits").get().value as Array<FloatArray>
            }
        } finally {
            feeds.values.forEach { it.close() }
        }
    }

    override fun trainStep(batch: TokenBatch, labels: IntArray, coefficients: FloatArray, head: Head): TrainStepResult {
        val session = train ?: env.createSession(bundle.graphFile("train_step").path, options).also { train = it }
        val feeds = feeds(batch, coefficients, head) +
            ("labels" to OnnxTensor.createTensor(env, LongBuffer.wrap(LongArray(labels.size) { labels[it].toLong() }), longArrayOf(labels.size.toLong())))
        try {
            session.run(feeds).use { r ->
                val loss = when (val v = r.get("loss").get().value) { is Float -> v; is FloatArray -> v[0]; else -> Float.NaN }
                @Suppress("UNCHECKED_CAST")
                val gw = r.get("grad_head_weight").get().value as Array<FloatArray>
                return TrainStepResult(
                    loss = loss,
                    gradCoefficients = r.get("grad_coefficients").get().value as FloatArray,
                    gradHeadWeight = FloatArray(head.weight.size).also { out -> gw.forEachIndexed { i, row -> row.copyInto(out, i * head.hidden) } },
                    gradHeadBias = r.get("grad_head_bias").get().value as FloatArray,
                )
            }
        } finally {
            feeds.values.forEach { it.close() }
        }
    }

    private fun feeds(batch: TokenBatch, coefficients: FloatArray, head: Head): Map<String, OnnxTensor> = mapOf(
        "input_ids" to OnnxTensor.createTensor(env, LongBuffer.wrap(batch.ids), batch.shape),
        "attention_mask" to OnnxTensor.createTensor(env, LongBuffer.wrap(batch.mask), batch.shape),
        "coefficients" to OnnxTensor.createTensor(env, FloatBuffer.wrap(coefficients), longArrayOf(coefficients.size.toLong())),
        "head_weight" to OnnxTensor.createTensor(env, FloatBuffer.wrap(head.weight), longArrayOf(head.numLabels.toLong(), head.hidden.toLong())),
        "head_bias" to OnnxTensor.createTensor(env, FloatBuffer.wrap(head.bias), longArrayOf(head.numLabels.toLong())),
    )

    /** Drop the train-step session (~130 MB) when leaving the training screen. */
    fun releaseTraining() {
        train?.close()
        train = null
    }

    override fun close() {
        releaseTraining()
        shared.close()
        options.close()
    }
}
