package com.edgeeigenlora.core.bundle

/** One named piece of the packed vector: `<module>.alpha_A` or `<module>.alpha_B`, [width x rank] row-major. */
data class Segment(val name: String, val offset: Int, val rows: Int, val cols: Int) {
    val size: Int get() = rows * cols
}

/** A module's coefficients: alpha_A and alpha_B, each [width x rank] row-major. */
class ModuleCoefficients(val alphaA: FloatArray, val alphaB: FloatArray)

/**
 * Where each module's coefficients sit in a task's packed float32 vector [P] (manifest `coefficients`):
 * modules in sorted order; per module alpha_A then alpha_B. Same rule as the Python side's bundle.pack.
 */
class CoefficientLayout(widths: Map<String, Int>, val rank: Int) {
    val modules: List<String> = widths.keys.sorted()
    val widths: Map<String, Int> = modules.associateWith { widths.getValue(it) }
    val segments: List<Segment>
    val size: Int

    init {
        require(rank >= 1) { "rank must be >= 1" }
        var offset = 0
        segments = modules.flatMap { m ->
            listOf("alpha_A", "alpha_B").map { side ->
                Segment("$m.$side", offset, this.widths.getValue(m), rank).also { offset += it.size }
            }
        }
        size = offset
    }

    /** Coefficients per module -> the packed vector; refuses missing, unknown, mis-shaped or non-finite values. */
    fun pack(coefficients: Map<String, ModuleCoefficients>, where: String = "task"): FloatArray {
        val missing = modules.filter { it !in coefficients }
        val extra = coefficients.keys.filter { it !in this.widths }.sorted()
        if (missing.isNotEmpty() || extra.isNotEmpty()) {
            throw BundleException(
                "$where: coefficients do not fit the bundle layout: missing modules ${missing.take(3)}, unknown modules " +
                    "${extra.take(3)}. The task belongs to another basis or model: re-train it on this bundle's basis."
            )
        }
        val out = FloatArray(size)
        for (seg in segments) {
            val (module, side) = seg.name.substring(0, seg.name.lastIndexOf('.')) to seg.name.substringAfterLast('.')
            val c = coefficients.getValue(module)
            val values = if (side == "alpha_A") c.alphaA else c.alphaB
            if (values.size != seg.size) {
                throw BundleException(
                    "$where: ${seg.name} holds ${values.size} values, the layout expects [${seg.rows}, ${seg.cols}] " +
                        "(rank $rank). Re-train the task at rank $rank on this bundle's basis."
                )
            }
            values.copyInto(out, seg.offset)
        }
        if (out.any { !it.isFinite() }) throw BundleException("$where: coefficients contain NaN or Inf; re-train the task.")
        return out
    }

    fun unpack(vector: FloatArray): Map<String, ModuleCoefficients> {
        if (vector.size != size) throw BundleException("coefficient vector has ${vector.size} values, the bundle expects $size")
        return modules.associateWith { m ->
            val a = segments.first { it.name == "$m.alpha_A" }
            val b = segments.first { it.name == "$m.alpha_B" }
            ModuleCoefficients(vector.copyOfRange(a.offset, a.offset + a.size), vector.copyOfRange(b.offset, b.offset + b.size))
        }
    }

    companion object {
        /** From the manifest's `coefficients` object; refuses segments that are not this exact layout. */
        fun fromManifest(size: Int, rank: Int, segments: List<Segment>): CoefficientLayout {
            val widths = segments.filter { it.name.endsWith(".alpha_A") }
                .associate { it.name.removeSuffix(".alpha_A") to it.rows }
            val layout = CoefficientLayout(widths, rank)
            if (layout.segments != segments || layout.size != size) {
                throw BundleException(
                    "manifest.json: field 'coefficients' is inconsistent (segments are not the sorted, contiguous " +
                        "alpha_A/alpha_B layout of size 'size'); re-export the bundle."
                )
            }
            return layout
        }
    }
}
