package com.edgeeigenlora.core

import com.edgeeigenlora.core.bundle.Bundle
import com.edgeeigenlora.core.text.BertTokenizer
import org.junit.Assert.assertEquals
import org.junit.Assert.assertFalse
import org.junit.Assert.assertTrue
import org.junit.Test
import java.io.File

/** Token ids equal, exactly, those of the bundle's own tokenizer (tokenizers + tokenizer.json) on the golden texts. */
class TokenizerGoldenTest {
    private val cases = Golden.json("tokenizer_cases.json")["cases"] as List<*>
    private val tokenizer = Bundle.open(Golden.bundle).tokenizer

    @Test fun everyGoldenTextGivesTheSameIdsAndTokens() {
        assertTrue(cases.size >= 20)
        val failures = ArrayList<String>()
        for (c in cases) {
            val case = c as Map<*, *>
            val text = case["text"] as String
            val maxLength = (case["max_length"] as Number).toInt()
            val want = (case["ids"] as List<*>).map { (it as Number).toInt() }
            val got = tokenizer.encode(text, maxLength)
            if (got.ids.toList() != want) {
                failures.add("${text.take(40)}: want ${case["tokens"]}, got ${got.tokens}")
            }
        }
        assertEquals(failures.joinToString("\n"), 0, failures.size)
    }

    @Test fun bundleMaxLengthAndTruncationFlag() {
        assertEquals(128, tokenizer.maxLength)
        val long = tokenizer.encode(List(200) { "word" }.joinToString(" "))
        assertEquals(128, long.ids.size)
        assertTrue(long.truncated)
        assertEquals(tokenizer.clsId, long.ids.first())
        assertEquals(tokenizer.sepId, long.ids.last())
        assertFalse(tokenizer.encode("short").truncated)
    }

    @Test fun batchIsRightPaddedWithMask() {
        val batch = tokenizer.encodeBatch(listOf("a b c d", "a"))
        assertEquals(2, batch.rows)
        assertEquals(6, batch.cols)
        assertEquals(listOf(1L, 1L, 1L, 0L, 0L, 0L), batch.mask.slice(6 until 12))
        assertEquals(tokenizer.padId.toLong(), batch.ids[11])
    }

    @Test fun refusesANonBertTokenizer() {
        val dir = Golden.tempDir("tok")
        File(Golden.bundle, "tokenizer/vocab.txt").copyTo(File(dir, "vocab.txt"))
        File(dir, "tokenizer_config.json").writeText("""{"tokenizer_class": "GPT2Tokenizer"}""")
        val e = runCatching { BertTokenizer.fromFolder(dir, 128) }.exceptionOrNull()
        assertTrue(e?.message ?: "", e?.message?.contains("not supported") == true)
    }
}
