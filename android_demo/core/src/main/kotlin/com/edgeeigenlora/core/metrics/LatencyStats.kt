package com.edgeeigenlora.core.metrics

/** Rolling latency window (milliseconds): last, median and p90 of the most recent [capacity] calls. */
class LatencyStats(private val capacity: Int = 50) {
    private val window = ArrayDeque<Double>()

    fun record(ms: Double) {
        window.addLast(ms)
        while (window.size > capacity) window.removeFirst()
    }

    inline fun <T> time(block: () -> T): T {
        val start = System.nanoTime()
        try { return block() } finally { record((System.nanoTime() - start) / 1e6) }
    }

    val count: Int get() = window.size
    val last: Double? get() = window.lastOrNull()
    val median: Double? get() = quantile(0.5)
    val p90: Double? get() = quantile(0.9)

    fun quantile(q: Double): Double? {
        if (window.isEmpty()) return null
        val sorted = window.sorted()
        return sorted[((sorted.size - 1) * q).let { Math.round(it).toInt() }]
    }

    override fun toString(): String =
        if (window.isEmpty()) "no calls yet" else "last %.1f ms, median %.1f ms, p90 %.1f ms (n=%d)".format(last, median, p90, count)
}
