"""The embedded tiny model: task generators, the shipped test sets, the checkpoint, and the training recipe."""

import json
import random
import re

import pytest
import torch
from safetensors import safe_open

import dllm
from dllm.tiny import tasks, train
from dllm.tiny.tokenizer import BOS, EOS, MASK, PAD, train_tokenizer

from conftest import GOLDENS

CHECKPOINT = dllm.models.loader.EMBEDDED_MODELS["tiny"]


# --------------------------------------------------------------------------------------------------
# tasks
# --------------------------------------------------------------------------------------------------
def test_generators_are_deterministic():
    assert tasks.train_examples(5, 60) == tasks.train_examples(5, 60)
    assert tasks.train_examples(5, 60) != tasks.train_examples(6, 60)
    assert tasks.test_set("sort", 20) == tasks.test_set("sort", 20)


def test_train_and_test_splits_are_disjoint():
    train_prompts = {e.prompt for e in tasks.train_examples(0, 3000)}
    for task in tasks.TASKS:
        test = tasks.test_set(task, 100)
        assert all(tasks.in_test_split(e) for e in test)
        assert not train_prompts & {e.prompt for e in test}
    assert not any(tasks.in_test_split(e) for e in tasks.train_examples(1, 600))


@pytest.mark.parametrize("task", tasks.TASKS)
def test_shipped_test_files_match_the_generators(task):
    lines = (tasks.DATA_DIR / f"{task}_test.jsonl").read_text().splitlines()
    assert len(lines) == tasks.TEST_SIZE
    expected = [tasks.test_record(e, i) for i, e in enumerate(tasks.test_set(task))]
    records = [json.loads(line) for line in lines]
    assert records == json.loads(json.dumps(expected))
    for record in records:
        assert record["choices"][record["label"]] == record["target"]
        assert len(set(record["choices"])) == len(record["choices"]) >= 3


def test_answers_are_right_and_vary_in_length():
    rng = random.Random(0)
    for _ in range(200):
        ex = tasks.sample("arith", rng)
        env = {}
        for statement in re.findall(r"(\w=[\w+*-]+)", ex.prompt.split(". What")[0]):
            name, expr = statement.split("=")
            env[name] = eval(expr, {}, dict(env))  # noqa: S307 (our own generated arithmetic)
        assert tasks.arith_answer(ex.target) == env[ex.prompt.split("What is ")[1][0]]
        ex = tasks.sample("json", rng)
        assert json.loads(ex.target) == ex.meta["record"] and 2 <= len(ex.meta["record"]) <= 5
        ex = tasks.sample("sort", rng)
        assert ex.target.split() == [str(n) for n in sorted(ex.meta["numbers"])]
    lengths = {len(e.target) for e in tasks.train_examples(3, 90)}
    assert len(lengths) > 20


def test_scorers():
    assert tasks.score("arith", "a=1+2=3\n#### 3", "a=1+2=3\n####  3 ")["exact"] == 1.0
    assert tasks.score("arith", "a=1+2=3\n#### 3", "a=1+2=4\n#### 4")["exact"] == 0.0
    assert tasks.score("json", '{"a": 1, "b": "x"}', '{"b": "x", "a": 1}') == {"parseable": 1.0, "exact": 1.0}
    assert tasks.score("json", '{"a": 1, "b": "x"}', '{"a": 1}') == {"parseable": 1.0, "exact": 0.0}
    assert tasks.score("json", '{"a": 1}', '{"a": 1') == {"parseable": 0.0, "exact": 0.0}
    assert tasks.score("json", '{"a": 1}', "[1]")["parseable"] == 0.0
    assert tasks.score("sort", "1 5 12", "1 5 12")["exact"] == 1.0
    assert tasks.score("sort", "1 5 12", "1 12 5")["exact"] == 0.0


# --------------------------------------------------------------------------------------------------
# tokenizer and checkpoint format
# --------------------------------------------------------------------------------------------------
def test_tokenizer_round_trips_and_keeps_values_as_single_tokens():
    tok = train_tokenizer()
    for ex in tasks.train_examples(9, 30):
        assert tok.decode(tok.encode(ex.prompt).ids + tok.encode(ex.target).ids) == ex.prompt + ex.target
    assert [tok.id_to_token(i) for i in tok.encode("1234").ids] == ["12", "34"]  # numbers in <= 2-digit chunks

    def tokens(text):
        return [tok.id_to_token(i) for i in tok.encode(text).ids]

    # a word is the same token in a sentence and in a JSON string (copying it is an identity)
    assert "Berlin" in tokens("Gus lives in Berlin.") and "Berlin" in tokens('{"city": "Berlin"}')
    assert [tok.token_to_id(t) for t in (BOS, EOS, MASK, PAD)] == [0, 1, 2, 3]


def test_shipped_checkpoint_is_llada_format():
    config = json.loads((CHECKPOINT / "config.json").read_text())
    golden = json.loads((GOLDENS / "llada" / "config.json").read_text())
    assert set(golden) - {"auto_map", "transformers_version", "init_cutoff_factor"} <= set(config)
    assert "auto_map" not in config and config["model_type"] == "llada"
    with safe_open(str(GOLDENS / "llada" / "model.safetensors"), "pt") as handle:
        golden_names = {re.sub(r"blocks\.\d+\.", "blocks.N.", k) for k in handle.keys()}
    with safe_open(str(CHECKPOINT / "model.safetensors"), "pt") as handle:
        names = {re.sub(r"blocks\.\d+\.", "blocks.N.", k) for k in handle.keys()}
    assert names == golden_names
    assert (CHECKPOINT / "model.safetensors").stat().st_size <= 16 * 2**20
    tokenizer_config = json.loads((CHECKPOINT / "tokenizer_config.json").read_text())
    assert tokenizer_config["mask_token"] == MASK and tokenizer_config["eos_token"] == EOS


@pytest.fixture(scope="module")
def tiny():
    return dllm.load("tiny", device="cpu")


def test_load_tiny_offline(tiny):
    assert tiny.family == "llada"
    assert tiny.tokenizer.get_vocab() == train_tokenizer().get_vocab()  # the recipe rebuilds the same tokenizer
    assert tiny.mask_id == tiny.tokenizer.mask_token_id == tiny.tokenizer.convert_tokens_to_ids(MASK)
    assert tiny.eos_ids[0] == tiny.tokenizer.eos_token_id
    assert tiny.pad_id == tiny.tokenizer.pad_token_id and tiny.pad_id not in (tiny.mask_id, tiny.eos_ids[0])


def test_tiny_decodes_test_prompts(tiny):
    from dllm.tiny.score import BLOCK_LENGTH, GEN_LENGTH

    examples = [e for task in tasks.TASKS for e in tasks.load_test_set(task)[:4]]
    out = dllm.generate(tiny, [e.prompt for e in examples], sampler="static", gen_length=GEN_LENGTH,
                        block_length=BLOCK_LENGTH, steps=GEN_LENGTH)
    right = [tasks.score(e.task, e.target, text)["exact"] for e, text in zip(examples, out.texts)]
    assert sum(right) >= len(examples) - 1, list(zip([e.prompt for e in examples], out.texts))


# --------------------------------------------------------------------------------------------------
# training recipe (a few steps of a toy-sized model; the real run is not part of CI)
# --------------------------------------------------------------------------------------------------
SMALL = dict(steps=4, warm_start=2, batch_size=6, warmup=2, d_model=32, n_layers=1, n_heads=2, mlp_hidden=48,
             eval_every=4, save_every=2)


def small_network(recipe):
    tok = train_tokenizer()
    ids = train.special_ids(tok)
    return tok, ids, train.build_network(train.llada_config(recipe, tok.get_vocab_size(), ids), recipe.seed)


def test_left_to_right_warm_start_sees_exactly_the_prompt_and_the_tokens_before():
    recipe = train.Recipe(**{**SMALL, "n_layers": 2})
    tok, ids, net = small_network(recipe)
    batch = train.collate(tasks.train_examples(3, 3), tok, ids, recipe.gen_length)
    seen = {}
    forward = net.forward

    def spy(*args):
        seen["logits"] = forward(*args)
        return seen["logits"]

    net.forward = spy
    loss, _ = train.left_to_right_loss(net, batch, ids["mask"])
    net.forward = forward
    assert torch.isfinite(loss)
    length = batch.ids.shape[1]
    for row, j in ((0, 0), (1, 5), (2, 31)):
        start = int(batch.response[row].float().argmax())
        # reference: prompt + the first j response tokens + MASK; the prompt sees only itself, the response
        # is causal, the MASK sees everything before it and itself
        seq = torch.cat([batch.ids[row, :start + j], torch.tensor([ids["mask"]])])[None]
        rank = torch.tensor([-1] * start + list(range(j + 1)))
        mask = rank[None, :] <= torch.where(rank == -1, rank, rank)[:, None]
        mask[-1] = rank < j
        mask[-1, -1] = True
        with torch.no_grad():
            expected = net(seq, torch.arange(seq.shape[1])[None], mask[None, None])[0, -1]
        assert torch.allclose(seen["logits"][row, length + j], expected, atol=1e-5)


def test_train_step_reduces_loss_on_a_fixed_batch():
    recipe = train.Recipe(**{**SMALL, "lr": 3e-3, "warmup": 1})
    tok, ids, net = small_network(recipe)
    optimizer = train.make_optimizer(net, recipe)
    batch = train.collate(train.step_examples(recipe, 0), tok, ids, recipe.gen_length)
    assert batch.response.sum(1).eq(recipe.gen_length).all()
    noisy, masked, weight = train.noise(batch, ids["mask"], torch.Generator().manual_seed(0), 1e-3, ratio=0.5)
    assert torch.allclose(weight, torch.full_like(weight, 1 / (0.5 * recipe.gen_length)))
    assert (noisy[batch.response & ~masked] == batch.ids[batch.response & ~masked]).all()
    assert (noisy[~batch.response] == batch.ids[~batch.response]).all() and (noisy[masked] == ids["mask"]).all()
    losses = []
    for _ in range(5):
        loss, _ = train.diffusion_loss(net, batch, noisy, masked, weight)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < losses[0]


def test_block_masks_look_like_semi_autoregressive_decoding():
    recipe = train.Recipe(**SMALL)
    tok, ids, _ = small_network(recipe)
    batch = train.collate(train.step_examples(recipe, 0), tok, ids, recipe.gen_length)
    generator = torch.Generator().manual_seed(1)
    _, masked, weight = train.noise(batch, ids["mask"], generator, 1e-3, ratio=0.5)
    noisy, blocked, new_weight = train.block_masks(batch, masked, weight, generator, 8, 1.0, ids["mask"])
    seen_blocks = set()
    for row in range(batch.ids.shape[0]):
        region = blocked[row][batch.response[row]].view(-1, 8)  # [blocks, 8]
        partly = [k for k in range(region.shape[0]) if not (region[k].all() or not region[k].any())]
        current = partly[0] if partly else int(region.any(1).float().argmax())
        assert not region[:current].any() and region[current + 1:].all()  # clean before, masked after
        seen_blocks.add(current)
        assert new_weight[row] == pytest.approx(1 / max(1, int(region.sum())))
    assert len(seen_blocks) > 1
    assert (noisy[blocked] == ids["mask"]).all() and (noisy[~blocked] == batch.ids[~blocked]).all()
    _, kept, kept_weight = train.block_masks(batch, masked, weight, generator, 8, 0.0, ids["mask"])
    assert torch.equal(kept, masked) and torch.equal(kept_weight, weight)


def test_training_resumes_exactly_and_exports_a_loadable_checkpoint(tmp_path):
    recipe = train.Recipe(**SMALL)
    straight = train.run(recipe, tmp_path / "straight", progress=False)
    paused = train.run(recipe, tmp_path / "resumed", progress=False, stop_at=3)
    assert (tmp_path / "resumed" / train.STATE_FILE).exists()
    # a paused (or running) run's state exports to the same checkpoint the run wrote at that step
    exported = train.export_state(paused / train.STATE_FILE, tmp_path / "exported")
    probe = torch.tensor([[3, 4, 5, 6]])
    assert torch.equal(dllm.load(exported, device="cpu").logits(probe), dllm.load(paused, device="cpu").logits(probe))
    with pytest.raises(FileExistsError, match="already holds a checkpoint"):
        train.export_state(paused / train.STATE_FILE, exported)
    with pytest.raises(FileNotFoundError, match="no state file"):
        train.export_state(tmp_path / "missing.pt", tmp_path / "elsewhere")
    train.main(["--out", str(tmp_path / "resumed"), "--resume", "--no-progress", "--threads",
                str(torch.get_num_threads())] + [f"--{k.replace('_', '-')}={v}" for k, v in SMALL.items()])
    assert not (tmp_path / "resumed" / train.STATE_FILE).exists()
    a = dllm.load(straight, device="cpu")
    b = dllm.load(tmp_path / "resumed", device="cpu")
    prompt = a.encode("Sort: 3 1 2\n")
    ids = torch.tensor([prompt + [a.mask_id] * 8])
    assert torch.equal(a.logits(ids), b.logits(ids))
    assert a.mask_id == b.mask_id and a.decode(prompt) == "Sort: 3 1 2\n"
