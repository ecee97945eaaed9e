package com.edgeeigenlora.core.train

/**
 * How a task is fine-tuned on the phone; defaults follow the device runtime's DeviceTrainConfig (lr 5e-3,
 * AdamW, the workstation's init). A loss that turns NaN or exceeds [explodeFactor] x the median of recent
 * losses rolls back to the last good weights and multiplies the learning rate by [lrBackoff].
 */
data class FineTuneConfig(
    val epochs: Int = 10,
    val batchSize: Int = 8,
    val lr: Double = 5e-3,
    val headLr: Double? = null,
    val weightDecay: Double = 0.0,
    val seed: Long = 0,
    val explodeFactor: Double = 8.0,
    val lrBackoff: Double = 0.5,
    val maxRollbacks: Int = 5,
) {
    init {
        require(epochs >= 1 && batchSize >= 1) { "epochs and batchSize must be >= 1" }
        require(lr > 0 && (headLr == null || headLr > 0)) { "learning rates must be > 0" }
    }
}
