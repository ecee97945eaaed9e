package com.edgeeigenlora.core

import com.edgeeigenlora.core.bundle.Bundle
import com.edgeeigenlora.core.bundle.BundleException
import com.edgeeigenlora.core.bundle.BundleVerifier
import com.edgeeigenlora.core.bundle.Manifest
import org.junit.Assert.assertEquals
import org.junit.Assert.assertNotNull
import org.junit.Assert.assertTrue
import org.junit.Test
import java.io.File
import java.io.RandomAccessFile
import kotlin.test.assertFailsWith

/** The manifest reader and sha256 verification against the real exported bundle's manifest and files. */
class ManifestTest {
    @Test fun readsTheRealBundlesManifest() {
        val m = Manifest.parse(File(Golden.dir, "manifest_full.json").readText())
        assertEquals("classification", m.kind)
        assertEquals(384, m.hiddenSize)
        assertEquals(3072, m.layout.size)
        assertEquals(8, m.layout.rank)
        assertEquals(12, m.layout.modules.size)
        assertEquals("encoder.layer.0.attention.self.query", m.layout.modules.first())
        assertEquals(128, m.tokenizer.maxLength)
        val shared = m.graph("shared")
        assertEquals(listOf("input_ids", "attention_mask", "coefficients", "head_weight", "head_bias"), shared.inputNames)
        assertEquals(listOf("logits"), shared.outputNames)
        assertEquals("model_shared.ort", shared.ortFile)
        val train = m.graph("train_step")
        assertTrue(train.inputNames.containsAll(listOf("labels", "coefficients", "head_weight", "head_bias")))
        assertTrue(train.outputNames.containsAll(listOf("loss", "grad_coefficients", "grad_head_weight", "grad_head_bias")))
        assertEquals(listOf("negative", "positive"), m.tasks.getValue("sentiment").labels)
        assertEquals(4, m.tasks.getValue("topic").numLabels)
        for (rel in m.referencedFiles()) assertNotNull(rel, m.files[rel])
        assertEquals(64, m.files.getValue("model_shared.ort").length)
    }

    @Test fun verifiesTheGoldenBundle() {
        val m = BundleVerifier.verify(Golden.bundle)
        val full = Manifest.parse(File(Golden.dir, "manifest_full.json").readText())
        assertEquals(full.basisFingerprint, m.basisFingerprint)
        // The copied files are byte-identical to the real bundle's: the same sha256 in both manifests.
        for ((rel, digest) in m.files) assertEquals(rel, full.files[rel], digest)
    }

    @Test fun aFlippedByteInATaskIsRefused() = assertFlipRefused("tasks/sentiment.safetensors", 200)

    @Test fun aFlippedByteInTheVocabularyIsRefused() = assertFlipRefused("tokenizer/vocab.txt", 1000)

    @Test fun aFlippedLastByteIsRefused() = assertFlipRefused("tasks/topic.safetensors", -1)

    @Test fun aMissingFileIsRefused() {
        val root = Golden.bundleCopy()
        File(root, "tokenizer/special_tokens_map.json").delete()
        val e = assertFailsWith<BundleException> { BundleVerifier.verify(root) }
        assertTrue(e.message!!, e.message!!.contains("tokenizer/special_tokens_map.json") && e.message!!.contains("missing"))
    }

    @Test fun anUnknownFormatVersionIsRefused() {
        val root = Golden.bundleCopy()
        val f = File(root, "manifest.json")
        f.writeText(f.readText().replace(Regex("\"format_version\": \\d+"), "\"format_version\": 99"))
        val e = assertFailsWith<BundleException> { Bundle.open(root) }
        assertTrue(e.message!!, e.message!!.contains("format_version 99 is not supported"))
    }

    @Test fun aPathLeavingTheBundleIsRefused() {
        val root = Golden.bundleCopy()
        val f = File(root, "manifest.json")
        f.writeText(f.readText().replace("\"tokenizer/vocab.txt\": \"", "\"../vocab.txt\": \""))
        val e = assertFailsWith<BundleException> { BundleVerifier.verify(root) }
        assertTrue(e.message!!, e.message!!.contains("leaves the bundle folder"))
    }

    @Test fun aBrokenManifestIsRefused() {
        val root = Golden.bundleCopy()
        File(root, "manifest.json").writeText("{\"format\": \"edge-eigenlora-bundle\", ")
        val e = assertFailsWith<BundleException> { BundleVerifier.verify(root) }
        assertTrue(e.message!!, e.message!!.contains("not valid JSON"))
    }

    @Test fun inconsistentCoefficientSegmentsAreRefused() {
        val text = File(Golden.dir, "manifest_full.json").readText().replaceFirst("\"offset\": 128", "\"offset\": 129")
        val e = assertFailsWith<BundleException> { Manifest.parse(text) }
        assertTrue(e.message!!, e.message!!.contains("'coefficients' is inconsistent"))
    }

    private fun assertFlipRefused(rel: String, position: Long) {
        val root = Golden.bundleCopy()
        RandomAccessFile(File(root, rel), "rw").use { f ->
            val at = if (position < 0) f.length() - 1 else position
            f.seek(at)
            val b = f.read()
            f.seek(at)
            f.write(b xor 0x01)
        }
        val e = assertFailsWith<BundleException> { Bundle.open(root) }
        assertTrue(e.message!!, e.message!!.contains("$rel: sha256 mismatch"))
    }
}

/** The phone ships only ORT-format graphs: an absent .onnx is accepted when its .ort twin is present and intact. */
class MobileBundleTest {
    private fun withGraph(): java.io.File {
        val root = Golden.bundleCopy()
        val ort = java.io.File(root, "model_shared.ort").apply { writeBytes(ByteArray(64) { it.toByte() }) }
        val f = java.io.File(root, "manifest.json")
        val sha = com.edgeeigenlora.core.io.Sha256.of(ort)
        f.writeText(
            f.readText()
                .replace("\"graphs\": []", "\"graphs\": [{\"variant\": \"shared\", \"file\": \"model_shared.onnx\", \"ort_file\": \"model_shared.ort\"}]")
                .replace("\"files\": {", "\"files\": {\"model_shared.onnx\": \"${"0".repeat(64)}\", \"model_shared.ort\": \"$sha\", ")
        )
        return root
    }

    @Test fun ortOnlyCopyVerifiesOnlyInMobileMode() {
        val root = withGraph()
        val e = assertFailsWith<BundleException> { Bundle.open(root) }
        assertTrue(e.message!!, e.message!!.contains("model_shared.onnx listed in manifest.json is missing"))
        val bundle = Bundle.open(root, requireOnnx = false)
        assertEquals("model_shared.ort", bundle.graphFile("shared", preferOrt = false).name)
    }

    @Test fun aDamagedOrtFileIsStillRefused() {
        val root = withGraph()
        java.io.File(root, "model_shared.ort").appendBytes(byteArrayOf(1))
        val e = assertFailsWith<BundleException> { Bundle.open(root, requireOnnx = false) }
        assertTrue(e.message!!, e.message!!.contains("model_shared.ort: sha256 mismatch"))
    }
}
