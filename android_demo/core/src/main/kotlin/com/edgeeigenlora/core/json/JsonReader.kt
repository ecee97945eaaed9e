package com.edgeeigenlora.core.json

/** Recursive-descent JSON parser over a string; see [Json.parse]. */
internal class JsonReader(private val s: String) {
    private var i = 0

    fun readDocument(): Any? {
        val value = readValue(0)
        skipSpace()
        if (i != s.length) fail("trailing characters")
        return value
    }

    private fun readValue(depth: Int): Any? {
        if (depth > 200) fail("nesting too deep")
        skipSpace()
        if (i >= s.length) fail("unexpected end")
        return when (val c = s[i]) {
            '{' -> readObject(depth)
            '[' -> readArray(depth)
            '"' -> readString()
            't' -> literal("true", true)
            'f' -> literal("false", false)
            'n' -> literal("null", null)
            else -> if (c == '-' || c in '0'..'9') readNumber() else fail("unexpected '$c'")
        }
    }

    private fun readObject(depth: Int): Map<String, Any?> {
        val out = LinkedHashMap<String, Any?>()
        i++
        skipSpace()
        if (peek() == '}') { i++; return out }
        while (true) {
            skipSpace()
            if (peek() != '"') fail("expected a key")
            val key = readString()
            skipSpace()
            expect(':')
            out[key] = readValue(depth + 1)
            skipSpace()
            when (next()) {
                ',' -> continue
                '}' -> return out
                else -> fail("expected ',' or '}'")
            }
        }
    }

    private fun readArray(depth: Int): List<Any?> {
        val out = ArrayList<Any?>()
        i++
        skipSpace()
        if (peek() == ']') { i++; return out }
        while (true) {
            out.add(readValue(depth + 1))
            skipSpace()
            when (next()) {
                ',' -> continue
                ']' -> return out
                else -> fail("expected ',' or ']'")
            }
        }
    }

    private fun readString(): String {
        expect('"')
        val sb = StringBuilder()
        while (true) {
            if (i >= s.length) fail("unterminated string")
            val c = s[i++]
            when {
                c == '"' -> return sb.toString()
                c == '\\' -> {
                    when (val e = next()) {
                        '"' -> sb.append('"'); '\\' -> sb.append('\\'); '/' -> sb.append('/')
                        'b' -> sb.append('\b'); 'f' -> sb.append('\u000C'); 'n' -> sb.append('\n')
                        'r' -> sb.append('\r'); 't' -> sb.append('\t')
                        'u' -> {
                            if (i + 4 > s.length) fail("bad \\u escape")
                            sb.append(s.substring(i, i + 4).toIntOrNull(16)?.toChar() ?: fail("bad \\u escape"))
                            i += 4
                        }
                        else -> fail("bad escape '\\$e'")
                    }
                }
                c < ' ' -> fail("control character in string")
                else -> sb.append(c)
            }
        }
    }

    private fun readNumber(): Any {
        val start = i
        if (peek() == '-') i++
        while (i < s.length && (s[i].isDigit() || s[i] in ".eE+-")) i++
        val text = s.substring(start, i)
        val integral = text.none { it == '.' || it == 'e' || it == 'E' }
        return (if (integral) text.toLongOrNull() else null) ?: text.toDoubleOrNull() ?: fail("bad number '$text'")
    }

    private fun literal(word: String, value: Any?): Any? {
        if (!s.startsWith(word, i)) fail("unexpected token")
        i += word.length
        return value
    }

    private fun skipSpace() { while (i < s.length && s[i] in " \t\r\n") i++ }
    private fun peek(): Char = if (i < s.length) s[i] else '\u0000'
    private fun next(): Char = if (i < s.length) s[i++] else fail("unexpected end")
    private fun expect(c: Char) { if (next() != c) fail("expected '$c'") }
    private fun fail(what: String): Nothing = throw JsonException("invalid JSON at offset $i: $what")
}
