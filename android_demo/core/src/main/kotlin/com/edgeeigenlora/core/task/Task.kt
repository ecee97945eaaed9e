package com.edgeeigenlora.core.task

/** A classification head: weight [numLabels x hidden] row-major and bias [numLabels]. */
class Head(val weight: FloatArray, val bias: FloatArray, val numLabels: Int, val hidden: Int) {
    init {
        require(weight.size == numLabels * hidden) { "head weight holds ${weight.size} values, expected $numLabels x $hidden" }
        require(bias.size == numLabels) { "head bias holds ${bias.size} values, expected $numLabels" }
    }

    fun copy(): Head = Head(weight.copyOf(), bias.copyOf(), numLabels, hidden)
}

/**
 * A task as the device runs it: the packed coefficient vector [P] in the bundle's layout plus its head,
 * bound to one basis by fingerprint. A few KB; switching tasks means passing other arrays to the graph.
 */
class Task(
    val name: String,
    val basisFingerprint: String,
    val labels: List<String>,
    val coefficients: FloatArray,
    val head: Head,
    val info: Map<String, Any?> = emptyMap(),
    val kind: String = "classification",
) {
    val numLabels: Int get() = head.numLabels

    fun label(index: Int): String = labels.getOrElse(index) { index.toString() }
}
