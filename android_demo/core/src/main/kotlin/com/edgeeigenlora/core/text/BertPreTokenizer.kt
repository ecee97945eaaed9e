package com.edgeeigenlora.core.text

/** Splits normalized text into words: on whitespace (dropped) and around each punctuation mark (kept). */
object BertPreTokenizer {
    fun split(text: String): List<String> {
        val words = ArrayList<String>()
        val word = StringBuilder()
        fun flush() { if (word.isNotEmpty()) { words.add(word.toString()); word.setLength(0) } }
        text.codePoints().forEach { cp ->
            when {
                Chars.isWhitespace(cp) -> flush()
                Chars.isPunctuation(cp) -> { flush(); words.add(String(Character.toChars(cp))) }
                else -> word.appendCodePoint(cp)
            }
        }
        flush()
        return words
    }
}
