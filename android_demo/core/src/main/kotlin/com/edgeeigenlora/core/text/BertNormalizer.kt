package com.edgeeigenlora.core.text

import java.text.Normalizer
import java.util.Locale

/**
 * BERT's normalizer, as the `tokenizers` library's BertNormalizer applies it (the bundle's tokenizer.json):
 * 1. clean text: drop U+0000, U+FFFD and control/format characters (categories Cc, Cf, Co, Cn, Cs except
 *    tab, newline, carriage return); map every White_Space character to a space;
 * 2. put spaces around CJK ideographs, so each becomes its own word;
 * 3. strip accents (when asked, or by default when lowercasing): NFD, then drop non-spacing marks (Mn);
 * 4. lowercase code point by code point (full mapping, no context: 'Σ' is always 'σ', 'İ' -> "i̇").
 * Works on code points, never on UTF-16 units, so emoji and supplementary ideographs stay whole.
 */
class BertNormalizer(
    private val cleanText: Boolean = true,
    private val handleChineseChars: Boolean = true,
    private val stripAccents: Boolean = true,
    private val lowercase: Boolean = true,
) {
    fun normalize(text: String): String {
        var s = text
        if (cleanText) s = clean(s)
        if (handleChineseChars) s = padChinese(s)
        if (stripAccents) s = strip(s)
        if (lowercase) s = lower(s)
        return s
    }

    private fun clean(s: String): String = buildString(s.length) {
        s.codePoints().forEach { cp ->
            when {
                cp == 0 || cp == 0xFFFD || isControl(cp) -> Unit
                Chars.isWhitespace(cp) -> append(' ')
                else -> appendCodePoint(cp)
            }
        }
    }

    private fun padChinese(s: String): String = buildString(s.length) {
        s.codePoints().forEach { cp ->
            if (Chars.isChinese(cp)) append(' ').appendCodePoint(cp).append(' ') else appendCodePoint(cp)
        }
    }

    private fun strip(s: String): String = buildString(s.length) {
        Normalizer.normalize(s, Normalizer.Form.NFD).codePoints().forEach { cp ->
            if (Character.getType(cp) != Character.NON_SPACING_MARK.toInt()) appendCodePoint(cp)
        }
    }

    private fun lower(s: String): String = buildString(s.length) {
        s.codePoints().forEach { cp ->
            val one = String(Character.toChars(cp))
            append(one.lowercase(Locale.ROOT))
        }
    }

    private fun isControl(cp: Int): Boolean {
        if (cp == '\t'.code || cp == '\n'.code || cp == '\r'.code) return false
        return when (Character.getType(cp)) {
            Character.CONTROL.toInt(), Character.FORMAT.toInt(), Character.PRIVATE_USE.toInt(),
            Character.UNASSIGNED.toInt(), Character.SURROGATE.toInt() -> true
            else -> false
        }
    }
}
