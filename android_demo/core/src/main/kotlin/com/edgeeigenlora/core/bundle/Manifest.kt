package com.edgeeigenlora.core.bundle

import com.edgeeigenlora.core.json.Json
import com.edgeeigenlora.core.json.JsonException
import com.edgeeigenlora.core.json.child
import com.edgeeigenlora.core.json.list
import com.edgeeigenlora.core.json.long
import com.edgeeigenlora.core.json.obj
import com.edgeeigenlora.core.json.string
import java.io.File

data class TensorSpec(val name: String, val dtype: String, val shape: List<Any?>)

data class Quantization(val basis: String, val base: String, val precision: String, val blockSize: Int?)

/** One graph of the bundle: the same schema for every variant, the train step included (bundle.py's GraphEntry). */
data class GraphEntry(
    val variant: String,
    val file: String,
    val ortFile: String?,
    val inputs: List<TensorSpec>,
    val outputs: List<TensorSpec>,
    val requiredOperators: String? = null,
    val externalData: List<String> = emptyList(),
    val quantization: Quantization? = null,
    val loss: String? = null,
    val maxSeq: Int? = null,
) {
    val inputNames: List<String> get() = inputs.map { it.name }
    val outputNames: List<String> get() = outputs.map { it.name }
    /** Every bundle file this graph needs. */
    val files: List<String> get() = listOf(file) + externalData + listOfNotNull(ortFile, requiredOperators)
}

data class TokenizerSettings(val files: List<String>, val maxLength: Int, val padTokenId: Int)

data class TaskEntry(val file: String, val kind: String, val labels: List<String>, val numLabels: Int?)

/**
 * manifest.json of a bundle (format `edge-eigenlora-bundle`, versions 1 and 2): typed views of what the device
 * needs. Version 2 stores every graph's weights once in a shared external-data file (`external_data`).
 */
class Manifest(val data: Map<String, Any?>) {
    val kind: String = data.string("kind")
    val hiddenSize: Int = data.child("base_model").long("hidden_size").toInt()
    val baseModelName: String = data.child("base_model")["name"] as? String ?: "?"
    val basisFingerprint: String = data.child("basis").string("fingerprint")
    val layout: CoefficientLayout = parseLayout(data.child("coefficients"))
    val graphs: List<GraphEntry> = data.list("graphs").map { parseGraph(it.obj("graphs[]")) }
    val tokenizer: TokenizerSettings = (data["tokenizer"] as? Map<*, *>).let { t ->
        TokenizerSettings(
            files = (t?.get("files") as? List<*>)?.map { it.toString() } ?: emptyList(),
            maxLength = (t?.get("max_length") as? Number)?.toInt() ?: 128,
            padTokenId = (t?.get("pad_token_id") as? Number)?.toInt() ?: 0,
        )
    }
    val tasks: Map<String, TaskEntry> = (data["tasks"] as? Map<*, *>)?.entries?.associate { (k, v) ->
        val t = v.obj("tasks.$k")
        k.toString() to TaskEntry(
            t.string("file"), t["kind"] as? String ?: "classification",
            (t["labels"] as? List<*>)?.map { it.toString() } ?: emptyList(), (t["num_labels"] as? Number)?.toInt(),
        )
    } ?: emptyMap()
    val files: Map<String, String> = data.child("files").mapValues { (k, v) ->
        v as? String ?: throw JsonException("field 'files.$k' is not a sha256 string")
    }

    fun graph(variant: String): GraphEntry = graphs.firstOrNull { it.variant == variant }
        ?: throw BundleException(
            "manifest.json: this bundle has no '$variant' graph (it has ${graphs.map { it.variant }}); re-export with that variant."
        )

    fun hasGraph(variant: String): Boolean = graphs.any { it.variant == variant }

    /** Every file the manifest points at (graphs, their weights, ORT files, tokenizer files, tasks), each once. */
    fun referencedFiles(): List<String> =
        (graphs.flatMap { it.files } + tokenizer.files + tasks.values.map { it.file }).distinct()

    companion object {
        const val FORMAT = "edge-eigenlora-bundle"
        const val FORMAT_VERSION = 2L
        val READABLE_VERSIONS = setOf(1L, 2L)
        const val FILE = "manifest.json"

        fun read(root: File): Manifest {
            val file = File(root, FILE)
            if (!file.isFile) throw BundleException("$file does not exist: $root is not a bundle (export one with `edge-eigenlora export`).")
            return parse(file.readText(Charsets.UTF_8), file.path)
        }

        fun parse(text: String, where: String = FILE): Manifest {
            val data = try {
                Json.parse(text).obj("(root)")
            } catch (e: JsonException) {
                throw BundleException("$where is not valid JSON (${e.message}); re-copy or re-export the bundle.", e)
            }
            if (data["format"] != FORMAT) throw BundleException("$where: field 'format' is not '$FORMAT'; this is not an edge-eigenlora bundle.")
            val version = (data["format_version"] as? Number)?.toLong()
            if (version !in READABLE_VERSIONS) {
                throw BundleException(
                    "$where: format_version $version is not supported (this app reads versions ${READABLE_VERSIONS.sorted()}); update the app or re-export the bundle."
                )
            }
            for (key in listOf("kind", "base_model", "basis", "coefficients", "graphs", "files")) {
                if (key !in data) throw BundleException("$where: field '$key' is missing; re-export the bundle.")
            }
            return try {
                Manifest(data)
            } catch (e: JsonException) {
                throw BundleException("$where: ${e.message}; re-export the bundle.", e)
            }
        }

        private fun parseLayout(c: Map<String, Any?>): CoefficientLayout {
            if ((c["dtype"] ?: "float32") != "float32") throw BundleException("manifest.json: coefficients.dtype must be float32")
            val segments = c.list("segments").map { s ->
                val m = s.obj("coefficients.segments[]")
                val shape = m.list("shape").map { (it as Number).toInt() }
                Segment(m.string("name"), m.long("offset").toInt(), shape[0], shape[1])
            }
            return CoefficientLayout.fromManifest(c.long("size").toInt(), c.long("rank").toInt(), segments)
        }

        private fun parseGraph(g: Map<String, Any?>): GraphEntry {
            fun specs(key: String) = (g[key] as? List<*> ?: emptyList<Any?>()).map { s ->
                val m = s.obj("$key[]")
                TensorSpec(m.string("name"), m["dtype"] as? String ?: "?", m["shape"] as? List<Any?> ?: emptyList())
            }
            val q = g["quantization"] as? Map<*, *>
            return GraphEntry(
                variant = g.string("variant"),
                file = g.string("file"),
                ortFile = g["ort_file"] as? String,
                inputs = specs("inputs"),
                outputs = specs("outputs"),
                requiredOperators = g["required_operators"] as? String,
                externalData = (g["external_data"] as? List<*>)?.map { it.toString() } ?: emptyList(),
                quantization = q?.let {
                    Quantization(
                        it["basis"] as? String ?: "none", it["base"] as? String ?: "none",
                        it["precision"] as? String ?: "fp32", (it["block_size"] as? Number)?.toInt(),
                    )
                },
                loss = g["loss"] as? String,
                maxSeq = (g["max_seq"] as? Number)?.toInt(),
            )
        }
    }
}
