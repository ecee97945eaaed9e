"""Text generation on the device with a decoder-LM bundle: onnxruntime + numpy + tokenizers, never torch.

One step graph serves prefill and decode. Each layer's present key/value stays an onnxruntime value bound
as the next step's past (IO binding), so the cache never travels through numpy; the graph's Concat appends
the new position, a copy of the cache that costs what attention's read of it costs. A task is a coefficient
input: the shared graph runs one task for the batch, the per-row graph one task per row, and switching task
between requests feeds another vector to the same session. A bundle with the factored graph runs a
one-task batch there: the task's factors are formed once per switch and bound once per generation, so a
decode step costs what unmerged LoRA costs (benchmarks/results/lm/report.md).
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from edge_eigenlora import bundle as contract
from edge_eigenlora.errors import EdgeEigenLoraError
from edge_eigenlora.runtime.chat_template import ChatTemplate
from edge_eigenlora.runtime.sampling import GenerationConfig, next_tokens
from edge_eigenlora.runtime.session import BundleRuntime, LoadedTask
from edge_eigenlora.task import Task

__all__ = ["Generation", "GenerationConfig", "LMRuntime", "TokenEvent"]

TaskRef = str | Task | LoadedTask


@dataclass(frozen=True)
class TokenEvent:
    """One generated token of one row: its id, the text it adds (may be empty while a character is
    incomplete), and, on the row's last event, why it stopped ("eos", "stop" or "length")."""

    row: int
    token_id: int
    text: str
    finish_reason: str | None = None


@dataclass
class Generation:
    """One row's result and what it cost (prefill of the whole batch, decode per generated token)."""

    prompt: str
    text: str
    token_ids: list[int]
    prompt_tokens: int
    finish_reason: str
    task: str | None
    prefill_ms: float = 0.0
    decode_ms_per_token: float = 0.0
    timings_ms: list[float] = field(default_factory=list)


class _Row:
    """A row's generation state: its tokens, the text streamed so far, and whether it is done."""

    def __init__(self, prompt_ids: list[int]) -> None:
        self.prompt_ids = prompt_ids
        self.ids: list[int] = []
        self.text = ""
        self.finish: str | None = None


class LMRuntime(BundleRuntime):
    """A causal-LM bundle on the device: `generate` / `stream` with one task, a task per row, or none (merged).

    `train_step` runs the causal-LM train-step graph (loss + coefficient gradients), `completion_loss` the
    held-out loss of (prompt, completion) pairs.
    """

    KIND = "causal_lm"
    USE = "LMRuntime (generate, stream)"

    def __init__(self, bundle: Any, *, bind_cache: bool = True, **kwargs: Any) -> None:
        """bind_cache False passes the cache through numpy between steps (the control that shows what
        keeping it in onnxruntime saves; benchmarks/lm.py)."""
        super().__init__(bundle, **kwargs)
        self.bind_cache = bind_cache
        if self.manifest.decoder is None:
            raise EdgeEigenLoraError(
                f"{self.manifest.path}: field 'decoder' is missing: the bundle's graphs have no KV cache (exported "
                "by an older edge-eigenlora); re-export it to generate."
            )
        self.decoder = self.manifest.decoder
        self._chat: ChatTemplate | None = None

    # -- prompts ---------------------------------------------------------------------------------------
    @property
    def chat_template(self) -> ChatTemplate | None:
        if self._chat is None and self.decoder.chat_template:
            path = contract.inside_bundle(self.root, self.decoder.chat_template, str(self.manifest.path))
            self._chat = ChatTemplate.from_file(path)
        return self._chat

    def format_prompt(self, prompt: str, chat: bool | None = None) -> tuple[str, bool]:
        """(text, add_special_tokens): the chat template's text when used (it carries its own specials)."""
        use_chat = self.chat_template is not None if chat is None else chat
        if use_chat and self.chat_template is None:
            raise EdgeEigenLoraError(
                f"{self.manifest.path}: the bundle has no chat template (decoder.chat_template); pass chat=False."
            )
        if use_chat:
            return self.chat_template.render(prompt), False  # type: ignore[union-attr]
        return prompt, True

    def encode_prompt(self, prompt: str, chat: bool | None = None) -> list[int]:
        if not isinstance(prompt, str):
            raise EdgeEigenLoraError(f"a prompt must be a string, got {type(prompt).__name__}.")
        text, specials = self.format_prompt(prompt, chat)
        return self.tokenizer.encode_ids(text, specials)

    def decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(ids)

    # -- tasks -----------------------------------------------------------------------------------------
    def _plan(self, n: int, task: TaskRef | None, tasks: Sequence[TaskRef] | None) -> tuple[str, dict, list]:
        """(variant, task feeds, per-row task names) for a batch of n prompts."""
        if task is not None and tasks is not None:
            raise EdgeEigenLoraError(
                "give either task= (one for the batch) or tasks= (one per prompt), not both."
            )
        if tasks is not None:
            if len(tasks) != n:
                raise EdgeEigenLoraError(
                    f"tasks: {len(tasks)} tasks for {n} prompts; give one task per prompt (or task= for all)."
                )
            loaded = [self.task(t) for t in tasks]
            if len({id(t) for t in loaded}) == 1:
                task, tasks = loaded[0], None
            else:
                if not self.manifest.has_graph(contract.PER_ROW):
                    raise EdgeEigenLoraError(
                        f"{self.manifest.path}: a task per row needs the per_row graph, which this bundle lacks; "
                        "re-export with variants shared,per_row, or generate one task at a time."
                    )
                feeds, _ = contract.row_feeds([t.feeds() for t in loaded])
                return contract.PER_ROW, feeds, [t.name for t in loaded]
        if task is None:
            if self.manifest.has_graph(contract.MERGED):
                name = self.manifest.graph(contract.MERGED).task
                return contract.MERGED, {}, [name] * n
            raise EdgeEigenLoraError(
                f"no task given and {self.manifest.root} has no merged graph; pass task= (one of "
                f"{sorted(self.manifest.tasks)}) or tasks= (one per prompt)."
            )
        loaded_task = self.task(task)
        if not self.manifest.has_graph(contract.SHARED) and not self.uses_factored:
            merged = self.manifest.graph(contract.MERGED)
            if merged.task != loaded_task.name:
                raise EdgeEigenLoraError(
                    f"{self.manifest.path}: this bundle has only the merged graph of task {merged.task!r}; "
                    f"task {loaded_task.name!r} needs the shared graph: re-export with it."
                )
            return contract.MERGED, {}, [loaded_task.name] * n
        variant, feeds = self.task_graph(loaded_task)
        return variant, feeds, [loaded_task.name] * n

    # -- one graph call --------------------------------------------------------------------------------
    def _empty_cache(self, batch: int) -> np.ndarray:
        """A past of length 0: what prefill feeds for every layer's key and value."""
        d = self.decoder
        return np.zeros((batch, d.num_kv_heads, 0, d.head_dim), np.float32)

    def _bind_task(self, session: Any, task_feeds: dict[str, np.ndarray]) -> Any:
        """An IO binding with the task's inputs bound once for a whole generation (None: the numpy control).
        The caller passes contiguous arrays and keeps them alive while the binding is used."""
        if not self.bind_cache:
            return None
        binding = session.io_binding()
        for name, value in task_feeds.items():
            binding.bind_cpu_input(name, value)
        return binding

    def _run_step(
        self,
        session: Any,
        binding: Any,
        feeds: dict[str, np.ndarray],
        task_feeds: dict[str, np.ndarray],
        past: list[Any] | None,
        batch: int,
    ) -> tuple[np.ndarray, list[Any]]:
        """(last-position logits [batch, vocab], presents as OrtValues). `past` None: an empty cache.

        binding: `_bind_task`'s (the task inputs already bound; this step's inputs and outputs replace the last
        step's), or None to pass everything through numpy."""
        d = self.decoder
        if binding is None:
            return self._run_step_numpy(session, {**feeds, **task_feeds}, past, batch)
        for name, value in feeds.items():
            binding.bind_cpu_input(name, np.ascontiguousarray(value))
        names_in = contract.cache_input_names(d.num_layers)
        if past is None:
            empty = self._empty_cache(batch)
            for name in names_in:
                binding.bind_cpu_input(name, empty)
        else:
            for name, value in zip(names_in, past, strict=True):
                binding.bind_ortvalue_input(name, value)
        binding.bind_output(contract.LOGITS)
        for name in contract.cache_output_names(d.num_layers):
            binding.bind_output(name)
        session.run_with_iobinding(binding)
        outputs = binding.get_outputs()
        logits = outputs[0].numpy()[:, -1, :]
        return logits, list(outputs[1:])

    def _run_step_numpy(
        self, session: Any, feeds: dict[str, np.ndarray], past: list[Any] | None, batch: int
    ) -> tuple[np.ndarray, list[Any]]:
        d = self.decoder
        names_in = contract.cache_input_names(d.num_layers)
        if past is None:
            past = [self._empty_cache(batch)] * len(names_in)
        outputs = session.run(None, {**feeds, **dict(zip(names_in, past, strict=True))})
        return outputs[0][:, -1, :], list(outputs[1:])

    # -- generation ------------------------------------------------------------------------------------
    def stream(
        self,
        prompts: str | Sequence[str],
        *,
        task: TaskRef | None = None,
        tasks: Sequence[TaskRef] | None = None,
        config: GenerationConfig | None = None,
        stats: dict[str, Any] | None = None,
        **settings: Any,
    ) -> Iterator[TokenEvent]:
        """Yield each row's tokens as they are generated (batched prompts, left padding, one KV cache).

        settings override `config` fields (max_new_tokens, do_sample, temperature, top_k, top_p,
        repetition_penalty, seed, stop, eos, chat). `stats`, when given, receives prefill_ms, step_ms and
        prompt lengths, and with stats["record_logits"] = True each step's last-position logits ("step_logits").
        """
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        if not prompts:
            raise EdgeEigenLoraError("no prompts given: pass at least one prompt.")
        config = (
            replace(config or GenerationConfig(), **settings) if settings else config or GenerationConfig()
        )
        variant, task_feeds, _ = self._plan(len(prompts), task, tasks)
        rows = [_Row(self.encode_prompt(p, config.chat)) for p in prompts]
        longest = max(len(r.prompt_ids) for r in rows)
        limit = self.decoder.max_positions
        for i, r in enumerate(rows):
            if not r.prompt_ids:
                raise EdgeEigenLoraError(f"prompt {i} is empty after tokenization; give some text.")
            if len(r.prompt_ids) + config.max_new_tokens > limit:
                raise EdgeEigenLoraError(
                    f"prompt {i} has {len(r.prompt_ids)} tokens; with max_new_tokens={config.max_new_tokens} it "
                    f"exceeds the model's context of {limit} positions: shorten the prompt or lower max_new_tokens."
                )
        eos = set(self.decoder.eos_token_ids if config.eos is None else config.eos)
        pad = int(self.manifest.tokenizer.pad_token_id or (min(eos) if eos else 0))
        batch = len(rows)
        ids = np.full((batch, longest), pad, np.int64)
        mask = np.zeros((batch, longest), np.int64)
        for i, r in enumerate(rows):
            ids[i, longest - len(r.prompt_ids) :] = r.prompt_ids
            mask[i, longest - len(r.prompt_ids) :] = 1
        positions = np.clip(mask.cumsum(-1) - 1, 0, None)
        session = self.session(variant)
        rng = np.random.default_rng(config.seed)
        if stats is not None:
            stats.update(prompt_tokens=[len(r.prompt_ids) for r in rows], step_ms=[], variant=variant)
        feeds = {contract.INPUT_IDS: ids, contract.ATTENTION_MASK: mask, contract.POSITION_IDS: positions}
        # contiguous once, and held here for the whole generation: the binding points at these arrays
        task_feeds = {k: np.ascontiguousarray(v) for k, v in task_feeds.items()}
        binding = self._bind_task(session, task_feeds)
        past = None
        for step in range(config.max_new_tokens):
            start = time.perf_counter()
            logits, past = self._run_step(session, binding, feeds, task_feeds, past, batch)
            elapsed = (time.perf_counter() - start) * 1e3
            if stats is not None and stats.get("record_logits"):
                stats.setdefault("step_logits", []).append(logits.copy())
            if stats is not None:
                stats["step_ms" if step else "prefill_ms"] = stats["step_ms"] + [elapsed] if step else elapsed
            chosen = next_tokens(logits, [r.prompt_ids + r.ids for r in rows], config, rng)
            for i, r in enumerate(rows):
                if r.finish is not None:
                    continue
                token = int(chosen[i])
                r.ids.append(token)
                if token in eos:
                    r.finish = "eos"
                    yield TokenEvent(i, token, "", "eos")
                    continue
                yield from self._emit(i, r, token, config, last=step == config.max_new_tokens - 1)
            if all(r.finish is not None for r in rows):
                return
            # finished rows keep feeding a pad token: rows are independent, so their values never matter
            next_ids = np.array([[r.ids[-1] if r.finish is None else pad] for r in rows], np.int64)
            mask = np.concatenate([mask, np.ones((batch, 1), np.int64)], axis=1)
            positions = positions[:, -1:] + 1
            feeds = {
                contract.INPUT_IDS: next_ids,
                contract.ATTENTION_MASK: mask,
                contract.POSITION_IDS: positions,
            }

    def _emit(
        self, i: int, r: _Row, token: int, config: GenerationConfig, last: bool
    ) -> Iterator[TokenEvent]:
        text = self.decode(r.ids)
        if text.endswith("\ufffd") and not last:
            yield TokenEvent(i, token, "")  # an incomplete UTF-8 character: wait for its next byte
            return
        for s in config.stop:
            cut = text.find(s)
            if cut >= 0:
                delta = text[len(r.text) : cut] if cut > len(r.text) else ""
                r.text, r.finish = text[:cut], "stop"
                yield TokenEvent(i, token, delta, "stop")
                return
        delta, r.text = text[len(r.text) :], text
        if last:
            r.finish = "length"
        yield TokenEvent(i, token, delta, r.finish)

    def generate(
        self,
        prompts: str | Sequence[str],
        *,
        task: TaskRef | None = None,
        tasks: Sequence[TaskRef] | None = None,
        config: GenerationConfig | None = None,
        stats: dict[str, Any] | None = None,
        **settings: Any,
    ) -> list[Generation]:
        """Generate for every prompt; returns one `Generation` per prompt, in order (see `stream`)."""
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        stats = {} if stats is None else stats
        texts = [""] * len(prompts)
        ids: list[list[int]] = [[] for _ in prompts]
        reasons = ["length"] * len(prompts)
        for event in self.stream(prompts, task=task, tasks=tasks, config=config, stats=stats, **settings):
            ids[event.row].append(event.token_id)
            texts[event.row] += event.text
            if event.finish_reason:
                reasons[event.row] = event.finish_reason
        _, _, names = self._plan(len(prompts), task, tasks)
        steps = stats.get("step_ms", [])
        per_token = float(np.mean(steps)) if steps else 0.0
        return [
            Generation(
                prompt=p,
                text=texts[i],
                token_ids=ids[i],
                prompt_tokens=stats["prompt_tokens"][i],
                finish_reason=reasons[i],
                task=names[i],
                prefill_ms=float(stats.get("prefill_ms", 0.0)),
                decode_ms_per_token=per_token,
                timings_ms=list(steps),
            )
            for i, p in enumerate(prompts)
        ]

    # -- loss and training -----------------------------------------------------------------------------
    def train_step(
        self, input_ids: np.ndarray, attention_mask: np.ndarray, labels: np.ndarray, coefficients: np.ndarray
    ) -> dict[str, Any]:
        """Loss (mean next-token cross-entropy over labelled tokens) and grad_coefficients of one batch."""
        if not self.has_train_step:
            raise EdgeEigenLoraError(
                f"{self.root}: this bundle has no train-step graph; export it with train_step=True (--train-step)."
            )
        feeds = {
            contract.INPUT_IDS: np.asarray(input_ids, np.int64),
            contract.ATTENTION_MASK: np.asarray(attention_mask, np.int64),
            contract.LABELS: np.asarray(labels, np.int64),
            contract.COEFFICIENTS: np.asarray(coefficients, np.float32),
        }
        names = list(contract.graph_output_names(self.KIND, contract.TRAIN_STEP))
        return dict(zip(names, self.session(contract.TRAIN_STEP).run(names, feeds), strict=True))

    def forward(
        self,
        input_ids: np.ndarray,
        attention_mask: np.ndarray | None = None,
        *,
        task: TaskRef | None = None,
        tasks: Sequence[TaskRef] | None = None,
        coefficients: np.ndarray | None = None,
    ) -> np.ndarray:
        """Logits [batch, seq, vocab] of one full pass (an empty cache): the reference generation must equal."""
        ids = np.atleast_2d(np.asarray(input_ids, np.int64))
        mask = (
            np.ones_like(ids)
            if attention_mask is None
            else np.atleast_2d(np.asarray(attention_mask, np.int64))
        )
        if coefficients is not None:
            variant, task_feeds = self.coefficient_graph(coefficients)
        else:
            variant, task_feeds, _ = self._plan(len(ids), task, tasks)
        d = self.decoder
        empty = self._empty_cache(len(ids))
        feeds = {
            contract.INPUT_IDS: ids,
            contract.ATTENTION_MASK: mask,
            contract.POSITION_IDS: np.clip(mask.cumsum(-1) - 1, 0, None),
            **task_feeds,
            **{n: empty for n in contract.cache_input_names(d.num_layers)},
        }
        return self.session(variant).run([contract.LOGITS], feeds)[0]

    def completion_loss(
        self,
        input_ids: np.ndarray,
        attention_mask: np.ndarray,
        labels: np.ndarray,
        *,
        task: TaskRef | None = None,
        coefficients: np.ndarray | None = None,
    ) -> tuple[float, int]:
        """(summed next-token loss in nats, labelled tokens) of one right-padded batch, forward only."""
        logits = self.forward(input_ids, attention_mask, task=task, coefficients=coefficients)
        logits = logits[:, :-1].astype(np.float64)
        target = np.asarray(labels, np.int64)[:, 1:]
        keep = target != contract.IGNORE_INDEX
        top = logits.max(-1, keepdims=True)
        log_z = np.log(np.exp(logits - top).sum(-1)) + top[..., 0]
        picked = np.take_along_axis(logits, np.where(keep, target, 0)[..., None], -1)[..., 0]
        return float(((log_z - picked) * keep).sum()), int(keep.sum())
