package com.edgeeigenlora.core.text

import java.io.File

/** A WordPiece vocabulary: one token per line of vocab.txt, its id the line number (0-based). */
class Vocab(tokens: List<String>) {
    private val ids: Map<String, Int> = HashMap<String, Int>(tokens.size * 2).also { map ->
        tokens.forEachIndexed { id, token -> map.putIfAbsent(token, id) }
    }
    private val tokens: List<String> = tokens.toList()

    val size: Int get() = tokens.size

    fun id(token: String): Int? = ids[token]
    fun token(id: Int): String = tokens[id]
    operator fun contains(token: String): Boolean = token in ids

    fun require(token: String): Int =
        ids[token] ?: throw IllegalArgumentException("token '$token' is not in the vocabulary (vocab.txt)")

    companion object {
        fun read(file: File): Vocab = parse(file.readText(Charsets.UTF_8))

        /** Lines as written by BertTokenizer.save_vocabulary: '\n'-separated, a trailing newline. */
        fun parse(text: String): Vocab = Vocab(text.split('\n').let { if (it.last().isEmpty()) it.dropLast(1) else it })
    }
}
