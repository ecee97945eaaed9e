package com.edgeeigenlora.core.text

import com.edgeeigenlora.core.json.Json
import com.edgeeigenlora.core.json.obj
import java.io.File

/** One tokenized text: `[CLS] pieces... [SEP]`, cut to the max length; [truncated] says whether it was cut. */
class Encoding(val ids: IntArray, val tokens: List<String>, val truncated: Boolean)

/**
 * BERT uncased WordPiece tokenization matching the bundle's tokenizer (the `tokenizers` library with
 * tokenizer.json): special tokens typed in the text ("[SEP]", case-sensitive) are kept whole, the rest is
 * normalized ([BertNormalizer]), split ([BertPreTokenizer]) and cut into pieces ([WordPiece]); then
 * `[CLS] ... [SEP]` wraps at most maxLength - 2 pieces.
 */
class BertTokenizer(
    val vocab: Vocab,
    val maxLength: Int,
    private val normalizer: BertNormalizer = BertNormalizer(),
    val specials: SpecialTokens = SpecialTokens(),
) {
    private val wordPiece = WordPiece(vocab, specials.unk)
    private val specialStrings = specials.all.filter { it in vocab }.sortedByDescending { it.length }
    val clsId = vocab.require(specials.cls)
    val sepId = vocab.require(specials.sep)
    val padId = vocab.require(specials.pad)

    init { require(maxLength >= 2) { "max length must be >= 2 (room for [CLS] and [SEP]), got $maxLength" } }

    fun tokenize(text: String): List<String> {
        val out = ArrayList<String>()
        for ((segment, isSpecial) in splitSpecials(text)) {
            if (isSpecial) { out.add(segment); continue }
            for (word in BertPreTokenizer.split(normalizer.normalize(segment))) out.addAll(wordPiece.tokenize(word))
        }
        return out
    }

    fun encode(text: String, maxLength: Int = this.maxLength): Encoding {
        require(maxLength >= 2) { "max length must be >= 2, got $maxLength" }
        val pieces = tokenize(text)
        val keep = minOf(pieces.size, maxLength - 2)
        val tokens = ArrayList<String>(keep + 2).apply { add(specials.cls); addAll(pieces.subList(0, keep)); add(specials.sep) }
        val ids = IntArray(tokens.size) { vocab.id(tokens[it]) ?: vocab.require(specials.unk) }
        return Encoding(ids, tokens, truncated = keep < pieces.size)
    }

    /** Texts -> right-padded [rows x longest] ids and mask, as the graphs take them. */
    fun encodeBatch(texts: List<String>): TokenBatch = TokenBatch.pad(texts.map { encode(it).ids }, padId)

    /** Raw text cut into (segment, isSpecialToken), leftmost-longest match of the special tokens. */
    private fun splitSpecials(text: String): List<Pair<String, Boolean>> {
        if (specialStrings.isEmpty()) return listOf(text to false)
        val out = ArrayList<Pair<String, Boolean>>()
        var last = 0
        var i = 0
        while (i < text.length) {
            val hit = if (text[i] == '[') specialStrings.firstOrNull { text.startsWith(it, i) } else null
            if (hit != null) {
                if (i > last) out.add(text.substring(last, i) to false)
                out.add(hit to true)
                i += hit.length
                last = i
            } else {
                i++
            }
        }
        if (last < text.length) out.add(text.substring(last) to false)
        return out
    }

    companion object {
        /**
         * From a bundle's tokenizer folder: vocab.txt + tokenizer_config.json (+ special_tokens_map.json).
         * Refuses tokenizers that are not BERT WordPiece, so a mismatch is loud, not a silent accuracy loss.
         */
        fun fromFolder(dir: File, maxLength: Int): BertTokenizer {
            val vocabFile = File(dir, "vocab.txt")
            require(vocabFile.isFile) { "$vocabFile is missing: the bundle's tokenizer is not a WordPiece (BERT) one" }
            val configFile = File(dir, "tokenizer_config.json")
            val config = if (configFile.isFile) Json.parse(configFile.readText()).obj("tokenizer_config.json") else emptyMap()
            val cls = config["tokenizer_class"] as? String
            require(cls == null || cls.startsWith("Bert") || cls.startsWith("DistilBert")) {
                "$configFile: tokenizer_class $cls is not supported on the device (BERT WordPiece only)"
            }
            val lowercase = config["do_lower_case"] as? Boolean ?: true
            val strip = config["strip_accents"] as? Boolean ?: lowercase // null: follow lowercasing, as BERT does
            val chinese = config["tokenize_chinese_chars"] as? Boolean ?: true
            val mapFile = File(dir, "special_tokens_map.json")
            val map = if (mapFile.isFile) Json.parse(mapFile.readText()).obj("special_tokens_map.json") else emptyMap()
            fun special(key: String, default: String): String = when (val v = map[key] ?: config[key]) {
                is String -> v
                is Map<*, *> -> v["content"] as? String ?: default
                else -> default
            }
            val specials = SpecialTokens(
                cls = special("cls_token", "[CLS]"), sep = special("sep_token", "[SEP]"), pad = special("pad_token", "[PAD]"),
                unk = special("unk_token", "[UNK]"), mask = special("mask_token", "[MASK]"),
            )
            return BertTokenizer(Vocab.read(vocabFile), maxLength, BertNormalizer(true, chinese, strip, lowercase), specials)
        }
    }
}

data class SpecialTokens(
    val cls: String = "[CLS]",
    val sep: String = "[SEP]",
    val pad: String = "[PAD]",
    val unk: String = "[UNK]",
    val mask: String = "[MASK]",
) {
    val all: List<String> get() = listOf(pad, unk, cls, sep, mask)
}
