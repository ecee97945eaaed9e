package com.edgeeigenlora.core

import com.edgeeigenlora.core.bundle.Bundle
import com.edgeeigenlora.core.bundle.BundleException
import com.edgeeigenlora.core.io.AtomicFiles
import com.edgeeigenlora.core.task.Task
import com.edgeeigenlora.core.task.TaskStore
import org.junit.Assert.assertArrayEquals
import org.junit.Assert.assertEquals
import org.junit.Assert.assertTrue
import org.junit.Test
import java.io.File
import java.io.IOException
import kotlin.test.assertFailsWith

class TaskStoreTest {
    private val bundle = Bundle.open(Golden.bundle)
    private val dir = Golden.tempDir("store")

    private fun task(name: String, scale: Float = 1f): Task {
        val base = bundle.loadTask("sentiment")
        return Task(name, base.basisFingerprint, base.labels, FloatArray(base.coefficients.size) { base.coefficients[it] * scale }, base.head)
    }

    @Test fun saveLoadListDelete() {
        val store = TaskStore(dir)
        store.save(task("mine"), bundle)
        assertEquals(listOf("mine"), store.names())
        assertArrayEquals(task("mine").coefficients, store.load("mine", bundle).coefficients, 0f)
        store.save(task("mine", 2f), bundle) // overwrite
        assertArrayEquals(task("mine", 2f).coefficients, store.load("mine", bundle).coefficients, 0f)
        assertEquals(listOf("mine.safetensors"), dir.list()!!.toList()) // no temporaries left behind
        assertTrue(store.delete("mine"))
        assertEquals(emptyList<String>(), store.names())
    }

    @Test fun aFailedWriteKeepsTheOldFile() {
        val store = TaskStore(dir)
        val target = store.save(task("keep"), bundle)
        val before = target.readBytes()
        assertFailsWith<IOException> {
            AtomicFiles.write(target) { out -> out.write(ByteArray(100)); throw IOException("disk full") }
        }
        assertArrayEquals(before, target.readBytes())
        assertEquals(listOf("keep.safetensors"), dir.list()!!.toList())
    }

    @Test fun strayTemporariesAreCleanedOnOpen() {
        File(dir, ".x.safetensors.123.tmp").writeText("half")
        TaskStore(dir)
        assertEquals(emptyList<String>(), dir.list()!!.toList())
    }

    @Test fun badNamesAndForeignTasksAreRefused() {
        val store = TaskStore(dir)
        for (bad in listOf("../evil", "", "a/b", ".hidden", "x".repeat(65))) {
            assertFailsWith<BundleException>(bad) { store.save(task(bad), bundle) }
        }
        val foreign = task("foreign").let { Task(it.name, "0".repeat(64), it.labels, it.coefficients, it.head) }
        val e = assertFailsWith<BundleException> { store.save(foreign, bundle) }
        assertTrue(e.message!!, e.message!!.contains("re-train it on this bundle"))
        assertEquals(emptyList<String>(), store.names())
    }
}
