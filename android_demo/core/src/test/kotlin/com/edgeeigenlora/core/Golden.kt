package com.edgeeigenlora.core

import com.edgeeigenlora.core.json.Json
import com.edgeeigenlora.core.json.obj
import java.io.File
import java.nio.ByteBuffer
import java.nio.ByteOrder

/** The golden files written by scripts/make_android_goldens.py from a real exported bundle. */
object Golden {
    val dir: File = File(System.getProperty("golden.dir") ?: "android_demo/core/src/test/resources/golden").also {
        require(it.isDirectory) { "golden folder $it is missing: run scripts/android_core_test.sh from the repository" }
    }
    val bundle: File get() = File(dir, "bundle")

    fun json(name: String): Map<String, Any?> = Json.parse(File(dir, name).readText()).obj(name)

    fun floats(name: String): FloatArray {
        val bytes = File(dir, name).readBytes()
        return FloatArray(bytes.size / 4).also { ByteBuffer.wrap(bytes).order(ByteOrder.LITTLE_ENDIAN).asFloatBuffer().get(it) }
    }

    /** A private copy of the golden bundle that a test may damage. */
    fun bundleCopy(): File = tempDir("golden-bundle").also { bundle.copyRecursively(it, overwrite = true) }

    private val temporaries = ArrayList<File>().also { dirs ->
        Runtime.getRuntime().addShutdownHook(Thread { synchronized(dirs) { dirs.forEach { it.deleteRecursively() } } })
    }

    /** A temporary folder, removed when the test JVM exits. */
    fun tempDir(prefix: String): File =
        kotlin.io.path.createTempDirectory(prefix).toFile().also { synchronized(temporaries) { temporaries.add(it) } }

    fun outDir(): File? = System.getProperty("core.out.dir")?.let { File(it).apply { mkdirs() } }
}
