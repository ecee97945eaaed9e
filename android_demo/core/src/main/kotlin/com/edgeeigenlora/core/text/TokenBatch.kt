package com.edgeeigenlora.core.text

/** Row-major [rows x cols] int64 ids and attention mask, right-padded: the graphs' `input_ids`/`attention_mask`. */
class TokenBatch(val ids: LongArray, val mask: LongArray, val rows: Int, val cols: Int) {
    init { require(ids.size == rows * cols && mask.size == rows * cols) { "ids/mask must hold rows x cols values" } }

    val shape: LongArray get() = longArrayOf(rows.toLong(), cols.toLong())

    fun slice(from: Int, to: Int): TokenBatch {
        val rowsOut = to - from
        val width = (from until to).maxOf { r -> (0 until cols).count { mask[r * cols + it] != 0L } }.coerceAtLeast(1)
        val ids2 = LongArray(rowsOut * width)
        val mask2 = LongArray(rowsOut * width)
        for (r in 0 until rowsOut) for (c in 0 until width) {
            ids2[r * width + c] = ids[(from + r) * cols + c]
            mask2[r * width + c] = mask[(from + r) * cols + c]
        }
        return TokenBatch(ids2, mask2, rowsOut, width)
    }

    companion object {
        fun pad(rows: List<IntArray>, padId: Int): TokenBatch {
            require(rows.isNotEmpty()) { "no texts given" }
            val cols = rows.maxOf { it.size }
            val ids = LongArray(rows.size * cols) { padId.toLong() }
            val mask = LongArray(rows.size * cols)
            rows.forEachIndexed { r, row ->
                row.forEachIndexed { c, id -> ids[r * cols + c] = id.toLong(); mask[r * cols + c] = 1 }
            }
            return TokenBatch(ids, mask, rows.size, cols)
        }
    }
}
