package com.edgeeigenlora.core

import com.edgeeigenlora.core.train.LabelledExamples
import org.junit.Assert.assertEquals
import org.junit.Test
import java.io.File
import kotlin.test.assertFailsWith

class LabelledExamplesTest {
    private fun file(name: String, text: String) = File(Golden.tempDir("ex"), name).apply { writeText(text) }

    @Test fun typedLinesAndLabelOrder() {
        val ex = LabelledExamples.parseTyped("pos: great: really\n\n10\tten\n2: two\nneg:bad\n")
        assertEquals(listOf("2", "10", "neg", "pos"), ex.labelNames) // integers first, numerically, like the Python side
        assertEquals(listOf("great: really", "ten", "two", "bad"), ex.texts)
        assertEquals(listOf(3, 1, 0, 2), ex.labels.toList())
    }

    @Test fun csvTsvAndJsonl() {
        val csv = LabelledExamples.read(file("a.csv", "label,text\npos,\"fine, \"\"really\"\"\nyes\"\nneg,bad\n"))
        assertEquals(listOf("fine, \"really\"\nyes", "bad"), csv.texts)
        val tsv = LabelledExamples.read(file("a.tsv", "text\tlabel\nhello\t1\nbye\t0\n"))
        assertEquals(listOf("0", "1"), tsv.labelNames)
        val jsonl = LabelledExamples.read(file("a.jsonl", "{\"text\": \"h\u00e9\", \"label\": 1}\n\n{\"text\": \"x\", \"label\": \"0\"}\n"))
        assertEquals(listOf(1, 0), jsonl.labels.toList())
    }

    @Test fun clearErrors() {
        assertFailsWith<IllegalArgumentException> { LabelledExamples.parseTyped("only one: line") }
        assertFailsWith<IllegalArgumentException> { LabelledExamples.parseTyped("a: x\na: y") }
        assertFailsWith<IllegalArgumentException> { LabelledExamples.parseTyped("no separator here\nb: y") }
        val e = assertFailsWith<IllegalArgumentException> { LabelledExamples.read(file("a.csv", "text,lab\nx,1\ny,2\n")) }
        assertEquals(true, e.message!!.contains("'text' and 'label'"))
        assertFailsWith<IllegalArgumentException> { LabelledExamples.read(file("a.jsonl", "{\"text\": \"x\"}\n{\"text\":\"y\",\"label\":1}")) }
    }
}
