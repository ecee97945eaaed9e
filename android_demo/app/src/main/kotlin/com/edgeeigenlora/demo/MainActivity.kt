package com.edgeeigenlora.demo

import android.app.Activity
import android.content.Intent
import android.net.Uri
import android.os.Bundle as AndroidBundle
import android.os.Handler
import android.os.Looper
import android.provider.OpenableColumns
import android.view.View
import android.widget.AdapterView
import android.widget.ArrayAdapter
import android.widget.Button
import android.widget.EditText
import android.widget.LinearLayout
import android.widget.ScrollView
import android.widget.Spinner
import android.widget.TextView
import com.edgeeigenlora.core.bundle.Bundle
import com.edgeeigenlora.core.bundle.BundleVerifier
import com.edgeeigenlora.core.engine.TaskRunner
import com.edgeeigenlora.core.metrics.MemoryProbe
import com.edgeeigenlora.core.task.TaskStore
import com.edgeeigenlora.core.train.FineTuneConfig
import com.edgeeigenlora.core.train.FineTuner
import com.edgeeigenlora.core.train.LabelledExamples
import java.io.File
import java.util.concurrent.Executors
import java.util.concurrent.atomic.AtomicBoolean

/**
 * One screen: pick a task, classify text, fine-tune a new task from typed or loaded examples. All logic is in
 * :core; this class only wires views to it and keeps ONNX Runtime work off the UI thread.
 */
class MainActivity : Activity() {
    private val worker = Executors.newSingleThreadExecutor()
    private val ui = Handler(Looper.getMainLooper())
    private val stop = AtomicBoolean(false)
    private var bundle: Bundle? = null
    private var engine: OrtEngine? = null
    private var runner: TaskRunner? = null

    private lateinit var status: TextView
    private lateinit var tasks: Spinner
    private lateinit var input: EditText
    private lateinit var result: TextView
    private lateinit var stats: TextView
    private lateinit var taskName: EditText
    private lateinit var examples: EditText
    private lateinit var progress: TextView

    override fun onCreate(savedInstanceState: AndroidBundle?) {
        super.onCreate(savedInstanceState)
        setContentView(buildViews())
        background {
            val b = BundleInstaller.install(this) { msg -> post { status.text = msg } }
            val e = OrtEngine(b, threads = 0)
            val r = TaskRunner(b, e, TaskStore(File(filesDir, "tasks")))
            bundle = b; engine = e; runner = r
            post {
                status.text = "${b.manifest.baseModelName}: ${b.layout.size} coefficients per task, ${r.names.size} tasks\n${MemoryProbe.snapshot()}"
                refreshTasks()
            }
        }
    }

    override fun onDestroy() {
        stop.set(true)
        worker.execute { engine?.close() }
        worker.shutdown()
        super.onDestroy()
    }

    private fun classify() {
        val r = runner ?: return
        val text = input.text.toString().ifBlank { return }
        background {
            val p = r.classify(listOf(text)).single()
            val probs = p.probabilities.indices.joinToString("  ") { "${r.current.label(it)} %.2f".format(p.probabilities[it]) }
            post {
                result.text = "${p.label}\n$probs"
                stats.text = "latency: ${r.latency}\nmemory: ${MemoryProbe.snapshot()}"
            }
        }
    }

    private fun select(name: String) {
        val r = runner ?: return
        val start = System.nanoTime()
        r.select(name) // a lookup: no session, no file
        val us = (System.nanoTime() - start) / 1e3
        stats.text = "switched to '$name' in %.1f µs\nlatency: ${r.latency}".format(us)
    }

    private fun fineTune() {
        val b = bundle ?: return
        val e = engine ?: return
        val r = runner ?: return
        val name = taskName.text.toString().trim()
        background {
            BundleVerifier.checkTaskName(name)
            require(!r.isBundled(name)) { "'$name' is a task of the bundle; pick another name" }
            val data = LabelledExamples.parseTyped(examples.text.toString())
            stop.set(false)
            val task = FineTuner(e, b).train(name, data, FineTuneConfig(epochs = 10, batchSize = 8), onStep = { s ->
                post { progress.text = "step ${s.step} (epoch ${s.epoch}): loss %.4f, %.0f ms%s\n${MemoryProbe.snapshot()}".format(s.loss, s.millis, if (s.rolledBack) ", rolled back" else "") }
            }, cancelled = { stop.get() })
            r.add(task) // atomic write to files/tasks/<name>.safetensors
            e.releaseTraining()
            post {
                progress.text = "${progress.text}\nsaved '${task.name}' (${task.labels.joinToString()})"
                refreshTasks(select = task.name)
            }
        }
    }

    private fun loadFile(uri: Uri) = background {
        val display = contentResolver.query(uri, arrayOf(OpenableColumns.DISPLAY_NAME), null, null, null)?.use { c ->
            if (c.moveToFirst()) c.getString(0) else null
        } ?: "examples.csv"
        val copy = File(cacheDir, "import-" + display.substringAfterLast('/'))
        contentResolver.openInputStream(uri)!!.use { input -> copy.outputStream().use { input.copyTo(it) } }
        val data = LabelledExamples.read(copy)
        val typed = data.texts.indices.joinToString("\n") { "${data.labelNames[data.labels[it]]}: ${data.texts[it].replace('\n', ' ')}" }
        post { examples.setText(typed); progress.text = "loaded ${data.size} examples, labels ${data.labelNames}" }
    }

    @Deprecated("Activity result API of the platform Activity")
    override fun onActivityResult(requestCode: Int, resultCode: Int, data: Intent?) {
        super.onActivityResult(requestCode, resultCode, data)
        if (requestCode == OPEN_FILE && resultCode == RESULT_OK) data?.data?.let(::loadFile)
    }

    private fun refreshTasks(select: String? = null) {
        val r = runner ?: return
        val names = r.names.map { if (r.isBundled(it)) it else "$it (phone)" }
        tasks.adapter = ArrayAdapter(this, android.R.layout.simple_spinner_dropdown_item, names)
        select?.let { tasks.setSelection(r.names.indexOf(it)) }
    }

    private fun background(block: () -> Unit) = worker.execute {
        try {
            block()
        } catch (e: Exception) {
            post { status.text = "error: ${e.message}" }
        }
    }

    private fun post(block: () -> Unit) { ui.post(block) }

    private fun buildViews(): View {
        val column = LinearLayout(this).apply { orientation = LinearLayout.VERTICAL; setPadding(32, 32, 32, 32) }
        fun label(text: String) = TextView(this).apply { this.text = text; textSize = 16f }.also(column::addView)
        fun button(text: String, onClick: () -> Unit) = Button(this).apply { this.text = text; setOnClickListener { onClick() } }.also(column::addView)
        status = label("opening the bundle…")
        tasks = Spinner(this).also(column::addView)
        tasks.onItemSelectedListener = object : AdapterView.OnItemSelectedListener {
            override fun onItemSelected(parent: AdapterView<*>?, view: View?, position: Int, id: Long) {
                runner?.names?.getOrNull(position)?.let(::select)
            }
            override fun onNothingSelected(parent: AdapterView<*>?) = Unit
        }
        input = EditText(this).apply { hint = "Text to classify" }.also(column::addView)
        button("Classify") { classify() }
        result = label("")
        stats = label("")
        label("\nNew task: one example per line, 'label: text'")
        taskName = EditText(this).apply { hint = "task name (letters, digits, _ . -)" }.also(column::addView)
        examples = EditText(this).apply { hint = "positive: I loved it\nnegative: a waste of time"; minLines = 4 }.also(column::addView)
        button("Load examples from a file (.csv, .tsv, .jsonl)") {
            startActivityForResult(Intent(Intent.ACTION_OPEN_DOCUMENT).setType("*/*").addCategory(Intent.CATEGORY_OPENABLE), OPEN_FILE)
        }
        button("Fine-tune on the phone") { fineTune() }
        button("Stop training") { stop.set(true) }
        progress = label("")
        return ScrollView(this).apply { addView(column) }
    }

    private companion object {
        const val OPEN_FILE = 1
    }
}
