package com.edgeeigenlora.core.metrics

import java.io.File

/** Resident memory of this process from /proc/self/status (Linux and Android); null elsewhere. */
object MemoryProbe {
    data class Snapshot(val rssKb: Long?, val peakRssKb: Long?, val javaHeapKb: Long) {
        override fun toString(): String =
            "RSS ${rssKb?.let { "${it / 1024} MiB" } ?: "?"} (peak ${peakRssKb?.let { "${it / 1024} MiB" } ?: "?"}), " +
                "Java heap ${javaHeapKb / 1024} MiB"
    }

    fun snapshot(status: File = File("/proc/self/status")): Snapshot {
        val fields = if (status.isFile) parse(status.readText()) else emptyMap()
        val rt = Runtime.getRuntime()
        return Snapshot(fields["VmRSS"], fields["VmHWM"], (rt.totalMemory() - rt.freeMemory()) / 1024)
    }

    /** "VmRSS:   12345 kB" lines -> name to kB. */
    fun parse(text: String): Map<String, Long> = text.lineSequence().mapNotNull { line ->
        val name = line.substringBefore(':', "")
        val kb = line.substringAfter(':').trim().removeSuffix("kB").trim().toLongOrNull()
        if (name.isEmpty() || kb == null) null else name to kb
    }.toMap()
}
