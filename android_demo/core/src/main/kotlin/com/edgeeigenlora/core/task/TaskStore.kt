package com.edgeeigenlora.core.task

import com.edgeeigenlora.core.bundle.Bundle
import com.edgeeigenlora.core.bundle.BundleException
import com.edgeeigenlora.core.bundle.BundleVerifier
import com.edgeeigenlora.core.io.AtomicFiles
import java.io.File

/**
 * Tasks trained on the phone: `<dir>/<name>.safetensors`, the same file format as the bundle's tasks (the
 * workstation's `edge-eigenlora` reads them back). Every save is atomic (temp + fsync + rename): a crash or
 * a full disk leaves the previous version, never a torn file.
 */
class TaskStore(val dir: File) {
    init {
        if (!dir.isDirectory && !dir.mkdirs()) throw BundleException("cannot create the task folder $dir")
        AtomicFiles.cleanTemporaries(dir)
    }

    fun names(): List<String> =
        dir.listFiles { f -> f.isFile && f.name.endsWith(SUFFIX) && !f.name.startsWith(".") }
            ?.map { it.name.removeSuffix(SUFFIX) }?.sorted() ?: emptyList()

    fun file(name: String): File = File(dir, BundleVerifier.checkTaskName(name) + SUFFIX)

    fun contains(name: String): Boolean = file(name).isFile

    /** Write [task] for [bundle]: refused if it belongs to another basis or does not fit the layout. */
    fun save(task: Task, bundle: Bundle): File {
        if (task.basisFingerprint != bundle.basisFingerprint) {
            throw BundleException(
                "task '${task.name}' was trained for basis ${task.basisFingerprint.take(12)} but this bundle carries basis " +
                    "${bundle.basisFingerprint.take(12)}; re-train it on this bundle."
            )
        }
        if (task.head.hidden != bundle.hidden) throw BundleException("task '${task.name}': head hidden size ${task.head.hidden} != ${bundle.hidden}")
        val target = file(task.name)
        AtomicFiles.write(target, TaskCodec.encode(task, bundle.layout))
        return target
    }

    fun load(name: String, bundle: Bundle): Task {
        val f = file(name)
        if (!f.isFile) throw BundleException("task '$name' is not in the task folder $dir; it has ${names()}.")
        return TaskCodec.decode(f.readBytes(), bundle.layout, bundle.hidden, bundle.basisFingerprint, "task file ${f.name}")
    }

    fun delete(name: String): Boolean = file(name).delete()

    companion object {
        const val SUFFIX = ".safetensors"
    }
}
