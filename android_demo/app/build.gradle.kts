// The Android app: thin wiring (UI + ONNX Runtime engine) around :core.
plugins {
    alias(libs.plugins.android.application)
    alias(libs.plugins.kotlin.android)
}

android {
    namespace = "com.edgeeigenlora.demo"
    compileSdk = 35

    defaultConfig {
        applicationId = "com.edgeeigenlora.demo"
        minSdk = 24
        targetSdk = 35
        versionCode = 1
        versionName = "0.1.0"
        ndk { abiFilters += listOf("arm64-v8a", "x86_64") }
    }

    buildTypes {
        release {
            isMinifyEnabled = false
            signingConfig = signingConfigs.getByName("debug") // demo app: sign with the debug key
        }
    }

    compileOptions {
        sourceCompatibility = JavaVersion.VERSION_17
        targetCompatibility = JavaVersion.VERSION_17
    }

    // The bundle's graphs are large and already compressed poorly: store them uncompressed in the APK.
    androidResources { noCompress += listOf("ort", "onnx", "safetensors", "txt", "json") }
}

kotlin { jvmToolchain(17) }

dependencies {
    implementation(project(":core"))
    implementation(libs.onnxruntime.android)
}

// Copies an exported bundle into the APK's assets: ./gradlew :app:assembleDebug -PbundleDir=/path/to/bundle
// Only what the phone needs: manifest, ORT-format graphs, tokenizer, tasks (the .onnx twins stay behind; the
// app verifies every file it ships against the manifest's sha256 and accepts an absent .onnx when its .ort is there).
val bundleDir = providers.gradleProperty("bundleDir").orElse(providers.environmentVariable("EDGE_EIGENLORA_BUNDLE"))
val copyBundle by tasks.registering(Sync::class) {
    val src = bundleDir.map { file(it) }
    onlyIf { src.isPresent && src.get().resolve("manifest.json").isFile }
    from(src) {
        include("manifest.json", "*.ort", "*.required_operators.config", "tokenizer/**", "tasks/*.safetensors")
    }
    into(layout.projectDirectory.dir("src/main/assets/bundle"))
}
tasks.named("preBuild") { dependsOn(copyBundle) }
