"""Training recipe of the embedded model: ``python -m dllm.tiny.train --out DIR [--resume]``.

LLaDA-style SFT with the masked-diffusion objective: the prompt is never masked; the response region has a
fixed length ``gen_length`` right after the prompt (the answer, then EOS up to the end), which is exactly the
canvas ``dllm.generate`` decodes. Each row draws a mask ratio t, every response token is masked with
probability t, and the cross-entropy of the masked tokens is weighted by 1/t (normalised by the response
length), which makes the loss an upper bound of the response's negative log-likelihood.

Deterministic from its seed: the batch of step s and its masks are functions of (seed, s) alone, the model
initialisation of the seed, and the learning rate of s, so a run resumed from its state file continues
exactly like an uninterrupted one. The output directory is a LLaDA-format checkpoint that ``dllm.load``
reads like any real one; ``train_state.pt`` (weights + optimiser, for ``--resume``) sits beside it until
the run finishes.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import time
from dataclasses import asdict, dataclass, fields
from functools import cached_property
from pathlib import Path

import torch
import torch.nn.functional as F

from . import tasks
from .tokenizer import save_tokenizer, train_tokenizer

STATE_FILE = "train_state.pt"


@dataclass
class Recipe:
    """Every knob of a run; the defaults are the shipped model's recipe (see README.md)."""

    seed: int = 0
    steps: int = 7500
    batch_size: int = 48
    lr: float = 2e-3
    min_lr: float = 1e-4
    warmup: int = 300
    weight_decay: float = 0.05
    grad_clip: float = 1.0
    min_mask_ratio: float = 1e-3
    gen_length: int = 32  # response region (answer + EOS padding) = the canvas generate() decodes
    block_length: int = 16  # the semi-autoregressive block the scores are measured with
    d_model: int = 128
    n_layers: int = 6
    n_heads: int = 4
    mlp_hidden: int = 384
    max_prompt: int = 96  # config.json context = max_prompt + gen_length (training prompts are <= 46 tokens)
    rope_theta: float = 10000.0
    tasks: str = "arith,json,sort"  # comma-separated, mixed evenly in every batch
    warm_start: int = 3000  # first steps trained left-to-right (two-stream, see ``left_to_right_loss``)
    warm_start_trim: bool = False  # warm start on answer + first EOS only (not the EOS tail): ~2x cheaper
    curriculum: int = 0  # length curriculum over this many steps (0 = off; see ``curriculum_progress``)
    curriculum_tasks: str = ""  # tasks of the curriculum's first third ("" = all; see ``step_examples``)
    block_noise: float = 0.0  # share of diffusion rows masked like semi-autoregressive decoding (``block_masks``)
    task_options: str = ""  # JSON {task: {generator keyword: value}} over the training ranges (cot_tasks.DIFFICULTY)
    init: str = ""  # checkpoint directory to start from (its weights and tokenizer) instead of a fresh network
    eval_every: int = 500
    save_every: int = 250

    @property
    def task_list(self) -> tuple[str, ...]:
        return _names(self.tasks)

    @cached_property
    def options(self) -> dict:
        """``task_options`` parsed (task -> generator keywords); one-line error when it is not such JSON."""
        try:
            options = json.loads(self.task_options or "{}")
        except ValueError as error:
            raise ValueError(f"--task-options is not JSON ({error}): write e.g. "
                             '\'{"cot_filter": {"count_in_prompt": false}}\'') from None
        if not isinstance(options, dict) or not all(isinstance(v, dict) for v in options.values()):
            raise ValueError("--task-options must map task names to keyword objects, e.g. "
                             '\'{"cot_filter": {"count_in_prompt": false}}\'')
        return options

    @property
    def curriculum_task_list(self) -> tuple[str, ...]:
        return _names(self.curriculum_tasks)

    @property
    def curriculum_hold(self) -> float:
        """Steps at the curriculum's start ranges (and on ``curriculum_tasks`` only): its first third."""
        return self.curriculum / 3


def _names(text: str) -> tuple[str, ...]:
    return tuple(t.strip() for t in text.split(",") if t.strip())


# Named starting points for ``--preset``; explicit flags override single fields.
PRESETS: dict[str, dict] = {
    # the shipped ``tiny`` model (the Recipe defaults)
    "tiny": {},
    # stage 1 of ``tiny-cot`` (run 5): longer dependent answers on a 128-token canvas (see cot_tasks.py).
    # 2.15 M parameters; ~100 min on the 2 idle CPU cores (README.md); 5,000 of the 8,200 steps are the
    # left-to-right warm start (~40,000 arithmetic chains: the facts need ~35,000), whose first 1,500 steps are the
    # length curriculum. Its filter prompts do not say how many numbers to select (the later format, see below).
    "cot": {"tasks": "cot_arith,cot_filter,cot_copy,cot_json", "gen_length": 128, "block_length": 32,
            "d_model": 160, "n_heads": 5, "n_layers": 6, "mlp_hidden": 432, "max_prompt": 128,
            "batch_size": 32, "steps": 8200, "warm_start": 5000, "warm_start_trim": True, "warmup": 200,
            "lr": 2e-3, "curriculum": 1500, "curriculum_tasks": "cot_copy",
            "task_options": '{"cot_filter": {"count_in_prompt": false}}'},
}
# stage 2 of the shipped ``tiny-cot`` (run 6): masked-diffusion steps from stage 1's checkpoint (``--init``) at a
# lower learning rate, on the current task formats (the filter prompt gives the count, cot_tasks.cot_filter)
PRESETS["cot-tune"] = {**PRESETS["cot"], "seed": 1, "steps": 3000, "warm_start": 0, "warm_start_trim": False,
                       "curriculum": 0, "curriculum_tasks": "", "lr": 5e-4, "min_lr": 1e-5, "warmup": 50,
                       "task_options": ""}
NEEDS_INIT = {"cot-tune": "cot"}  # presets that continue another preset's checkpoint


# --------------------------------------------------------------------------------------------------
# model <-> LLaDA checkpoint
# --------------------------------------------------------------------------------------------------
def llada_config(recipe: Recipe, vocab_size: int, ids: dict[str, int]) -> dict:
    """config.json in LLaDA's (OLMo-style) keys, with the special-token ids of our tokenizer."""
    return {
        "architectures": ["LLaDAModelLM"],
        "model_type": "llada",
        "activation_type": "silu",
        "alibi": False,
        "alibi_bias_max": 8.0,
        "attention_dropout": 0.0,
        "attention_layer_norm": False,
        "attention_layer_norm_with_affine": True,
        "bias_for_layer_norm": False,
        "block_group_size": 1,
        "block_type": "llama",
        "d_model": recipe.d_model,
        "embedding_dropout": 0.0,
        "embedding_size": vocab_size,
        "vocab_size": vocab_size,
        "flash_attention": False,
        "include_bias": False,
        "include_qkv_bias": False,
        "init_device": "meta",
        "init_fn": "normal",
        "init_std": 0.02,
        "input_emb_norm": False,
        "layer_norm_type": "rms",
        "layer_norm_with_affine": True,
        "max_sequence_length": recipe.max_prompt + recipe.gen_length,
        "mlp_hidden_size": recipe.mlp_hidden,
        "mlp_ratio": 4,
        "multi_query_attention": None,
        "n_heads": recipe.n_heads,
        "n_kv_heads": recipe.n_heads,
        "n_layers": recipe.n_layers,
        "precision": "fp32",
        "residual_dropout": 0.0,
        "rms_norm_eps": 1e-5,
        "rope": True,
        "rope_full_precision": True,
        "rope_theta": recipe.rope_theta,
        "scale_logits": False,
        "use_cache": False,
        "weight_tying": False,
        "dtype": "float32",
        "bos_token_id": ids["bos"],
        "eos_token_id": ids["eos"],
        "pad_token_id": ids["pad"],
        "mask_token_id": ids["mask"],
    }


def build_network(config: dict, seed: int):
    """The native network for a LLaDA config (parsed by the loader's own family code), freshly initialised."""
    from ..models.families import family_by_name
    from ..models.network import Network

    torch.manual_seed(seed)
    net = Network(family_by_name("llada").network_config(config))
    for name, param in net.named_parameters():
        if name.endswith("norm.weight"):
            torch.nn.init.ones_(param)
        else:
            # plain N(0, 0.02) everywhere; probes with depth-scaled output projections learned copying much later
            torch.nn.init.normal_(param, std=config["init_std"])
    return net


def llada_state_dict(net) -> dict[str, torch.Tensor]:
    """Native parameter names -> LLaDA checkpoint names, through the loader's own weight rules inverted
    (:func:`dllm.models.families.checkpoint_name`), so export and load cannot drift apart."""
    from ..models.families import checkpoint_name, family_by_name

    llada = family_by_name("llada")
    out = {}
    for name, tensor in net.state_dict().items():
        if name == "lm_head.weight" and net.cfg.tie_embeddings:
            continue  # weight_tying: LLaDA checkpoints then have no separate output matrix
        key = checkpoint_name(llada, name)
        if key is None:
            raise ValueError(f"no LLaDA checkpoint name maps onto the native parameter '{name}'")
        out[key] = tensor.detach().float().contiguous().clone()
    return out


def export_checkpoint(net, config: dict, tokenizer, out: Path, recipe: Recipe) -> None:
    """Write a LLaDA-format checkpoint directory (weights, config, tokenizer, generation config)."""
    from safetensors.torch import save_file

    out.mkdir(parents=True, exist_ok=True)
    save_file(llada_state_dict(net), str(out / "model.safetensors"), metadata={"format": "pt"})
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    generation = {"bos_token_id": config["bos_token_id"], "eos_token_id": config["eos_token_id"],
                  "pad_token_id": config["pad_token_id"], "mask_token_id": config["mask_token_id"],
                  "gen_length": recipe.gen_length, "block_length": recipe.block_length,
                  "prompt_suffix": "\n"}  # prompts are "<Instruction>: <input>\n" (tasks.py)
    (out / "generation_config.json").write_text(json.dumps(generation, indent=2) + "\n")
    save_tokenizer(tokenizer, out, config["max_sequence_length"])


# --------------------------------------------------------------------------------------------------
# data
# --------------------------------------------------------------------------------------------------
@dataclass
class Batch:
    """Right-padded rows ``prompt | answer EOS... (gen_length) | pad``; positions 0..L-1 in every row."""

    ids: torch.Tensor  # [B, L]
    keep: torch.Tensor  # [B, L] bool, False on padding (hidden from every query)
    response: torch.Tensor  # [B, L] bool, the gen_length response region


def special_ids(tokenizer) -> dict[str, int]:
    from .tokenizer import BOS, EOS, MASK, PAD

    return {name: tokenizer.token_to_id(tok) for name, tok in (("bos", BOS), ("eos", EOS), ("mask", MASK), ("pad", PAD))}


def collate(examples: list[tasks.Example], tokenizer, ids: dict[str, int], gen_length: int) -> Batch:
    """Tokenise problems into the training layout; answers longer than ``gen_length`` are an error."""
    rows, prompt_lens = [], []
    for ex in examples:
        prompt = tokenizer.encode(ex.prompt).ids
        answer = tokenizer.encode(ex.target).ids + [ids["eos"]]
        if len(answer) > gen_length:
            raise ValueError(f"answer of {len(answer)} tokens does not fit gen_length={gen_length}: {ex.target!r}")
        rows.append(prompt + answer + [ids["eos"]] * (gen_length - len(answer)))
        prompt_lens.append(len(prompt))
    length = max(map(len, rows))
    tensor = torch.full((len(rows), length), ids["pad"], dtype=torch.long)
    keep = torch.zeros((len(rows), length), dtype=torch.bool)
    response = torch.zeros((len(rows), length), dtype=torch.bool)
    for i, (row, p) in enumerate(zip(rows, prompt_lens)):
        tensor[i, : len(row)] = torch.tensor(row)
        keep[i, : len(row)] = True
        response[i, p : p + gen_length] = True
    return Batch(tensor, keep, response)


def curriculum_progress(recipe: Recipe, step: int) -> float:
    """How far the tiny-cot size ranges are widened at ``step``: the first third of ``recipe.curriculum``
    steps trains on the short start ranges only (where copying from the prompt is found), the rest widens
    them linearly to the full range; 1.0 without a curriculum."""
    if recipe.curriculum <= 0:
        return 1.0
    hold = recipe.curriculum_hold
    return min(1.0, max(0.0, (step - hold) / (recipe.curriculum - hold)))


def step_tasks(recipe: Recipe, step: int) -> tuple[str, ...]:
    """The tasks of ``step``'s batch: ``curriculum_tasks`` during the curriculum's first third, else all.

    Why: mixed evenly over four tasks, the short copy spans alone did not teach copying from the prompt in 750
    steps (plain number copy stayed at the EOS-only token accuracy, 0.30), while the copy-only probe learns it
    in 250; the other tasks need the same circuit (values copied into the worked lines and JSON)."""
    if recipe.curriculum_task_list and step < recipe.curriculum_hold:
        return recipe.curriculum_task_list
    return recipe.task_list


def step_examples(recipe: Recipe, step: int) -> list[tasks.Example]:
    """The training problems of ``step`` (a function of seed and step only; tasks mixed evenly)."""
    rng = random.Random(f"tiny-train-{recipe.seed}-{step}")
    names = step_tasks(recipe, step)
    progress = curriculum_progress(recipe, step)
    options = recipe.options
    return [tasks.sample(names[i % len(names)], rng, "train", progress, options) for i in range(recipe.batch_size)]


def noise(batch: Batch, mask_id: int, generator: torch.Generator, min_ratio: float,
          ratio: float | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Mask the response region; returns (model input, masked bool [B, L], per-row token weight [B]).

    Row i draws a ratio t_i (stratified over the batch, or the fixed ``ratio``) and masks every response
    token with probability t_i; a masked token's cross-entropy is weighted by 1 / (t_i * gen_length).
    """
    b = batch.ids.shape[0]
    if ratio is None:
        offset = torch.rand((), generator=generator)
        t = (offset + torch.arange(b) / b) % 1.0  # stratified: covers (0, 1) evenly in every batch
        t = t[torch.randperm(b, generator=generator)]
        t = min_ratio + (1 - min_ratio) * t
    else:
        t = torch.full((b,), float(ratio))
    masked = (torch.rand(batch.ids.shape, generator=generator) < t[:, None]) & batch.response
    noisy = torch.where(masked, torch.full_like(batch.ids, mask_id), batch.ids)
    return noisy, masked, 1.0 / (t * batch.response.sum(1))


def block_masks(batch: Batch, masked: torch.Tensor, weight: torch.Tensor, generator: torch.Generator,
                block_length: int, share: float, mask_id: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Re-mask a ``share`` of the rows the way semi-autoregressive decoding sees the canvas.

    Why: decoding block k sees blocks < k finished and every block > k fully masked, a layout that uniform
    masking of the whole response practically never draws (it would need ~96 masked and ~0 visible positions
    right of a partly visible block). A chosen row keeps its random mask inside one block drawn uniformly,
    its earlier blocks become clean and its later blocks masked; its tokens are weighted by 1 / (masked count),
    so the row's loss stays the mean cross-entropy like a uniformly masked row's."""
    b, length = batch.ids.shape
    chosen = torch.rand(b, generator=generator) < share
    start = batch.response.float().argmax(1)
    rank = torch.arange(length)[None, :] - start[:, None]  # position inside the response (valid where response)
    gen = batch.response.sum(1)
    blocks = (gen + block_length - 1) // block_length
    current = (torch.rand(b, generator=generator) * blocks).long()
    block_of = torch.div(rank, block_length, rounding_mode="floor")
    layout = torch.where(block_of < current[:, None], torch.zeros_like(masked),
                         torch.where(block_of > current[:, None], torch.ones_like(masked), masked))
    layout &= batch.response
    masked = torch.where(chosen[:, None], layout, masked)
    count = masked.sum(1).clamp(min=1).float()
    weight = torch.where(chosen, 1.0 / count, weight)
    return torch.where(masked, torch.full_like(batch.ids, mask_id), batch.ids), masked, weight


def forward(net, ids: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    b, length = ids.shape
    positions = torch.arange(length).expand(b, length)
    mask = None if bool(keep.all()) else keep[:, None, None, :]
    return net(ids, positions, mask)


def diffusion_loss(net, batch: Batch, noisy, scored, weight) -> tuple[torch.Tensor, dict]:
    """LLaDA SFT loss: sum over masked response tokens of CE / (t * gen_length), mean over rows."""
    logits = forward(net, noisy, batch.keep)
    token_loss = F.cross_entropy(logits[scored], batch.ids[scored], reduction="none")
    loss = (token_loss * weight[:, None].expand_as(scored)[scored]).sum() / batch.ids.shape[0]
    with torch.no_grad():
        any_scored = bool(scored.any())
        acc = float((logits[scored].argmax(-1) == batch.ids[scored]).float().mean()) if any_scored else 1.0
        ce = float(token_loss.mean()) if any_scored else 0.0
    return loss, {"loss": float(loss.detach()), "ce": ce, "acc": acc}


def left_to_right_loss(net, batch: Batch, mask_id: int) -> tuple[torch.Tensor, dict]:
    """Warm-start loss: every response token predicted at a MASK from the prompt and the tokens left of it.

    Two streams in one forward (XLNet-style): the clean response attends causally to itself and the prompt;
    a second copy of the response positions holds MASK tokens, and MASK j sees the prompt, the clean tokens
    before j and itself. So all ``gen_length`` positions get the left-to-right conditional that
    one-token-per-step decoding uses, in the same parameterisation as the diffusion loss (the prediction for
    position j is read at a MASK at position j; no logit shift). Masked diffusion alone gets about one such
    token per row and per step, which is why it learns copying from the prompt so slowly.
    """
    b, length = batch.ids.shape
    gen = int(batch.response[0].sum())
    start = batch.response.float().argmax(1)  # first response column of each row
    cols = torch.arange(length)
    rank = torch.where(batch.response, cols - start[:, None], torch.full_like(batch.ids, -1))  # -1 = prompt
    rank = torch.where(batch.keep, rank, torch.full_like(rank, 10**6))  # padding: never visible
    is_prompt = rank == -1
    # clean part: prompt rows see the prompt; response rows see the prompt and the response up to themselves
    clean_q = torch.where(is_prompt | ~batch.keep, torch.full_like(rank, -1), rank)
    clean_mask = rank[:, None, :] <= clean_q[:, :, None]  # [B, L(q), L(k)]
    clean_mask = torch.cat([clean_mask, torch.zeros(b, length, gen, dtype=torch.bool)], dim=2)
    # MASK stream: query j sees ranks < j (prompt included) and itself
    j = torch.arange(gen)
    stream_mask = torch.cat([rank[:, None, :] < j[None, :, None],
                             torch.eye(gen, dtype=torch.bool).expand(b, gen, gen)], dim=2)
    mask = torch.cat([clean_mask, stream_mask], dim=1)[:, None]
    ids = torch.cat([batch.ids, torch.full((b, gen), mask_id, dtype=torch.long)], dim=1)
    positions = torch.cat([cols.expand(b, length), start[:, None] + j[None, :]], dim=1)
    logits = net(ids, positions, mask)[:, length:]
    targets = batch.ids[batch.response].view(b, gen)
    loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))
    with torch.no_grad():
        acc = float((logits.argmax(-1) == targets).float().mean())
    return loss, {"loss": float(loss.detach()), "ce": float(loss.detach()), "acc": acc}


def learning_rate(recipe: Recipe, step: int) -> float:
    """Linear warmup then cosine decay to ``min_lr`` (a pure function of the step: nothing to resume)."""
    if step < recipe.warmup:
        return recipe.lr * (step + 1) / recipe.warmup
    progress = (step - recipe.warmup) / max(1, recipe.steps - recipe.warmup)
    return recipe.min_lr + 0.5 * (recipe.lr - recipe.min_lr) * (1 + math.cos(math.pi * min(1.0, progress)))


def make_optimizer(net, recipe: Recipe) -> torch.optim.Optimizer:
    """AdamW; norm weights are not decayed."""
    decay, no_decay = [], []
    for name, param in net.named_parameters():
        (no_decay if name.endswith("norm.weight") else decay).append(param)
    groups = [{"params": decay, "weight_decay": recipe.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=recipe.lr, betas=(0.9, 0.98), eps=1e-8)


def train_step(net, optimizer, recipe: Recipe, step: int, tokenizer, ids: dict[str, int]) -> dict:
    """One optimisation step on the batch of ``step``; returns its metrics.

    The batch is run as one micro-batch per task (gradients accumulated): prompts differ a lot in length
    between tasks, and padding every row to the longest prompt of the whole batch wastes a quarter of the time.
    """
    net.train()
    examples = step_examples(recipe, step)
    generator = torch.Generator().manual_seed(recipe.seed * 1_000_003 + step)
    lr = learning_rate(recipe, step)
    for group in optimizer.param_groups:
        group["lr"] = lr
    optimizer.zero_grad(set_to_none=True)
    totals = {"loss": 0.0, "ce": 0.0, "acc": 0.0}
    for task in step_tasks(recipe, step):
        group = [e for e in examples if e.task == task]
        if step < recipe.warm_start:
            length = recipe.gen_length
            if recipe.warm_start_trim:  # the EOS tail teaches nothing left-to-right; the diffusion phase covers it
                length = min(length, 1 + max(len(tokenizer.encode(e.target).ids) for e in group))
            loss, metrics = left_to_right_loss(net, collate(group, tokenizer, ids, length), ids["mask"])
        else:
            batch = collate(group, tokenizer, ids, recipe.gen_length)
            noisy, masked, weight = noise(batch, ids["mask"], generator, recipe.min_mask_ratio)
            if recipe.block_noise > 0:
                noisy, masked, weight = block_masks(batch, masked, weight, generator, recipe.block_length,
                                                    recipe.block_noise, ids["mask"])
            loss, metrics = diffusion_loss(net, batch, noisy, masked, weight)
        (loss * len(group) / len(examples)).backward()
        for key in totals:
            totals[key] += metrics[key] * len(group) / len(examples)
    totals["grad_norm"] = float(torch.nn.utils.clip_grad_norm_(net.parameters(), recipe.grad_clip))
    optimizer.step()
    totals["lr"] = lr
    return totals


@torch.no_grad()
def evaluate(net, recipe: Recipe, tokenizer, ids: dict[str, int], size: int = 96) -> dict:
    """Teacher-forced accuracy on fresh training-split problems at fixed mask ratios (monitoring only).

    Counted on the masked answer tokens and the first EOS, not the easy EOS tail, so it tracks what
    decoding needs; ``@1.0`` is one-shot prediction of the whole answer from the prompt alone.
    """
    net.eval()
    rng = random.Random(f"tiny-validation-{recipe.seed}")
    names = recipe.task_list
    examples = [tasks.sample(names[i % len(names)], rng, "train", options=recipe.options) for i in range(size)]
    result = {}
    for task in names:
        batch = collate([e for e in examples if e.task == task], tokenizer, ids, recipe.gen_length)
        is_eos = batch.response & (batch.ids == ids["eos"])
        answer = batch.response & (is_eos.cumsum(1) - is_eos.long() == 0)  # answer tokens and the first EOS
        for ratio in (0.25, 0.5, 1.0):
            generator = torch.Generator().manual_seed(17)
            noisy, masked, _ = noise(batch, ids["mask"], generator, recipe.min_mask_ratio, ratio)
            scored = masked & answer
            logits = forward(net, noisy, batch.keep)
            result[f"{task}@{ratio}"] = float((logits[scored].argmax(-1) == batch.ids[scored]).float().mean())
    return result


# --------------------------------------------------------------------------------------------------
# run
# --------------------------------------------------------------------------------------------------
def tokenizer_tasks(recipe: Recipe) -> tuple[str, ...]:
    """The tasks whose corpus the tokenizer is trained on: the first suite's for ``tiny`` (unchanged since it
    shipped), the recipe's own tasks otherwise."""
    names = recipe.task_list
    return tasks.TASKS if set(names) <= set(tasks.TASKS) else names


def build_run(recipe: Recipe):
    """(tokenizer, special ids, config.json dict, network) of ``recipe``: freshly initialised, or with the
    weights and tokenizer of ``recipe.init``."""
    if recipe.init:
        return _from_checkpoint(recipe, Path(recipe.init))
    tokenizer = train_tokenizer(task_names=tokenizer_tasks(recipe), task_options=recipe.task_options)
    ids = special_ids(tokenizer)
    config = llada_config(recipe, tokenizer.get_vocab_size(), ids)
    return tokenizer, ids, config, build_network(config, recipe.seed)


def _from_checkpoint(recipe: Recipe, path: Path):
    """The run's pieces from a LLaDA-format checkpoint this recipe wrote (the ``--init`` of a later stage); the
    weights come through ``dllm.load``, the same loader every checkpoint goes through."""
    from tokenizers import Tokenizer

    from ..models.loader import load

    if not (path / "config.json").is_file() or not (path / "model.safetensors").is_file():
        raise FileNotFoundError(f"--init {path}: no checkpoint there (point it at the --out of the earlier stage)")
    tokenizer = Tokenizer.from_file(str(path / "tokenizer.json"))
    ids = special_ids(tokenizer)
    config = llada_config(recipe, tokenizer.get_vocab_size(), ids)
    saved = json.loads((path / "config.json").read_text())
    differ = sorted(k for k in config if saved.get(k) != config[k])
    if differ:
        raise ValueError(f"--init {path} has another architecture ({', '.join(differ)}): use the preset it was "
                         "trained with")
    net = build_network(config, recipe.seed)
    net.load_state_dict(load(path, dtype=torch.float32, device="cpu").network.state_dict())
    return tokenizer, ids, config, net


def load_state(state_path: Path):
    """(state dict, recipe, tokenizer, special ids, config, network with the state's weights) of a run's
    ``train_state.pt``: what probes and ``export_state`` read from a running run."""
    state = torch.load(state_path, weights_only=True)
    recipe = Recipe(**state["recipe"])
    tokenizer, ids, config, net = build_run(recipe)
    net.load_state_dict(state["model"])
    return state, recipe, tokenizer, ids, config, net


def check_output(out: Path, resume: bool) -> None:
    """Refuse to mix two runs in one directory (one line naming the fix)."""
    state = out / STATE_FILE
    if resume and not state.exists():
        raise FileNotFoundError(f"--resume: no {STATE_FILE} in {out} (start without --resume)")
    if not resume and state.exists():
        raise FileExistsError(f"{out} holds an unfinished run ({STATE_FILE}): pass --resume to continue it, "
                              "or choose another --out")
    if not resume:
        refuse_checkpoint(out)


def refuse_checkpoint(out: Path) -> None:
    if (out / "config.json").exists():
        raise FileExistsError(f"{out} already holds a checkpoint: remove it or choose another --out")


def save_state(path: Path, net, optimizer, recipe: Recipe, step: int, elapsed: float) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save({"model": net.state_dict(), "optimizer": optimizer.state_dict(), "recipe": asdict(recipe),
                "step": step, "elapsed": elapsed}, tmp)
    os.replace(tmp, path)  # atomic: an interrupted save never corrupts the previous state


def run(recipe: Recipe, out: Path, resume: bool = False, progress: bool = True, keep_state: bool = False,
        stop_at: int | None = None) -> Path:
    """Train (or resume) and write the checkpoint to ``out``; returns ``out``.

    ``stop_at``: pause after that many steps (state saved, checkpoint of that step exported) so the run can
    be split into sessions; ``--resume`` continues it to ``recipe.steps`` exactly as if never paused.
    """
    from tqdm import tqdm

    check_output(out, resume)
    recipe.options  # parsed once here: a malformed --task-options fails before anything is written
    unknown = set(recipe.curriculum_task_list) - set(recipe.task_list)
    if unknown:
        raise ValueError(f"--curriculum-tasks {','.join(sorted(unknown))} not in --tasks: name a subset of "
                         f"{recipe.tasks}")
    out.mkdir(parents=True, exist_ok=True)
    state_path = out / STATE_FILE
    tokenizer, ids, config, net = build_run(recipe)
    optimizer = make_optimizer(net, recipe)
    start, elapsed = 0, 0.0
    if resume:
        state = torch.load(state_path, weights_only=True)
        if state["recipe"] != asdict(recipe):
            changed = sorted(k for k in state["recipe"] if state["recipe"][k] != asdict(recipe).get(k))
            raise ValueError(f"--resume with a different recipe ({', '.join(changed)}): use the original options")
        net.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        start, elapsed = state["step"], state["elapsed"]
    params = sum(p.numel() for p in net.parameters())
    end = recipe.steps if stop_at is None else min(stop_at, recipe.steps)
    bar = tqdm(range(start, end), initial=start, total=recipe.steps, disable=not progress,
               desc=f"tiny {params / 1e6:.2f}M", dynamic_ncols=True)
    began = time.time() - elapsed
    for step in bar:
        metrics = train_step(net, optimizer, recipe, step, tokenizer, ids)
        bar.set_postfix(loss=f"{metrics['loss']:.3f}", acc=f"{metrics['acc']:.3f}", lr=f"{metrics['lr']:.1e}")
        done = step + 1
        if done % recipe.eval_every == 0 or done == recipe.steps:
            scores = evaluate(net, recipe, tokenizer, ids)
            line = " ".join(f"{k}={v:.3f}" for k, v in scores.items())
            bar.write(f"step {done} ({(time.time() - began) / 60:.1f} min) masked-token acc: {line}")
        if done % recipe.save_every == 0 and done < recipe.steps:
            save_state(state_path, net, optimizer, recipe, done, time.time() - began)
    bar.close()
    export_checkpoint(net, config, tokenizer, out, recipe)
    minutes = (time.time() - began) / 60
    if end < recipe.steps or keep_state:
        save_state(state_path, net, optimizer, recipe, end, time.time() - began)
    elif state_path.exists():
        state_path.unlink()
    print(f"wrote {out} ({params:,} parameters, step {end} of {recipe.steps}, {minutes:.1f} min)")
    return out


def export_state(state_path: Path, out: Path) -> Path:
    """Write a loadable checkpoint from a run's ``train_state.pt`` (mid-run or kept after the last step), so a
    running or paused run can be decoded and scored without touching it. Refuses an ``out`` holding a model."""
    if not state_path.is_file():
        raise FileNotFoundError(f"--export-state: no state file {state_path} (point it at a run's {STATE_FILE})")
    refuse_checkpoint(out)
    state, recipe, tokenizer, _, config, net = load_state(state_path)
    out.mkdir(parents=True, exist_ok=True)
    export_checkpoint(net, config, tokenizer, out, recipe)
    print(f"wrote {out} (step {state['step']} of {recipe.steps})")
    return out


def _openmp_hint(threads: int) -> None:
    """Say how to avoid OpenMP's spinning waits when several threads share busy cores (measured 3-5x slower
    steps on 2 busy cores). The variable is read when torch loads, so only the caller can set it."""
    if threads > 1 and "OMP_WAIT_POLICY" not in os.environ:
        import sys

        print("tip: run with OMP_WAIT_POLICY=PASSIVE (or --threads 1) when other processes share the cores",
              file=sys.stderr)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m dllm.tiny.train", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, type=Path, help="checkpoint directory to write")
    parser.add_argument("--resume", action="store_true", help=f"continue from {STATE_FILE} in --out")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    parser.add_argument("--keep-state", action="store_true", help=f"keep {STATE_FILE} after the last step")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--stop-at", type=int, default=None, help="pause after this step (resume later)")
    parser.add_argument("--export-state", type=Path, default=None, metavar="STATE",
                        help=f"only export a run's {STATE_FILE} (e.g. mid-run) as a checkpoint into --out")
    parser.add_argument("--preset", default="tiny", choices=sorted(PRESETS),
                        help="recipe to start from: tiny (default), cot (tiny-cot stage 1) or cot-tune (stage 2, "
                             "needs --init); flags below override it")
    for f in fields(Recipe):
        parser.add_argument(f"--{f.name.replace('_', '-')}", type=type(f.default), default=None,
                            help=f"(tiny default: {f.default})")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    _openmp_hint(args.threads)
    chosen = {**PRESETS[args.preset],
              **{f.name: getattr(args, f.name) for f in fields(Recipe) if getattr(args, f.name) is not None}}
    recipe = Recipe(**chosen)
    if args.preset in NEEDS_INIT and not recipe.init and args.export_state is None:
        parser.exit(2, f"error: --preset {args.preset} continues a finished --preset {NEEDS_INIT[args.preset]} run: "
                       f"pass --init DIR (that run's --out)\n")
    try:
        if args.export_state is not None:
            export_state(args.export_state, args.out)
            return
        run(recipe, args.out, resume=args.resume, progress=not args.no_progress, keep_state=args.keep_state,
            stop_at=args.stop_at)
    except (FileNotFoundError, FileExistsError, ValueError) as error:
        parser.exit(2, f"error: {error}\n")


if __name__ == "__main__":
    main()
