package com.edgeeigenlora.core.io

import java.io.File
import java.io.FileOutputStream
import java.io.IOException
import java.nio.file.AtomicMoveNotSupportedException
import java.nio.file.Files
import java.nio.file.StandardCopyOption

/**
 * Writes that never leave a half-written file: a hidden temporary beside the target is written, fsync'ed and
 * renamed over the target (the same recipe as the Python side's fileio.atomic_path). A crash leaves either the
 * old file or the new one, plus at worst a stray `.name.*.tmp` that [cleanTemporaries] removes.
 */
object AtomicFiles {
    fun write(target: File, bytes: ByteArray) = write(target) { it.write(bytes) }

    fun write(target: File, writer: (FileOutputStream) -> Unit) {
        val dir = target.absoluteFile.parentFile
        if (!dir.isDirectory && !dir.mkdirs()) throw IOException("cannot create folder $dir")
        val tmp = File.createTempFile(".${target.name}.", ".tmp", dir)
        try {
            FileOutputStream(tmp).use { out ->
                writer(out)
                out.flush()
                out.fd.sync()
            }
            try {
                Files.move(tmp.toPath(), target.toPath(), StandardCopyOption.ATOMIC_MOVE, StandardCopyOption.REPLACE_EXISTING)
            } catch (e: AtomicMoveNotSupportedException) {
                throw IOException("the file system of $dir cannot rename atomically; store tasks elsewhere", e)
            }
        } finally {
            if (tmp.exists()) tmp.delete()
        }
    }

    /** Remove temporaries left by an interrupted write (names start with '.' and end with '.tmp'). */
    fun cleanTemporaries(dir: File): Int =
        dir.listFiles { f -> f.isFile && f.name.startsWith(".") && f.name.endsWith(".tmp") }
            ?.count { it.delete() } ?: 0
}
