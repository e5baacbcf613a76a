"""Data parallel evaluation: ``accelerate launch`` with 2 CPU processes (gloo) reproduces 1 process."""

import json
import subprocess
import sys

import pytest

from conftest import DECODES

WORKER = '''
import json, sys, torch
torch.set_num_threads(1)
import lm_eval, dllm.eval
checkpoint, out = sys.argv[1], sys.argv[2]
results = lm_eval.simple_evaluate(
    model="dllm", model_args=f"pretrained={checkpoint},sampler=threshold,threshold=0.7,gen_length=16,block_length=8,mc_num=8",
    tasks=["dllm_sort", "dllm_json", "dllm_sort_mc"], task_manager=dllm.eval.task_manager(include_defaults=False),
    limit=5, batch_size=2, log_samples=True)
if results is not None:  # rank 0 only
    samples = {task: sorted([s["doc_id"], s["filtered_resps"], s["metrics"] and [s[m] for m in s["metrics"]]]
                            for s in rows) for task, rows in results["samples"].items()}
    json.dump({"samples": samples, "speed": results["config"]["dllm"]["speed"],
               "world_size": results["config"]["dllm"]["world_size"], "results": results["results"]}, open(out, "w"))
'''


def test_two_cpu_processes_reproduce_one_process_per_sample(tmp_path):
    worker = tmp_path / "worker.py"
    worker.write_text(WORKER)
    checkpoint = str(DECODES / "llada_peaky")
    single = subprocess.run([sys.executable, str(worker), checkpoint, str(tmp_path / "one.json")],
                            capture_output=True, text=True, timeout=300)
    assert single.returncode == 0, single.stderr[-3000:]
    # on a machine without CUDA, --multi_gpu starts torchrun-style processes and dllm joins them over gloo
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
              "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "0"]
    double = subprocess.run(launch + [str(worker), checkpoint, str(tmp_path / "two.json")],
                            capture_output=True, text=True, timeout=300)
    assert double.returncode == 0, double.stderr[-3000:]
    one = json.loads((tmp_path / "one.json").read_text())
    two = json.loads((tmp_path / "two.json").read_text())
    assert (one["world_size"], two["world_size"]) == (1, 2)
    assert one["samples"] == two["samples"]
    for task, metrics in one["results"].items():  # same metrics (stderr up to summation order)
        assert two["results"][task] == pytest.approx(metrics)
    for task in ("dllm_sort", "dllm_json"):  # lm-eval's padding requests are not counted twice
        assert one["speed"][task]["samples"] == two["speed"][task]["samples"] == 5
        assert one["speed"][task]["tokens"] == two["speed"][task]["tokens"]
    assert one["speed"]["dllm_sort_mc"]["ll_requests"] == two["speed"]["dllm_sort_mc"]["ll_requests"] == 20
