package com.edgeeigenlora.core.bundle

import com.edgeeigenlora.core.io.Sha256
import java.io.File

/**
 * The device-side twin of the Python `verify_bundle`: every file listed under `files` exists inside the
 * bundle folder and has its sha256; every file the manifest references is listed; task entries are sane.
 * A single flipped byte anywhere is refused with a message naming the file.
 *
 * With [requireOnnx] false (what the phone ships), a graph's .onnx file may be absent when its ORT-format twin
 * (`ort_file`) is present: the app carries only the .ort files, and those are checked like every other file.
 */
object BundleVerifier {
    private val TASK_NAME = Regex("^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")

    fun verify(root: File, requireOnnx: Boolean = true, progress: (String) -> Unit = {}): Manifest {
        val manifest = Manifest.read(root)
        val optional = if (requireOnnx) emptySet() else manifest.graphs.filter { it.ortFile != null }.map { it.file }.toSet()
        for ((rel, digest) in manifest.files) {
            val file = inside(root, rel)
            if (!file.isFile && rel in optional) continue
            if (!file.isFile) throw BundleException("bundle file $rel listed in manifest.json is missing; re-copy the bundle or re-export it.")
            progress(rel)
            val actual = Sha256.of(file)
            if (actual != digest) {
                throw BundleException(
                    "bundle file $rel: sha256 mismatch (manifest ${digest.take(12)}, file ${actual.take(12)}); the file was " +
                        "modified or corrupted: re-copy the bundle or re-export it."
                )
            }
        }
        for (rel in manifest.referencedFiles()) {
            if (rel !in manifest.files) throw BundleException("manifest.json: $rel is referenced but has no sha256 under 'files'; re-export.")
        }
        for ((name, entry) in manifest.tasks) {
            checkTaskName(name)
            if (entry.file != "tasks/$name.safetensors") {
                throw BundleException("manifest.json: task '$name' points at '${entry.file}', not tasks/$name.safetensors.")
            }
        }
        return manifest
    }

    /** A path from the manifest, refused if it would leave the bundle folder. */
    fun inside(root: File, rel: String): File {
        val base = root.canonicalFile
        val file = File(base, rel).canonicalFile
        if (File(rel).isAbsolute || !file.path.startsWith(base.path + File.separator)) {
            throw BundleException("manifest.json: path '$rel' leaves the bundle folder; the manifest is unsafe: re-export.")
        }
        return file
    }

    fun checkTaskName(name: String): String {
        if (!TASK_NAME.matches(name) || ".." in name) {
            throw BundleException(
                "task name '$name' is not allowed: use 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit, " +
                    "with no path separators and no '..'."
            )
        }
        return name
    }
}
