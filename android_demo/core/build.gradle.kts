// The JVM core: all the app's logic, no Android and no ONNX Runtime dependency (tested on any JVM).
plugins {
    alias(libs.plugins.kotlin.jvm)
}

kotlin {
    jvmToolchain(17)
}

dependencies {
    testImplementation(libs.junit)
    testImplementation(libs.kotlin.test.junit)
}

tasks.test {
    systemProperty("golden.dir", file("src/test/resources/golden").absolutePath)
    testLogging { events("failed"); showStandardStreams = true }
}
