package com.edgeeigenlora.core

import com.edgeeigenlora.core.bundle.Bundle
import com.edgeeigenlora.core.engine.Engine
import com.edgeeigenlora.core.engine.TaskRunner
import com.edgeeigenlora.core.engine.TrainStepResult
import com.edgeeigenlora.core.task.Head
import com.edgeeigenlora.core.task.TaskStore
import com.edgeeigenlora.core.text.TokenBatch
import com.edgeeigenlora.core.train.FineTuneConfig
import com.edgeeigenlora.core.train.FineTuner
import com.edgeeigenlora.core.train.LabelledExamples
import com.edgeeigenlora.core.train.StepReport
import org.junit.Assert.assertEquals
import org.junit.Assert.assertSame
import org.junit.Assert.assertTrue
import org.junit.Test
import kotlin.test.assertFailsWith

/** Fine-tune -> save atomically -> reload -> classify, with the task picker, on the real bundle's tokenizer/layout. */
class FineTunerTest {
    private val bundle = Bundle.open(Golden.bundle)
    private val examples = LabelledExamples.parseTyped(
        """
        good: what a wonderful film
        good: I loved every minute of it
        good: a delight from start to finish
        bad: dull and far too long
        bad: a waste of time
        bad: I hated the ending
        """.trimIndent()
    )

    @Test fun lossFallsAndTheSavedTaskClassifiesItsExamples() {
        val engine = FakeEngine(bundle.hidden)
        val reports = ArrayList<StepReport>()
        val task = FineTuner(engine, bundle).train("reviews", examples, FineTuneConfig(epochs = 40, batchSize = 4, lr = 5e-2), { reports.add(it) })
        assertEquals(80, reports.size)
        assertTrue("loss ${reports.first().loss} -> ${reports.last().loss}", reports.takeLast(4).map { it.loss }.average() < 0.5 * reports.first().loss)
        // alpha_B segments start at zero but move: the coefficients were trained
        assertTrue(bundle.layout.segments.any { s -> s.name.endsWith("alpha_B") && (0 until s.size).any { task.coefficients[s.offset + it] != 0f } })

        val storeDir = Golden.tempDir("tasks")
        val runner = TaskRunner(bundle, engine, TaskStore(storeDir))
        runner.add(task)
        val reopened = TaskRunner(bundle, engine, TaskStore(storeDir)) // as after an app restart
        assertEquals(listOf("sentiment", "topic", "reviews"), reopened.names)
        assertTrue(reopened.select("reviews").coefficients.contentEquals(task.coefficients))
        assertEquals(examples.labelNames, reopened.current.labels)
        runner.select("reviews")
        val predicted = runner.classify(examples.texts).map { it.label }
        assertEquals(examples.labels.map { examples.labelNames[it] }, predicted)
    }

    @Test fun switchingTasksReloadsNothing() {
        val engine = FakeEngine(bundle.hidden)
        val runner = TaskRunner(bundle, engine)
        assertEquals(listOf("sentiment", "topic"), runner.names)
        runner.select("topic")
        assertEquals(4, runner.classify(listOf("a match report")).single().probabilities.size)
        assertSame(runner.current.coefficients, engine.lastCoefficients)
        runner.select("sentiment")
        runner.classify(listOf("a review"))
        assertSame(runner.current.coefficients, engine.lastCoefficients) // the cached array itself: no copy, no file read
        assertEquals(2, engine.classifyCalls)
        assertEquals(2, runner.latency.count)
    }

    @Test fun aNanStepRestoresTheWeightsBeforeTheLastUpdate() {
        val fake = FakeEngine(bundle.hidden)
        val seen = ArrayList<FloatArray>()
        val flaky = object : Engine by fake {
            override fun trainStep(batch: TokenBatch, labels: IntArray, coefficients: FloatArray, head: Head): TrainStepResult {
                seen.add(coefficients.copyOf())
                val r = fake.trainStep(batch, labels, coefficients, head)
                return if (seen.size == 3) TrainStepResult(Float.NaN, r.gradCoefficients, r.gradHeadWeight, r.gradHeadBias) else r
            }
        }
        val reports = ArrayList<StepReport>()
        val task = FineTuner(flaky, bundle).train("flaky", examples, FineTuneConfig(epochs = 3, batchSize = 4, lr = 5e-2), { reports.add(it) })
        assertEquals(listOf(false, false, true, false), reports.take(4).map { it.rolledBack })
        assertTrue(seen[3].contentEquals(seen[1])) // back to the weights before the update that led to NaN
        assertEquals(0.5, reports.last().lrScale, 0.0)
        assertEquals(1, task.info["rollbacks"])
    }

    @Test fun divergingTrainingRollsBackThenGivesUp() {
        val nan = object : Engine by FakeEngine(bundle.hidden) {
            override fun trainStep(batch: TokenBatch, labels: IntArray, coefficients: FloatArray, head: Head) =
                TrainStepResult(Float.NaN, FloatArray(coefficients.size), FloatArray(head.weight.size), FloatArray(head.numLabels))
        }
        val scales = ArrayList<Double>()
        val e = assertFailsWith<IllegalStateException> {
            FineTuner(nan, bundle).train("x", examples, FineTuneConfig(maxRollbacks = 3), { scales.add(it.lrScale) })
        }
        assertTrue(e.message!!, e.message!!.contains("lower the learning rate"))
        assertEquals(listOf(0.5, 0.25, 0.125), scales)
    }
}
