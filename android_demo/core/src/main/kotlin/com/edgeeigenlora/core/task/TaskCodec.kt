package com.edgeeigenlora.core.task

import com.edgeeigenlora.core.bundle.BundleException
import com.edgeeigenlora.core.bundle.CoefficientLayout
import com.edgeeigenlora.core.bundle.ModuleCoefficients
import com.edgeeigenlora.core.json.Json
import com.edgeeigenlora.core.safetensors.SafeTensors
import com.edgeeigenlora.core.safetensors.SafeTensorsException
import com.edgeeigenlora.core.safetensors.Tensor

/**
 * Task files (`tasks/<name>.safetensors`), byte-compatible with the Python side's task.py: tensors
 * `<module>.alpha_A`, `<module>.alpha_B` ([width x rank]), `head.weight`, `head.bias`; metadata format,
 * format_version "1", name, basis_fingerprint, kind, labels (JSON), info (JSON).
 */
object TaskCodec {
    const val FORMAT = "edge-eigenlora-task"
    const val FORMAT_VERSION = "1"

    fun decode(bytes: ByteArray, layout: CoefficientLayout, hidden: Int, expectedBasis: String?, where: String): Task {
        val file = try {
            SafeTensors.read(bytes, where)
        } catch (e: SafeTensorsException) {
            throw BundleException(e.message ?: where, e)
        }
        val meta = file.metadata
        if (meta["format"] != FORMAT) throw BundleException("$where: metadata field 'format' is ${meta["format"]}; not a task file.")
        if (meta["format_version"] != FORMAT_VERSION) {
            throw BundleException("$where: task format_version ${meta["format_version"]} is not supported (this app reads $FORMAT_VERSION).")
        }
        val fingerprint = meta["basis_fingerprint"] ?: ""
        if (expectedBasis != null && fingerprint != expectedBasis) {
            throw BundleException(
                "$where: task was trained for basis ${fingerprint.take(12)} but this bundle carries basis ${expectedBasis.take(12)}. " +
                    "Coefficients only mean something on their own basis: re-train the task on this bundle."
            )
        }
        val t = file.tensors
        val modules = t.keys.filter { it.endsWith(".alpha_A") }.map { it.removeSuffix(".alpha_A") }
        val coefficients = modules.associateWith { m ->
            val b = t["$m.alpha_B"] ?: throw BundleException("$where: $m.alpha_B is missing; the task file is incomplete.")
            ModuleCoefficients(t.getValue("$m.alpha_A").floats(), b.floats())
        }
        val packed = layout.pack(coefficients, where)
        val weight = t["head.weight"] ?: throw BundleException("$where: field 'head.weight' is missing; a classification bundle needs a head.")
        if (weight.shape.size != 2 || weight.shape[1] != hidden) {
            throw BundleException(
                "$where: head.weight has shape ${weight.shape.toList()} but the bundle's model has hidden size $hidden " +
                    "(expected [labels, $hidden]); the head was trained for another base model."
            )
        }
        val numLabels = weight.shape[0]
        val bias = t["head.bias"]?.floats() ?: FloatArray(numLabels)
        if (bias.size != numLabels) throw BundleException("$where: head.bias has ${bias.size} values, expected $numLabels.")
        val head = Head(weight.floats(), bias, numLabels, hidden)
        if (head.weight.any { !it.isFinite() } || head.bias.any { !it.isFinite() }) throw BundleException("$where: the head contains NaN or Inf.")
        val labels = (Json.parse(meta["labels"] ?: "[]") as? List<*>)?.map { it.toString() } ?: emptyList()
        @Suppress("UNCHECKED_CAST")
        val info = Json.parse(meta["info"] ?: "{}") as? Map<String, Any?> ?: emptyMap()
        return Task(meta["name"] ?: "task", fingerprint, labels, packed, head, info, meta["kind"] ?: "classification")
    }

    fun encode(task: Task, layout: CoefficientLayout): ByteArray {
        val tensors = LinkedHashMap<String, Tensor>()
        for ((module, c) in layout.unpack(task.coefficients)) {
            val width = layout.widths.getValue(module)
            tensors["$module.alpha_A"] = Tensor.of(c.alphaA, width, layout.rank)
            tensors["$module.alpha_B"] = Tensor.of(c.alphaB, width, layout.rank)
        }
        tensors["head.weight"] = Tensor.of(task.head.weight, task.head.numLabels, task.head.hidden)
        tensors["head.bias"] = Tensor.of(task.head.bias, task.head.numLabels)
        val metadata = mapOf(
            "format" to FORMAT, "format_version" to FORMAT_VERSION, "name" to task.name,
            "basis_fingerprint" to task.basisFingerprint, "kind" to task.kind,
            "labels" to Json.write(task.labels), "info" to Json.write(task.info.toSortedMap()),
        )
        return SafeTensors.write(tensors, metadata)
    }
}
