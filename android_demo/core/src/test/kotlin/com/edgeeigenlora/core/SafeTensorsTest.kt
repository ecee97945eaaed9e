package com.edgeeigenlora.core

import com.edgeeigenlora.core.safetensors.SafeTensors
import com.edgeeigenlora.core.safetensors.SafeTensorsException
import com.edgeeigenlora.core.safetensors.Tensor
import org.junit.Assert.assertArrayEquals
import org.junit.Assert.assertEquals
import org.junit.Test
import java.io.File
import java.nio.ByteBuffer
import java.nio.ByteOrder
import kotlin.test.assertFailsWith

class SafeTensorsTest {
    @Test fun readsPythonWrittenFiles() {
        val file = SafeTensors.read(File(Golden.bundle, "tasks/sentiment.safetensors").readBytes())
        assertEquals("edge-eigenlora-task", file.metadata["format"])
        assertEquals(12 * 2 + 2, file.tensors.size)
        assertArrayEquals(intArrayOf(16, 8), file.tensors.getValue("encoder.layer.0.attention.self.query.alpha_A").shape)
    }

    @Test fun writeThenReadRoundTrips() {
        val a = Tensor.of(floatArrayOf(1f, -2.5f, 3e-8f, Float.MAX_VALUE, 0f, -0f), 2, 3)
        val bytes = SafeTensors.write(mapOf("b" to Tensor.of(floatArrayOf(7f), 1), "a" to a), mapOf("k" to "v\"\n"))
        assertEquals(0, (bytes.size - 8 - 6 * 4 - 4) % 8) // header padded to 8 bytes
        val back = SafeTensors.read(bytes)
        assertArrayEquals(a.floats(), back.tensors.getValue("a").floats(), 0f)
        assertEquals(listOf("a", "b"), back.tensors.keys.toList())
        assertEquals("v\"\n", back.metadata["k"])
    }

    @Test fun refusesBadOffsetsAndHeaders() {
        val good = SafeTensors.write(mapOf("x" to Tensor.of(floatArrayOf(1f, 2f), 2)))
        assertFailsWith<SafeTensorsException> { SafeTensors.read(good.copyOf(4)) }
        assertFailsWith<SafeTensorsException> { SafeTensors.read(good.copyOf(good.size - 1)) }
        val huge = good.copyOf().also { ByteBuffer.wrap(it).order(ByteOrder.LITTLE_ENDIAN).putLong(0, 1L shl 40) }
        assertFailsWith<SafeTensorsException> { SafeTensors.read(huge) }
        val header = """{"x":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}}"""
        val bad = ByteBuffer.allocate(8 + header.length + 8).order(ByteOrder.LITTLE_ENDIAN)
            .putLong(header.length.toLong()).put(header.toByteArray()).put(ByteArray(8)).array()
        val e = assertFailsWith<SafeTensorsException> { SafeTensors.read(bad) }
        assertEquals(true, e.message!!.contains("do not match its shape"))
    }
}
