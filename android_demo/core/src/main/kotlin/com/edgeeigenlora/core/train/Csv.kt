package com.edgeeigenlora.core.train

/** RFC 4180 records: quoted fields may hold separators, newlines and doubled quotes. */
internal object Csv {
    fun parse(text: String, separator: Char = ','): List<List<String>> {
        val records = ArrayList<List<String>>()
        var record = ArrayList<String>()
        val field = StringBuilder()
        var quoted = false
        var i = 0
        while (i < text.length) {
            val c = text[i]
            when {
                quoted && c == '"' && text.getOrNull(i + 1) == '"' -> { field.append('"'); i++ }
                quoted && c == '"' -> quoted = false
                quoted -> field.append(c)
                c == '"' && field.isEmpty() -> quoted = true
                c == separator -> { record.add(field.toString()); field.setLength(0) }
                c == '\r' && text.getOrNull(i + 1) == '\n' -> Unit
                c == '\n' -> { record.add(field.toString()); field.setLength(0); records.add(record); record = ArrayList() }
                else -> field.append(c)
            }
            i++
        }
        if (field.isNotEmpty() || record.isNotEmpty()) { record.add(field.toString()); records.add(record) }
        return records
    }
}
