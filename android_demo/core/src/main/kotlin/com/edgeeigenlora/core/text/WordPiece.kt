package com.edgeeigenlora.core.text

/**
 * Greedy longest-match-first WordPiece: a word becomes vocabulary pieces (continuations prefixed "##"), or the
 * unknown token when a piece cannot be matched or the word is longer than [maxCharsPerWord] code points.
 */
class WordPiece(
    private val vocab: Vocab,
    private val unkToken: String = "[UNK]",
    private val prefix: String = "##",
    private val maxCharsPerWord: Int = 100,
) {
    init { vocab.require(unkToken) }

    fun tokenize(word: String): List<String> {
        val points = word.codePoints().toArray()
        if (points.size > maxCharsPerWord) return listOf(unkToken)
        // Offsets of every code point in UTF-16 units, so substrings never split a surrogate pair.
        val offsets = IntArray(points.size + 1)
        for (k in points.indices) offsets[k + 1] = offsets[k] + Character.charCount(points[k])
        val pieces = ArrayList<String>()
        var start = 0
        while (start < points.size) {
            var end = points.size
            var found: String? = null
            while (start < end) {
                val piece = word.substring(offsets[start], offsets[end]).let { if (start > 0) prefix + it else it }
                if (piece in vocab) { found = piece; break }
                end--
            }
            if (found == null) return listOf(unkToken)
            pieces.add(found)
            start = end
        }
        return pieces
    }
}
