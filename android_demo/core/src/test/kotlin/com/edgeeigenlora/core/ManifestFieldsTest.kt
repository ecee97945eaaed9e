package com.edgeeigenlora.core

import com.edgeeigenlora.core.bundle.Manifest
import org.junit.Assert.assertEquals
import org.junit.Test
import java.io.File

/**
 * The Kotlin mirror of bundle.py's reader: both parse the same manifests (format 1 and format 2, each with a
 * train-step entry) into the same fields. manifest_fields.json holds what Python's reader gives
 * (tests/test_contract.py checks the Python side against the same file).
 */
class ManifestFieldsTest {
    private fun fields(m: Manifest): Map<String, Any?> = mapOf(
        "kind" to m.kind,
        "hidden_size" to m.hiddenSize.toLong(),
        "base_model" to m.baseModelName,
        "basis_fingerprint" to m.basisFingerprint,
        "coefficients" to mapOf(
            "size" to m.layout.size.toLong(), "rank" to m.layout.rank.toLong(), "modules" to m.layout.modules,
        ),
        "graphs" to m.graphs.map { g ->
            mapOf(
                "variant" to g.variant, "file" to g.file, "ort_file" to g.ortFile,
                "required_operators" to g.requiredOperators, "external_data" to g.externalData,
                "inputs" to g.inputNames, "outputs" to g.outputNames,
                "quantization" to g.quantization?.let { listOf(it.basis, it.base, it.precision, it.blockSize?.toLong()) },
                "loss" to g.loss, "max_seq" to g.maxSeq?.toLong(),
            )
        },
        "tokenizer" to mapOf(
            "files" to m.tokenizer.files, "max_length" to m.tokenizer.maxLength.toLong(),
            "pad_token_id" to m.tokenizer.padTokenId.toLong(),
        ),
        "tasks" to m.tasks.toSortedMap().mapValues { (_, t) ->
            mapOf("file" to t.file, "kind" to t.kind, "labels" to t.labels, "num_labels" to t.numLabels?.toLong())
        },
        "referenced_files" to m.referencedFiles(),
    )

    private fun check(name: String) {
        val expected = Golden.json("manifest_fields.json")[name]
        val actual = fields(Manifest.parse(File(Golden.dir, name).readText(), name))
        assertEquals(name, expected, actual)
    }

    @Test fun formatOneWithATrainStepParsesIntoPythonsFields() = check("manifest_format1.json")

    @Test fun formatTwoWithSharedWeightsParsesIntoPythonsFields() = check("manifest_v2.json")
}
