package com.edgeeigenlora.demo

import android.content.Context
import com.edgeeigenlora.core.bundle.Bundle
import java.io.File

/**
 * Copies the bundle shipped in the APK's assets (assets/bundle/) to app storage once per app version, because
 * ONNX Runtime maps graph files from a path, then opens it with every file checked against the manifest's
 * sha256 (a damaged copy is refused and re-copied on the next start).
 */
object BundleInstaller {
    private const val ASSET_ROOT = "bundle"

    fun install(context: Context, progress: (String) -> Unit): Bundle {
        val target = File(context.filesDir, ASSET_ROOT)
        val stamp = File(target, ".installed")
        val version = context.packageManager.getPackageInfo(context.packageName, 0).lastUpdateTime.toString()
        if (context.assets.list(ASSET_ROOT).isNullOrEmpty()) {
            throw IllegalStateException("this APK ships no bundle: build it with ./gradlew :app:assembleDebug -PbundleDir=/path/to/bundle")
        }
        if (!stamp.isFile || stamp.readText() != version) {
            target.deleteRecursively()
            copyAssets(context, ASSET_ROOT, target, progress)
            stamp.writeText(version)
        }
        return try {
            Bundle.open(target, verify = true, requireOnnx = false)
        } catch (e: Exception) {
            stamp.delete()
            throw e
        }
    }

    private fun copyAssets(context: Context, path: String, dest: File, progress: (String) -> Unit) {
        val children = context.assets.list(path).orEmpty()
        if (children.isEmpty()) {
            progress("copying $path")
            dest.parentFile?.mkdirs()
            context.assets.open(path).use { input -> dest.outputStream().use { input.copyTo(it, 1 shl 16) } }
            return
        }
        dest.mkdirs()
        for (child in children) copyAssets(context, "$path/$child", File(dest, child), progress)
    }
}
