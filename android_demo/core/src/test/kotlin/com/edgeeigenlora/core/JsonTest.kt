package com.edgeeigenlora.core

import com.edgeeigenlora.core.json.Json
import com.edgeeigenlora.core.json.JsonException
import org.junit.Assert.assertEquals
import org.junit.Test
import kotlin.test.assertFailsWith

class JsonTest {
    @Test fun parsesAndWrites() {
        val v = Json.parse("""{"a": [1, -2.5e3, true, null, "x\u00e9\ud83d\ude0d\n"], "b": {}}""")
        assertEquals(mapOf("a" to listOf(1L, -2500.0, true, null, "xé😍\n"), "b" to emptyMap<String, Any?>()), v)
        assertEquals(v, Json.parse(Json.write(v)))
        assertEquals("""{"k":[1,0.5,"q\"\\"]}""", Json.write(mapOf("k" to listOf(1, 0.5, "q\"\\"))))
    }

    @Test fun refusesMalformedInput() {
        for (bad in listOf("{", "[1,]", "{\"a\" 1}", "tru", "\"\u0001\"", "1 2", "{\"a\":01x}")) {
            assertFailsWith<JsonException>(bad) { Json.parse(bad) }
        }
    }
}
