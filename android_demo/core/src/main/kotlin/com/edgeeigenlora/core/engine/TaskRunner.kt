package com.edgeeigenlora.core.engine

import com.edgeeigenlora.core.bundle.Bundle
import com.edgeeigenlora.core.bundle.BundleException
import com.edgeeigenlora.core.metrics.LatencyStats
import com.edgeeigenlora.core.task.Task
import com.edgeeigenlora.core.task.TaskStore
import kotlin.math.exp

/** A label with the softmax probabilities of all labels. */
data class Prediction(val label: String, val index: Int, val probabilities: FloatArray)

/**
 * The task picker: every task (the bundle's and the phone's) is read once into memory; [select] only
 * changes which arrays the next call feeds, so switching reloads nothing (no session, no file).
 */
class TaskRunner(val bundle: Bundle, private val engine: Engine, private val store: TaskStore? = null) {
    private val tasks = LinkedHashMap<String, Task>()
    val latency = LatencyStats()

    init {
        bundle.taskNames.forEach { tasks[it] = bundle.loadTask(it) }
        store?.names()?.forEach { if (it !in tasks) tasks[it] = store.load(it, bundle) }
    }

    var current: Task = tasks.values.firstOrNull() ?: throw BundleException("the bundle has no task; export one with --task or train one.")
        private set

    val names: List<String> get() = tasks.keys.toList()

    fun isBundled(name: String): Boolean = name in bundle.taskNames

    fun select(name: String): Task {
        current = tasks[name] ?: throw BundleException("no task '$name'; tasks are $names.")
        return current
    }

    fun classify(texts: List<String>, batchSize: Int = 16): List<Prediction> {
        require(texts.isNotEmpty()) { "no texts given" }
        val task = current
        val out = ArrayList<Prediction>(texts.size)
        for (start in texts.indices step batchSize) {
            val batch = bundle.tokenizer.encodeBatch(texts.subList(start, minOf(start + batchSize, texts.size)))
            val logits = latency.time { engine.classify(batch, task.coefficients, task.head) }
            logits.forEach { row -> out.add(predict(task, row)) }
        }
        return out
    }

    /** Save a phone-trained task atomically and make it selectable; bundle task names are reserved. */
    fun add(task: Task): Task {
        if (isBundled(task.name)) throw BundleException("'${task.name}' is a task of the bundle; pick another name.")
        val store = store ?: throw BundleException("no task folder configured: tasks cannot be saved")
        store.save(task, bundle)
        tasks[task.name] = task
        return task
    }

    private fun predict(task: Task, logits: FloatArray): Prediction {
        val max = logits.maxOrNull() ?: 0f
        val e = logits.map { exp((it - max).toDouble()) }
        val sum = e.sum()
        val probs = FloatArray(logits.size) { (e[it] / sum).toFloat() }
        val best = probs.indices.maxByOrNull { probs[it] } ?: 0
        return Prediction(task.label(best), best, probs)
    }
}
