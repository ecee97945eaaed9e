package com.edgeeigenlora.core.bundle

import com.edgeeigenlora.core.task.Task
import com.edgeeigenlora.core.task.TaskCodec
import com.edgeeigenlora.core.text.BertTokenizer
import java.io.File

/** An opened (and by default sha256-verified) bundle folder: manifest, tokenizer, tasks, graph files. */
class Bundle private constructor(val root: File, val manifest: Manifest) {
    val layout: CoefficientLayout get() = manifest.layout
    val hidden: Int get() = manifest.hiddenSize
    val basisFingerprint: String get() = manifest.basisFingerprint

    val tokenizer: BertTokenizer by lazy {
        val vocab = manifest.tokenizer.files.firstOrNull { it.endsWith("vocab.txt") }
            ?: throw BundleException("manifest.json: tokenizer.files lists no vocab.txt; re-export with a BERT (WordPiece) tokenizer.")
        BertTokenizer.fromFolder(BundleVerifier.inside(root, vocab).parentFile, manifest.tokenizer.maxLength)
    }

    val taskNames: List<String> get() = manifest.tasks.keys.sorted()

    fun loadTask(name: String): Task {
        BundleVerifier.checkTaskName(name)
        val entry = manifest.tasks[name] ?: throw BundleException("task '$name' is not in this bundle; it has $taskNames.")
        val file = BundleVerifier.inside(root, entry.file)
        return TaskCodec.decode(file.readBytes(), layout, hidden, basisFingerprint, "task file ${file.name}")
    }

    /** The graph file of a variant: the .ort (ORT Mobile) form when present and preferred. */
    fun graphFile(variant: String, preferOrt: Boolean = true): File {
        val g = manifest.graph(variant)
        val ort = g.ortFile?.let { BundleVerifier.inside(root, it) }
        if (ort != null && (preferOrt || !BundleVerifier.inside(root, g.file).isFile)) return ort
        return BundleVerifier.inside(root, g.file)
    }

    companion object {
        /** [requireOnnx] false: the phone's copy, with ORT-format graphs only (see [BundleVerifier.verify]). */
        fun open(root: File, verify: Boolean = true, requireOnnx: Boolean = true): Bundle {
            val manifest = if (verify) BundleVerifier.verify(root, requireOnnx) else Manifest.read(root)
            if (manifest.kind != "classification") {
                throw BundleException("manifest.json: kind is '${manifest.kind}'; this app runs classification bundles.")
            }
            return Bundle(root, manifest)
        }
    }
}
