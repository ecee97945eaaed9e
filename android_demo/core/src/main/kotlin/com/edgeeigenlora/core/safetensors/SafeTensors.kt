package com.edgeeigenlora.core.safetensors

import com.edgeeigenlora.core.json.Json
import com.edgeeigenlora.core.json.JsonException
import com.edgeeigenlora.core.json.obj
import java.nio.ByteBuffer
import java.nio.ByteOrder

/** One tensor: dtype ("F32", "I64", ...), shape, and its little-endian bytes. */
class Tensor(val dtype: String, val shape: IntArray, val bytes: ByteArray) {
    val count: Int get() = shape.fold(1) { a, b -> a * b }

    fun floats(): FloatArray {
        require(dtype == "F32") { "tensor is $dtype, not F32" }
        return FloatArray(count).also { ByteBuffer.wrap(bytes).order(ByteOrder.LITTLE_ENDIAN).asFloatBuffer().get(it) }
    }

    companion object {
        fun of(values: FloatArray, vararg shape: Int): Tensor {
            require(shape.fold(1) { a, b -> a * b } == values.size) { "shape ${shape.toList()} does not hold ${values.size} values" }
            val buf = ByteBuffer.allocate(values.size * 4).order(ByteOrder.LITTLE_ENDIAN)
            buf.asFloatBuffer().put(values)
            return Tensor("F32", shape, buf.array())
        }
    }
}

class SafeTensorsFile(val tensors: Map<String, Tensor>, val metadata: Map<String, String>)

class SafeTensorsException(message: String) : RuntimeException(message)

/**
 * The safetensors format (https://github.com/huggingface/safetensors): u64 little-endian header length N, an
 * N-byte JSON header {name: {dtype, shape, data_offsets: [begin, end]}, "__metadata__": {str: str}} padded
 * with spaces to 8 bytes, then the tensors' bytes. Reading checks every offset; writing sorts tensors by name.
 */
object SafeTensors {
    private val DTYPE_SIZE = mapOf("F64" to 8, "F32" to 4, "F16" to 2, "BF16" to 2, "I64" to 8, "I32" to 4,
        "I16" to 2, "I8" to 1, "U8" to 1, "BOOL" to 1)

    fun read(bytes: ByteArray, where: String = "safetensors file"): SafeTensorsFile {
        fun fail(why: String): Nothing =
            throw SafeTensorsException("$where is not a readable safetensors file ($why); it may be truncated or corrupt: re-create it.")
        if (bytes.size < 8) fail("shorter than its 8-byte header length")
        val n = ByteBuffer.wrap(bytes, 0, 8).order(ByteOrder.LITTLE_ENDIAN).long
        if (n < 2 || n > 100_000_000 || 8 + n > bytes.size) fail("header length $n does not fit the file's ${bytes.size} bytes")
        val header = try {
            Json.parse(String(bytes, 8, n.toInt(), Charsets.UTF_8)).obj("header")
        } catch (e: JsonException) {
            fail("header: ${e.message}")
        }
        val dataStart = 8 + n.toInt()
        val dataSize = bytes.size - dataStart
        val metadata = (header["__metadata__"] as? Map<*, *>)?.entries?.associate { (k, v) -> k.toString() to v.toString() } ?: emptyMap()
        val spans = ArrayList<LongRange>()
        val tensors = LinkedHashMap<String, Tensor>()
        for ((name, value) in header) {
            if (name == "__metadata__") continue
            val info = value as? Map<*, *> ?: fail("entry '$name' is not an object")
            val dtype = info["dtype"] as? String ?: fail("entry '$name' has no dtype")
            val size = DTYPE_SIZE[dtype] ?: fail("entry '$name' has unknown dtype $dtype")
            val shape = (info["shape"] as? List<*>)?.map { (it as? Number)?.toInt() ?: fail("bad shape of '$name'") } ?: fail("no shape for '$name'")
            val offsets = (info["data_offsets"] as? List<*>)?.map { (it as? Number)?.toLong() ?: fail("bad offsets of '$name'") }
            if (offsets == null || offsets.size != 2) fail("entry '$name' has no data_offsets")
            val (begin, end) = offsets
            val count = shape.fold(1L) { a, b -> if (b < 0) fail("negative dimension in '$name'") else a * b }
            if (begin < 0 || end < begin || end > dataSize || end - begin != count * size) {
                fail("entry '$name': data_offsets [$begin, $end) do not match its shape $shape x $size bytes within $dataSize data bytes")
            }
            spans.add(begin until end)
            tensors[name] = Tensor(dtype, shape.toIntArray(), bytes.copyOfRange(dataStart + begin.toInt(), dataStart + end.toInt()))
        }
        val sorted = spans.sortedBy { it.first }
        var cursor = 0L
        for (span in sorted) {
            if (span.first != cursor) fail("tensor data overlaps or leaves a gap at byte $cursor")
            cursor = span.last + 1
        }
        if (cursor != dataSize.toLong()) fail("tensor data covers $cursor of $dataSize bytes")
        return SafeTensorsFile(tensors, metadata)
    }

    fun write(tensors: Map<String, Tensor>, metadata: Map<String, String> = emptyMap()): ByteArray {
        val names = tensors.keys.sorted()
        val header = LinkedHashMap<String, Any?>()
        if (metadata.isNotEmpty()) header["__metadata__"] = metadata.toSortedMap()
        var offset = 0L
        for (name in names) {
            val t = tensors.getValue(name)
            require(t.bytes.size.toLong() == t.count.toLong() * (DTYPE_SIZE[t.dtype] ?: error("unknown dtype ${t.dtype}"))) {
                "tensor '$name' has ${t.bytes.size} bytes for shape ${t.shape.toList()} ${t.dtype}"
            }
            header[name] = mapOf("dtype" to t.dtype, "shape" to t.shape.toList(), "data_offsets" to listOf(offset, offset + t.bytes.size))
            offset += t.bytes.size
        }
        var json = Json.write(header).toByteArray(Charsets.UTF_8)
        val padded = (json.size + 7) / 8 * 8
        json = json + ByteArray(padded - json.size) { ' '.code.toByte() }
        val out = ByteBuffer.allocate(8 + json.size + offset.toInt()).order(ByteOrder.LITTLE_ENDIAN)
        out.putLong(json.size.toLong()).put(json)
        for (name in names) out.put(tensors.getValue(name).bytes)
        return out.array()
    }
}
