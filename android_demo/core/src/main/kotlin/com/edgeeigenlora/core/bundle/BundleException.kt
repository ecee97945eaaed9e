package com.edgeeigenlora.core.bundle

/** A bundle, task or file the device must refuse; the message says what is wrong and what to do. */
class BundleException(message: String, cause: Throwable? = null) : RuntimeException(message, cause)
