package com.edgeeigenlora.core

import com.edgeeigenlora.core.bundle.Bundle
import com.edgeeigenlora.core.bundle.BundleException
import com.edgeeigenlora.core.bundle.ModuleCoefficients
import com.edgeeigenlora.core.safetensors.SafeTensors
import com.edgeeigenlora.core.task.Task
import com.edgeeigenlora.core.task.TaskCodec
import org.junit.Assert.assertArrayEquals
import org.junit.Assert.assertEquals
import org.junit.Assert.assertTrue
import org.junit.Test
import java.io.File
import kotlin.test.assertFailsWith

/** Task files -> packed coefficient vector, equal (bit for bit) to the Python side's bundle.pack. */
class PackingTest {
    private val bundle = Bundle.open(Golden.bundle)

    @Test fun packedVectorsEqualPythons() {
        val packed = Golden.json("packed.json")
        assertEquals(setOf("sentiment", "topic"), packed.keys)
        for (name in packed.keys) {
            val want = Golden.floats("packed_$name.bin")
            val task = bundle.loadTask(name)
            assertEquals(bundle.layout.size, want.size)
            assertArrayEquals(name, want, task.coefficients, 0f)
        }
    }

    @Test fun headsAndLabelsAreRead() {
        val topic = bundle.loadTask("topic")
        assertEquals(listOf("sports", "politics", "science", "arts"), topic.labels)
        assertEquals(4, topic.head.numLabels)
        assertEquals(384, topic.head.hidden)
        val raw = SafeTensors.read(File(Golden.bundle, "tasks/topic.safetensors").readBytes())
        assertArrayEquals(raw.tensors.getValue("head.weight").floats(), topic.head.weight, 0f)
        assertEquals(bundle.basisFingerprint, topic.basisFingerprint)
    }

    @Test fun layoutIsSortedAndContiguous() {
        val layout = bundle.layout
        assertEquals(layout.modules.sorted(), layout.modules)
        var offset = 0
        for (seg in layout.segments) {
            assertEquals(seg.name, offset, seg.offset)
            offset += seg.size
        }
        assertEquals(layout.size, offset)
        val task = bundle.loadTask("sentiment")
        assertArrayEquals(task.coefficients, layout.pack(layout.unpack(task.coefficients)), 0f)
    }

    @Test fun reEncodedTaskRoundTripsAndPythonCanReadIt() {
        val task = bundle.loadTask("topic")
        val bytes = TaskCodec.encode(Task("kotlin_written", task.basisFingerprint, task.labels, task.coefficients, task.head,
            mapOf("source" to "PackingTest")), bundle.layout)
        val back = TaskCodec.decode(bytes, bundle.layout, bundle.hidden, bundle.basisFingerprint, "re-encoded")
        assertArrayEquals(task.coefficients, back.coefficients, 0f)
        assertArrayEquals(task.head.bias, back.head.bias, 0f)
        assertEquals("kotlin_written", back.name)
        assertEquals(task.labels, back.labels)
        Golden.outDir()?.let { File(it, "kotlin_written.safetensors").writeBytes(bytes) } // read by tests/test_android_core.py
    }

    @Test fun aTaskForAnotherBasisIsRefused() {
        val task = bundle.loadTask("sentiment")
        val bytes = TaskCodec.encode(Task("other", "f".repeat(64), task.labels, task.coefficients, task.head), bundle.layout)
        val e = assertFailsWith<BundleException> { TaskCodec.decode(bytes, bundle.layout, 384, bundle.basisFingerprint, "other.safetensors") }
        assertTrue(e.message!!, e.message!!.contains("trained for basis ffffffffffff"))
    }

    @Test fun wrongShapesAndMissingModulesAreRefused() {
        val coefficients = bundle.layout.unpack(bundle.loadTask("sentiment").coefficients).toMutableMap()
        val first = bundle.layout.modules.first()
        coefficients[first] = ModuleCoefficients(FloatArray(16 * 4), FloatArray(16 * 4))
        val e = assertFailsWith<BundleException> { bundle.layout.pack(coefficients) }
        assertTrue(e.message!!, e.message!!.contains("rank 8"))
        coefficients.remove(first)
        val e2 = assertFailsWith<BundleException> { bundle.layout.pack(coefficients) }
        assertTrue(e2.message!!, e2.message!!.contains("missing modules [$first]"))
    }

    @Test fun aTruncatedTaskFileIsRefused() {
        val bytes = File(Golden.bundle, "tasks/sentiment.safetensors").readBytes()
        val e = assertFailsWith<BundleException> {
            TaskCodec.decode(bytes.copyOf(bytes.size - 10), bundle.layout, 384, null, "cut.safetensors")
        }
        assertTrue(e.message!!, e.message!!.contains("not a readable safetensors file"))
    }
}
