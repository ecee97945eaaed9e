package com.edgeeigenlora.core.train

import com.edgeeigenlora.core.json.Json
import com.edgeeigenlora.core.json.JsonException
import java.io.File

/** Labelled texts for a new task; [labels] index into [labelNames]. */
class LabelledExamples(val texts: List<String>, val labels: IntArray, val labelNames: List<String>) {
    val size: Int get() = texts.size

    init { require(texts.size == labels.size) { "texts and labels differ in length" } }

    companion object {
        /**
         * Lines typed on the phone, one example per line: `label: text` (or `label<TAB>text`). Blank lines are
         * skipped. Label names are sorted as the Python side sorts them (integers first, numerically).
         */
        fun parseTyped(text: String): LabelledExamples {
            val rows = text.lines().mapIndexedNotNull { i, line ->
                if (line.isBlank()) return@mapIndexedNotNull null
                val cut = line.indexOf('\t').takeIf { it >= 0 } ?: line.indexOf(':')
                if (cut <= 0) throw IllegalArgumentException("line ${i + 1}: write 'label: text' (found no ':' after a label)")
                Triple(i + 1, line.substring(cut + 1), line.substring(0, cut))
            }
            return build(rows, "typed examples")
        }

        /** A file in the formats the workstation reads: JSONL ("text", "label"), CSV or TSV with a text,label header. */
        fun read(file: File): LabelledExamples {
            val name = file.name.lowercase()
            val content = file.readText(Charsets.UTF_8)
            val rows = when {
                name.endsWith(".jsonl") || name.endsWith(".ndjson") -> content.lines().mapIndexedNotNull { i, line ->
                    if (line.isBlank()) return@mapIndexedNotNull null
                    val obj = try { Json.parse(line) as? Map<*, *> } catch (e: JsonException) {
                        throw IllegalArgumentException("${file.name}:${i + 1}: not valid JSON (${e.message})")
                    }
                    if (obj == null || "text" !in obj || "label" !in obj) {
                        throw IllegalArgumentException("${file.name}:${i + 1}: each line must be an object with \"text\" and \"label\".")
                    }
                    val label = obj["label"].let { if (it is Number && it.toDouble() == Math.rint(it.toDouble())) it.toLong().toString() else it?.toString() ?: "" }
                    Triple(i + 1, obj["text"]?.toString() ?: "", label)
                }
                name.endsWith(".csv") || name.endsWith(".tsv") -> {
                    val records = Csv.parse(content, if (name.endsWith(".tsv")) '\t' else ',')
                    val header = records.firstOrNull() ?: emptyList()
                    val t = header.indexOf("text")
                    val l = header.indexOf("label")
                    if (t < 0 || l < 0) throw IllegalArgumentException("${file.name}: the header must name columns 'text' and 'label' (found $header).")
                    records.drop(1).mapIndexedNotNull { i, r ->
                        if (r.size == 1 && r[0].isBlank()) null else Triple(i + 2, r.getOrElse(t) { "" }, r.getOrElse(l) { "" })
                    }
                }
                else -> throw IllegalArgumentException("${file.name}: unknown file type; use .csv, .tsv or .jsonl.")
            }
            return build(rows, file.name)
        }

        private fun build(rows: List<Triple<Int, String, String>>, where: String): LabelledExamples {
            if (rows.size < 2) throw IllegalArgumentException("$where: a task needs at least two labelled texts (found ${rows.size}).")
            for ((line, text, label) in rows) {
                if (text.isBlank()) throw IllegalArgumentException("$where:$line: the text is empty.")
                if (label.isBlank()) throw IllegalArgumentException("$where:$line: the label is empty.")
            }
            val names = rows.map { it.third.trim() }.distinct().sortedWith(compareBy<String>({ if (it.isInteger()) 0 else 1 }, { it.toLongOrNull() ?: 0 }, { it }))
            if (names.size < 2) throw IllegalArgumentException("$where: all examples have the same label; a classifier needs at least two.")
            val index = names.withIndex().associate { it.value to it.index }
            return LabelledExamples(rows.map { it.second.trim() }, IntArray(rows.size) { index.getValue(rows[it].third.trim()) }, names)
        }

        private fun String.isInteger(): Boolean = removePrefix("-").let { it.isNotEmpty() && it.all(Char::isDigit) }
    }
}
