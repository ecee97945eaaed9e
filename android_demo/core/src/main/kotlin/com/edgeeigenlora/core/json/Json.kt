package com.edgeeigenlora.core.json

/**
 * A small, strict JSON reader and writer (RFC 8259) for manifests and safetensors headers, so the core needs
 * no library. Objects become [Map] (insertion order kept), arrays [List], numbers [Long] when integral else
 * [Double], plus [String], [Boolean] and null.
 */
object Json {
    fun parse(text: String): Any? = JsonReader(text).readDocument()

    fun write(value: Any?): String = StringBuilder().also { writeTo(it, value) }.toString()

    private fun writeTo(out: StringBuilder, value: Any?) {
        when (value) {
            null -> out.append("null")
            is String -> quote(out, value)
            is Boolean -> out.append(value)
            is Int, is Long, is Short, is Byte -> out.append(value.toString())
            is Float -> writeDouble(out, value.toDouble())
            is Double -> writeDouble(out, value)
            is Map<*, *> -> {
                out.append('{')
                value.entries.forEachIndexed { i, (k, v) ->
                    if (i > 0) out.append(',')
                    quote(out, k.toString())
                    out.append(':')
                    writeTo(out, v)
                }
                out.append('}')
            }
            is Iterable<*> -> {
                out.append('[')
                value.forEachIndexed { i, v -> if (i > 0) out.append(','); writeTo(out, v) }
                out.append(']')
            }
            is IntArray -> writeTo(out, value.toList())
            is LongArray -> writeTo(out, value.toList())
            else -> throw IllegalArgumentException("cannot write ${value::class.simpleName} as JSON")
        }
    }

    private fun writeDouble(out: StringBuilder, d: Double) {
        require(d.isFinite()) { "JSON has no NaN or Infinity (got $d)" }
        out.append(d.toString()) // "2500.0", "1.0E-8": a double stays a double when read back
    }

    private fun quote(out: StringBuilder, s: String) {
        out.append('"')
        for (c in s) {
            when (c) {
                '"' -> out.append("\\\"")
                '\\' -> out.append("\\\\")
                '\n' -> out.append("\\n")
                '\r' -> out.append("\\r")
                '\t' -> out.append("\\t")
                '\b' -> out.append("\\b")
                '\u000C' -> out.append("\\f")
                else -> if (c < ' ') out.append(String.format("\\u%04x", c.code)) else out.append(c)
            }
        }
        out.append('"')
    }
}

/** Typed access with messages that say which field is wrong. */
fun Any?.obj(field: String): Map<String, Any?> {
    @Suppress("UNCHECKED_CAST")
    return this as? Map<String, Any?> ?: throw JsonException("field '$field' is not a JSON object")
}

fun Map<String, Any?>.string(field: String): String =
    this[field] as? String ?: throw JsonException("field '$field' is missing or not a string")

fun Map<String, Any?>.long(field: String): Long =
    (this[field] as? Number)?.toLong() ?: throw JsonException("field '$field' is missing or not a number")

fun Map<String, Any?>.list(field: String): List<Any?> =
    this[field] as? List<Any?> ?: throw JsonException("field '$field' is missing or not a list")

fun Map<String, Any?>.child(field: String): Map<String, Any?> = this[field].obj(field)

class JsonException(message: String) : RuntimeException(message)
