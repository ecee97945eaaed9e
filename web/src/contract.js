// The bundle contract as the page reads it: the names edge_eigenlora/bundle.py defines, mirrored once here.
// tests/test_web.py checks every constant against bundle.py, so the two cannot drift apart silently.

export const FORMAT = "edge-eigenlora-bundle";
export const READABLE_VERSIONS = [1, 2];
export const MANIFEST = "manifest.json";

export const SHARED = "shared";
export const PER_ROW = "per_row";
export const TRAIN_STEP = "train_step";

export const INPUT_IDS = "input_ids";
export const ATTENTION_MASK = "attention_mask";
export const LABELS = "labels";
export const COEFFICIENTS = "coefficients";
export const HEAD_WEIGHT = "head_weight";
export const HEAD_BIAS = "head_bias";
export const LOGITS = "logits";
export const LOSS = "loss";
export const GRAD_PREFIX = "grad_";
export const TRAIN_PARAMS = [COEFFICIENTS, HEAD_WEIGHT, HEAD_BIAS];

// The task file (edge_eigenlora/task.py): tensors `<module>.alpha_A|B`, `head.weight`, `head.bias` + metadata.
export const TASK_FORMAT = "edge-eigenlora-task";
export const TASK_FORMAT_VERSION = "1";
export const HEAD_WEIGHT_TENSOR = "head.weight";
export const HEAD_BIAS_TENSOR = "head.bias";
export const ALPHA_A = "alpha_A";
export const ALPHA_B = "alpha_B";
export const TASK_NAME = /^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$/;

/** The path of a task's file inside a bundle. */
export function taskFile(name) {
  return `tasks/${name}.safetensors`;
}

/** The same rule as bundle.check_task_name; throws a message that says how to fix the name. */
export function checkTaskName(name) {
  if (typeof name !== "string" || !TASK_NAME.test(name) || name.includes("..")) {
    throw new Error(
      `task name ${JSON.stringify(name)} is not allowed: use 1-64 letters, digits, '.', '_' or '-', ` +
        "starting with a letter or digit. Rename the task.",
    );
  }
  return name;
}
