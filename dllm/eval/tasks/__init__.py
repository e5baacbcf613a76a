"""lm-eval task YAMLs of the embedded suite (found through ``dllm.eval.task_manager()``) and their helpers."""
