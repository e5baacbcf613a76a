"""dllm.grammars: the grammar feasibility oracle (soundness vs brute force, witnesses, backends, schemas)."""
from __future__ import annotations

import itertools
import json
import random
import re
import warnings
from functools import lru_cache
from pathlib import Path

import jsonschema
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dllm.grammars import Oracle, TokenTable, load_grammar, numba_available, schema_to_lark, token_bytes
from dllm.grammars.grammar import Grammar
from dllm.grammars.oracle import PREFIX_STEP

from conftest import GOLDENS

ROOT = Path(__file__).resolve().parents[1]
TINY_TOKENIZER = ROOT / "dllm" / "tiny" / "checkpoint" / "tokenizer.json"
BACKENDS = ["python"] + (["numba"] if numba_available() else [])

# a toy byte tokenizer: id 0 = mask, 1 = EOS, 2 + b = the byte b
MASK, EOS = 0, 1
BYTE_TABLE = [None, None] + [bytes([b]) for b in range(256)]


def cells_of(text: str) -> list[int]:
    """'_' = masked cell, '$' = EOS, other characters = one committed byte each."""
    return [MASK if c == "_" else EOS if c == "$" else 2 + ord(c) for c in text]


def byte_oracle(grammar="json", backend="python", **kw) -> Oracle:
    return Oracle(grammar, token_table=BYTE_TABLE, mask_id=MASK, eos_ids=[EOS], backend=backend, **kw)


@pytest.fixture(scope="module")
def tiny_tok():
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(TINY_TOKENIZER))


# ---------------------------------------------------------------------------------------------- front end
def test_terminal_dfa_matches_re():
    g = load_grammar("json")
    string = next(t for t in g.terminals if t.name == "STRING")
    number = next(t for t in g.terminals if t.name == "NUMBER")
    for s in ['""', '"a b"', '"\\n"', '"\\u00e9"', '"x', '"\\x"', 'a', '"é"']:
        assert string.accepts(s.encode()) == bool(re.fullmatch(r'"([^"\\\x00-\x1f]|\\(["\\/bfnrt]|u[0-9a-fA-F]{4}))*"', s)), s
    for s in ["0", "-0", "12", "012", "1.5e3", "1.", "-", "3E+2"]:
        assert number.accepts(s.encode()) == bool(re.fullmatch(r"-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?", s)), s
    # closure R_T of the start contains every live state
    assert set(number.closure[0]) == set(range(number.n_states))


def test_grammar_syntax_error_has_line_and_column():
    with pytest.raises(ValueError, match=r"line 2, column \d+") as e:
        load_grammar('start: "a"\nfoo: ( "b"\n')
    assert "\n" not in str(e.value)


def test_grammar_errors_one_line():
    for bad, pat in [("start: a\n", "not defined"),
                     ("start: x\nx: \"(\" x\n", "accepts no string"),
                     ("start: A\nA: /é+/\n", "non-ASCII"),
                     ("start: A\nA: /a*/\n", "zero-width")]:
        with pytest.raises(ValueError, match=pat) as e:
            load_grammar(bad)
        assert "\n" not in str(e.value)
    with pytest.raises(ValueError, match="not found"):
        load_grammar("/nonexistent/x.lark")


def test_user_lark_file(tmp_path):
    p = tmp_path / "pairs.lark"
    p.write_text('start: "(" start ")" | "x"\n')
    o = byte_oracle(str(p))
    assert o.feasible(cells_of("((_))")) and not o.feasible(cells_of("(x))"))
    assert o.witness(cells_of("((___")) == b"((x))"
    assert o.witness(cells_of("((_")) is None  # one cell cannot hold "x))"
    assert byte_oracle(str(p), exact_cells=0).witness(cells_of("((_")) == b"((x))"  # length-blind gaps


def test_non_ascii_literal_is_utf8():
    o = byte_oracle('start: "é" "!"\n')
    assert o.feasible([2 + b for b in "é!".encode()]) and not o.feasible(cells_of("\xe9!"))


# ---------------------------------------------------------------------------------------------- NFA cases
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("canvas,ok", [
    ("nu_ll", True), ("nul_ull", False), ('"hiii_you_ello"', True), ("123_456_789_", True),
    ("[1, tru_", True), ("tr_e$", True), ("[1,_]$", True), ("[1,2]3", False), ("_$", True), ("$", False),
    ("1$_2", False),          # text after the end of output
    ("{_:_}", True), ('"_', True), ('"', False), ("  _  ", True), ("nul$", False),   # EOS-adjacent partial
    ("_ _ _", True), ("[1 2]", False), ('{"a": 1}', True), ('{"a" 1}', False),
])
def test_json_canvas_cases_length_blind(backend, canvas, ok):
    """exact_cells=0: every gap stands for any byte string (the reference's semantics)."""
    check_case(byte_oracle(backend=backend, exact_cells=0), canvas, ok)


def check_case(o: Oracle, canvas: str, ok: bool) -> bytes | None:
    """feasible() and witness() agree with ``ok``; a witness is JSON and keeps the canvas's text in order."""
    assert o.feasible(cells_of(canvas)) is ok
    w = o.witness(cells_of(canvas))
    assert (w is not None) is ok
    if ok:
        json.loads(w)
        assert consistent(w, canvas)
    return w


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("canvas,ok", [
    ("nu_ll", False), ("nu__", True), ("nu_", False), ("nu_$", False), ("nu__$_", True),
    ("[1, tru_", False), ("[1, tru__", True), ("[1, tru__$", True), ("[1,_]$", True),
    ("{_:_}", False), ("{___:_}", True), ('"hiii_you_ello"', True), ("_ _ _", True), ("_$", True),
    ("$", False), ("1$_2", False), ("[1,2]3", False), ("[__]", True), ("[_]", True),
    ("{_____:1}", True),      # a gap longer than exact_cells (4) stands for any byte string
    ("{_:1}", False), ('{"a":_"b":1}', False), ('{"a":__"b":1}', True), ('{"a":_____"b":1}', True),
])
def test_json_canvas_cases_exact_cells(backend, canvas, ok):
    """Default: a gap of at most 4 masks holds exactly that many tokens (fewer before an end of output)."""
    w = check_case(byte_oracle(backend=backend), canvas, ok)
    if ok:
        runs = [len(r) for r in re.findall("_+", canvas.split("$")[0])]
        if "$" not in canvas and not canvas.endswith("_") and max(runs, default=0) <= 4:
            assert len(w) == len(canvas), (canvas, w)  # one byte per cell: the witness fits the canvas


def test_open_end_option():
    closed, opened = byte_oracle(), byte_oracle(open_end=True)
    assert not closed.feasible(cells_of("[1,")) and opened.feasible(cells_of("[1,"))
    assert not opened.start(cells_of("[1]")).complete and closed.start(cells_of("[1]")).complete


def consistent(witness: bytes, canvas: str) -> bool:
    """The witness keeps every committed byte in order, with gaps in between (regex over bytes)."""
    end = canvas.find("$")
    canvas = canvas if end < 0 else canvas[:end]
    parts = re.split("_+", canvas)
    rx = b".*".join(re.escape(p.encode("latin-1")) for p in parts)
    return re.fullmatch(rx, witness, re.S) is not None


# ---------------------------------------------------------------------------------------------- brute force
TINY_GRAMMAR = r"""
start: expr
expr: atom | "(" expr* ")" | expr "+" expr
atom: NAME | NUM
NAME: /[ab]+/
NUM: /[0-9]+/
%ignore " "
"""
POOL = ["(", ")", "a", "b", "1", "+", " ", "ab", "(a", "1)", ")+", "+(", "a1"]
FILL_ALPHABET = ["(", ")", "a", "1", "+", " "]


@lru_cache(maxsize=None)
def tiny_grammar() -> Grammar:
    return load_grammar(TINY_GRAMMAR)


@lru_cache(maxsize=None)
def tiny_parses(text: str) -> bool:
    return tiny_grammar().parses(text)


def pool_oracle(backend: str, exact_cells: int = 0, count_gaps: bool = False) -> Oracle:
    table = [None, None] + [p.encode() for p in POOL]
    return Oracle(TINY_GRAMMAR, token_table=table, mask_id=0, eos_ids=[1], backend=backend, exact_cells=exact_cells,
                  count_gaps=count_gaps)


def brute_force(cells: list[int], max_fill: int) -> bool:
    """Some filling of the gaps with <= max_fill characters each parses (canvas semantics as the oracle)."""
    end = cells.index(1) if 1 in cells else len(cells)
    if any(c >= 2 for c in cells[end + 1:]):
        return False
    words: list[str | None] = []
    for c in cells[:end]:
        if c == 0:
            if not words or words[-1] is not None:
                words.append(None)
        else:
            if words and words[-1] is not None:
                words[-1] += POOL[c - 2]
            else:
                words.append(POOL[c - 2])
    n_gaps = sum(w is None for w in words)
    fills = [""] + ["".join(p) for k in range(1, max_fill + 1) for p in itertools.product(FILL_ALPHABET, repeat=k)]
    for combo in itertools.product(fills, repeat=n_gaps):
        it = iter(combo)
        text = "".join(next(it) if w is None else w for w in words)
        if tiny_parses(text):
            return True
    return False


canvas_strategy = st.lists(st.integers(0, len(POOL) + 1), min_size=1, max_size=4).filter(
    lambda cs: sum(1 for i, c in enumerate(cs) if c == 0 and (i == 0 or cs[i - 1] != 0)) <= 2)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
@given(canvas_strategy)
def test_oracle_agrees_with_brute_force(cells):
    results = {}
    for backend in BACKENDS:
        o = pool_oracle(backend)
        results[backend] = (o.feasible(cells), o.witness(cells))
    feasible, witness = results["python"]
    assert len(set(results.values())) == 1, results  # numba and pure Python: same answer, same witness
    n_gaps = sum(1 for i, c in enumerate(cells) if c == 0 and (i == 0 or cells[i - 1] != 0))
    if brute_force(cells, max_fill=2 if n_gaps == 2 else 3):
        assert feasible, cells
    if feasible:
        assert witness is not None and tiny_parses(witness.decode()), (cells, witness)
    else:
        assert witness is None


def brute_force_tokens(cells: list[int]) -> bool:
    """Some assignment of one pool token or EOS to every masked cell gives an output that parses (the
    output ends at the first EOS; committed text after it is invalid) - the exact canvas semantics."""
    holes = [i for i, c in enumerate(cells) if c == 0]
    for combo in itertools.product(range(1, len(POOL) + 2), repeat=len(holes)):
        filled = list(cells)
        for i, c in zip(holes, combo):
            filled[i] = c
        end = filled.index(1) if 1 in filled else len(filled)
        if any(c >= 2 for c in filled[end + 1:]):
            continue
        if tiny_parses("".join(POOL[c - 2] for c in filled[:end])):
            return True
    return False


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.integers(0, len(POOL) + 1), min_size=1, max_size=5).filter(lambda cs: cs.count(0) <= 4))
def test_exact_cells_oracle_equals_token_brute_force(cells):
    """Every gap unrolled (exact_cells >= the canvas): feasible <=> some token filling parses, both ways;
    numba and pure Python agree on the answer and the witness; every witness parses."""
    results = {}
    for backend in BACKENDS:
        o = pool_oracle(backend, exact_cells=5)
        results[backend] = (o.feasible(cells), o.witness(cells))
    feasible, witness = results["python"]
    assert len(set(results.values())) == 1, results
    assert feasible == brute_force_tokens(cells), cells
    if feasible:
        assert witness is not None and tiny_parses(witness.decode()), (cells, witness)
    else:
        assert witness is None


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(0, len(POOL) + 1), min_size=1, max_size=6), st.randoms(use_true_random=False),
       st.sampled_from([0, 2, 4]))
def test_refinements_of_infeasible_stay_infeasible(cells, rnd, exact_cells):
    o = pool_oracle("python", exact_cells)
    if o.feasible(cells):
        return
    for i, c in enumerate(cells):
        if c == 0:
            cells[i] = rnd.randint(1, len(POOL) + 1)
            assert not o.feasible(cells)


# ---------------------------------------------------------------------------------------------- tokenizers
def test_token_bytes_byte_level(tiny_tok):
    table = token_bytes(tiny_tok)
    text = '{"name": "Zoë", "n": [1, 2]}\n'
    ids = tiny_tok.encode(text).ids
    assert b"".join(table[i] for i in ids) == text.encode()
    assert table[tiny_tok.token_to_id("<|endoftext|>")] is None
    assert table[tiny_tok.token_to_id("<|mdm_mask|>")] is None


def test_token_bytes_transformers_wrapper(tiny_tok):
    from transformers import PreTrainedTokenizerFast

    hf = PreTrainedTokenizerFast(tokenizer_file=str(TINY_TOKENIZER))
    assert token_bytes(hf) == token_bytes(tiny_tok)


def test_token_bytes_raw_vocab_goldens():
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(GOLDENS / "llada" / "tokenizer.json"))
    table = token_bytes(tok)
    text = '{"a": [1, 2]}'
    assert b"".join(table[i] for i in tok.encode(text).ids) == text.encode()
    assert table[0] is None and table[tok.token_to_id(" ")] == b" "


def test_token_bytes_sentencepiece():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    vocab = {"<unk>": 0, "▁a": 1, "b": 2, "<0x41>": 3, "<0xC3>": 4, "▁": 5}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>", byte_fallback=True))
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()])
    table = token_bytes(tok)
    assert table[1:] == [b" a", b"b", b"A", b"\xc3", b" "]


# ---------------------------------------------------------------------------------------------- JSON + tiny tokenizer
def tiny_oracle(tok, backend="python", grammar="json"):
    return Oracle(grammar, tok, mask_id=tok.token_to_id("<|mdm_mask|>"), eos_ids=[tok.token_to_id("<|endoftext|>")],
                  backend=backend)


DOCS = ['{"item": "box", "weight": 12, "color": "black", "material": "copper"}',
        '{"name": "Ben", "maker": {"brand": "Lumen", "city": "Austin"}, "sizes": [7, 19, 50], "ok": true, "x": null}',
        '[1.5, -2e3, "a\\"b", {}, []]']


@pytest.mark.parametrize("doc", DOCS)
def test_masked_valid_json_stays_feasible(tiny_tok, doc):
    rng = random.Random(doc)
    mask, eos = tiny_tok.token_to_id("<|mdm_mask|>"), tiny_tok.token_to_id("<|endoftext|>")
    ids = tiny_tok.encode(doc).ids + [eos] * 3
    o = tiny_oracle(tiny_tok, BACKENDS[-1])
    assert o.start(ids).complete
    for _ in range(8):
        cells = [t if rng.random() < 0.5 else mask for t in ids]
        assert o.feasible(cells)
        w = o.witness(cells)
        json.loads(w)
    # a token that breaks the syntax is rejected
    broken = list(ids)
    broken[0] = tiny_tok.token_to_id("}")
    assert not o.feasible(broken)


def _decoding_canvas(rng, ids, mask, eos, exact_cells):
    """A canvas as the grammar filter's frontier leaves them: the start of a document with masked runs of at most
    ``exact_cells`` cells, then one masked tail (longer than the rest of the document), with or without EOS after."""
    cut = rng.randrange(1, len(ids))
    head, run = [], 0
    for t in ids[:cut]:
        masked = rng.random() < 0.4 and run < exact_cells
        head.append(mask if masked else t)
        run = run + 1 if masked else 0
    tail = [mask] * (len(ids) - cut + rng.randrange(0, 12))
    return head + tail + ([eos] * rng.randrange(0, 3))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("grammar", ["json"] + [0, 1])  # JSON, and two schemas (by index into SCHEMAS)
def test_completions_fill_every_masked_cell_and_parse(tiny_tok, backend, grammar):
    """``completion_tokens`` (the grammar filter's ``complete_after``) gives every masked cell a token, keeps every
    committed cell, and the filled canvas parses (and validates against the schema)."""
    mask, eos = tiny_tok.token_to_id("<|mdm_mask|>"), tiny_tok.token_to_id("<|endoftext|>")
    schema = None if grammar == "json" else SCHEMAS[grammar]
    docs = DOCS if schema is None else [json.dumps(v) for v in SCHEMA_VALUES[grammar]]
    o = tiny_oracle(tiny_tok, backend, "json" if schema is None else schema)
    rng = random.Random(grammar)
    made = 0
    for _ in range(12):
        ids = tiny_tok.encode(rng.choice(docs)).ids
        cells = _decoding_canvas(rng, ids, mask, eos, o.exact_cells)
        assert o.feasible(cells)
        plan = o.completion_tokens(o.encode(cells), eos)
        if plan is None:
            continue
        made += 1
        assert sorted(plan) == [i for i, c in enumerate(cells) if c == mask]
        filled = [plan.get(i, c) for i, c in enumerate(cells)]
        end = filled.index(eos) if eos in filled else len(filled)
        assert all(t == eos for t in filled[end:])
        text = b"".join(o.tokens.table[t] for t in filled[:end]).decode()
        value = json.loads(text)
        if schema is not None:
            jsonschema.validate(value, schema)
    # the tail has room for the rest of the document, so every canvas has one (when the witness's text is too long
    # for the tail, it may write optional properties, a witness cut to fit is taken: ``Oracle._fitted``)
    assert made == 12, made


def test_backends_agree_on_json_canvases(tiny_tok):
    assert len(BACKENDS) == 2, "numba is a declared dependency: both backends must be available"
    rng = random.Random(0)
    mask, eos = tiny_tok.token_to_id("<|mdm_mask|>"), tiny_tok.token_to_id("<|endoftext|>")
    py, nb = tiny_oracle(tiny_tok, "python"), tiny_oracle(tiny_tok, "numba")
    vocab = [i for i in range(len(py.tokens)) if not py.excluded[i]]
    for k in range(12):
        ids = tiny_tok.encode(DOCS[k % len(DOCS)]).ids + [eos] * 4
        cells = [t if rng.random() < 0.6 else mask for t in ids]
        if k % 2:
            cells[rng.randrange(len(cells))] = rng.choice(vocab)
        assert py.feasible(cells) == nb.feasible(cells)
        assert py.witness(cells) == nb.witness(cells)


def test_state_protocol(tiny_tok):
    o = tiny_oracle(tiny_tok, BACKENDS[-1])
    mask, eos = o.mask_id, sorted(o.eos_ids)[0]
    enc = lambda s: tiny_tok.encode(s).ids
    lb, rb, one, comma = enc("{")[0], enc("}")[0], enc("1")[0], enc(",")[0]
    state = o.start(length=6)
    assert state.feasible() and not state.complete
    assert not state.allows(0, rb) and state.banned(0) == [rb] and state.rejections == 1
    assert not state.allows(0, rb) and state.rejections == 1          # remembered, not re-counted
    assert not state.allows(0, mask) and not state.allows(0, tiny_tok.token_to_id("<|startoftext|>"))
    # several tokens in one parallel step, checked one at a time in confidence order:
    # "1" at 0 and "{" at 2 are each fine alone but not together ("1" starts a number at top level)
    assert state.allows(2, lb)
    assert state.filter([(0, one), (2, lb), (2, one)]) == [True, False, True]
    assert state.allows(3, eos)                                       # "1?1" may end right there
    assert state.commit(5, eos, check=True)
    assert not state.allows(5, one)                                   # already committed
    assert not state.commit(3, comma, check=True)                     # "1?1," cannot end before the EOS
    w = state.witness()
    assert isinstance(json.loads(w), int) and w.startswith(b"1")
    state.commit(1, one)
    state.commit(3, eos)
    state.commit(4, eos)
    assert state.complete and bytes(state.witness()) == b"111"
    assert rb != lb and state.checks > 0


def test_eos_rules():
    o = byte_oracle()
    s = o.start(cells_of("1__"))
    assert s.allows(1, EOS)
    s.commit(2, 2 + ord("2"))
    assert not s.allows(1, EOS)                       # EOS before committed text: never (no overwrite)
    s2 = o.start(cells_of("1_$_"))
    assert not s2.allows(3, 2 + ord("2")) and s2.allows(3, EOS) and s2.allows(1, 2 + ord("3"))


# ---------------------------------------------------------------------------------------------- JSON Schema
SCHEMAS = [
    {"type": "object", "properties": {"name": {"type": "string"}, "age": {"type": "integer", "minimum": 0, "maximum": 120},
                                      "tags": {"type": "array", "items": {"enum": ["a", "b", 3]}, "maxItems": 3},
                                      "ok": {"type": ["boolean", "null"]}},
     "required": ["name", "age"], "additionalProperties": False},
    {"type": "object", "properties": {"maker": {"type": "object", "properties": {"brand": {"type": "string", "maxLength": 5},
                                                                                "city": {"const": "Austin"}},
                                                "required": ["city"]},
                                      "sizes": {"type": "array", "items": {"type": "integer", "exclusiveMinimum": -5},
                                                "minItems": 1}},
     "title": "t", "description": "d"},
    {"type": "array", "items": {"$ref": "#/$defs/node"}, "minItems": 2, "maxItems": 4,
     "$defs": {"node": {"anyOf": [{"type": "number"}, {"type": "object", "properties": {"kids": {"type": "array", "items": {"$ref": "#/$defs/node"}}}}]}}},
    {"type": "object", "additionalProperties": {"type": "integer", "maximum": -3}},
    {},
]
SCHEMA_VALUES = [[{"name": "Ann", "age": 31, "tags": ["a", 3], "ok": True}, {"name": "Bo", "age": 7}],
                 [{"maker": {"brand": "Lumen", "city": "Austin"}, "sizes": [7, 19, 50]}, {"maker": {"city": "Austin"}, "sizes": [0]}]]


def sample(g: Grammar, rng: random.Random, max_depth: int = 6) -> str:
    """A random string of the grammar: random derivation (shortest choices once deep), random lexemes."""
    by_head: dict[int, list[tuple]] = {}
    for r in g.rules:
        by_head.setdefault(r[1], []).append(r)
    short = g.shortest_terminals

    def lexeme(t) -> bytes:
        term, s, out = g.terminals[t], 0, bytearray()
        for _ in range(40):
            if term.accept[s] and (rng.random() < 0.3 or len(out) > 12):
                return bytes(out)
            nxt = [b for b in range(32, 127) if term.table[s, b] >= 0]
            if not nxt:
                break
            b = rng.choice(nxt)
            out.append(b)
            s = int(term.table[s, b])
        return bytes(out) if term.accept[s] else bytes(out) + (term.shortest(s) or b"")

    out: list[bytes] = []
    stack = [(g.start_nt, 0)]
    while stack:
        a, d = stack.pop()
        if d > max_depth:
            out.extend(g.terminals[t].shortest(0) for t in short(a))
            out.append(b" ")
            continue
        kind, _, x, y = rng.choice(by_head[a])
        if kind == 1:
            out.append(lexeme(x))
            out.append(b" ")
        elif kind == 2:
            stack.append((x, d + 1))
        elif kind == 3:
            stack.append((y, d + 1))
            stack.append((x, d + 1))
    return b"".join(out).decode()


@pytest.mark.parametrize("schema", SCHEMAS, ids=range(len(SCHEMAS)))
def test_schema_grammar_outputs_validate(schema):
    g = load_grammar(schema)
    rng = random.Random(1)
    for _ in range(25):
        text = sample(g, rng)
        assert g.parses(text), text
        jsonschema.validate(json.loads(text), schema)
    for cells in ([MASK] * 40, [MASK] * 3):   # a long (any-text) gap, and three exact one-byte cells
        w = byte_oracle(schema).witness(cells)
        if w is not None or len(cells) == 40:
            jsonschema.validate(json.loads(w), schema)


def test_schema_rejects_invalid_instances():
    g = load_grammar(SCHEMAS[0])
    for bad in ['{"name": "x"}', '{"name": "x", "age": 121}', '{"name": "x", "age": -1}', '{"age": 1, "name": "x"}',
                '{"name": "x", "age": 1, "tags": ["a", "a", "a", "a"]}', '{"name": 1, "age": 1}']:
        assert not g.parses(bad), bad
    assert g.parses('{"name": "x", "age": 120, "tags": [3, "b"], "ok": null}')
    g2 = load_grammar(SCHEMAS[1])
    assert not g2.parses('{"maker": {"brand": "toolong"}}') and g2.parses('{"sizes": [-4, 0]}')


@pytest.mark.parametrize("schema,word", [
    ({"type": "string", "pattern": "a+"}, "pattern"),
    ({"type": "string", "format": "email"}, "format"),
    ({"oneOf": [{"type": "string"}]}, "oneOf"),
    ({"type": "number", "minimum": 0}, "minimum"),
    ({"type": "object", "properties": {"a": {"type": "array", "uniqueItems": True}}}, "uniqueItems"),
    ({"type": "date"}, "date"),
])
def test_schema_unsupported_keyword(schema, word):
    with pytest.raises(ValueError, match=word) as e:
        schema_to_lark(schema)
    assert "\n" not in str(e.value)


def test_schema_empty_language_errors():
    for schema in [{"enum": []}, {"type": "integer", "minimum": 5, "maximum": 4},
                   {"type": "array", "minItems": 3, "maxItems": 2}]:
        with pytest.raises(ValueError):
            load_grammar(schema)


def test_template_with_impossible_text_is_infeasible_up_front(tiny_tok):
    o = tiny_oracle(tiny_tok, BACKENDS[-1], grammar=SCHEMAS[0])
    mask = o.mask_id
    good = tiny_tok.encode('{"name": ').ids + [mask] * 4 + tiny_tok.encode(', "age": ').ids + [mask] * 2
    bad = tiny_tok.encode('{"age": ').ids + [mask] * 6
    assert o.start(good).feasible() and not o.start(bad).feasible()
    jsonschema.validate(json.loads(o.start(good).witness()), SCHEMAS[0])


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.integers(0, len(POOL) + 1), min_size=2, max_size=9), st.sampled_from([1, 2, 4]))
def test_focused_checks_and_split_witnesses_are_sound(cells, exact_cells):
    """A check that unrolls only the gaps next to one cell (``near``) never says "no" where unrolling every
    short gap says "yes"; a witness cut at a masked cell (``split_at``) gives that cell a token whose commit
    keeps the canvas feasible; numba and pure Python agree on both, with unrolled cells jumped over by the
    oracle's cell table and the committed prefix taken from a snapshot (the defaults), or everything swept byte by
    byte."""
    answers = {}
    for backend, by_cell, prefix in [(b, *flags) for b in BACKENDS for flags in ((True, True), (False, False))]:
        o = pool_oracle(backend, exact_cells=exact_cells)
        o.use_cell_table, o.use_prefix = by_cell, prefix
        code = o.encode(cells)
        full = o.status_cells(code)
        got = []
        for i, c in enumerate(cells):
            near = o.status_cells(code, near=i)
            assert near >= full or (near, full) == (0, 2), (cells, i)
            if c == 0 and full == 1:
                chosen = o.witness_tokens(code, split_at=i)
                assert chosen is not None, (cells, i)
                token = chosen.get(i, 1)  # no token: the completion ends before the cell, so it is EOS
                assert o.witness_tokens(code, split_at=i, only=i).get(i, 1) == token  # spelling that cell alone
                filled = list(cells)
                filled[i] = token
                assert o.feasible(filled), (cells, i, token)
                got.append((i, token))
            got.append(near)
        answers[backend, by_cell] = (full, got)
        assert (not prefix or len(cells) < PREFIX_STEP or o._snaps or cells[:PREFIX_STEP].count(0)
                or 1 in cells[:PREFIX_STEP]), cells  # a committed prefix was swept once and taken up again
    for by_cell in (True, False):  # the backends agree on everything, the witness's token included
        assert len({repr(a) for (_, flag), a in answers.items() if flag == by_cell}) == 1
    # with and without the table: the same answers (a witness may take another derivation)
    assert len({repr((full, [g for g in got if not isinstance(g, tuple)])) for full, got in answers.values()}) == 1


# ---------------------------------------------------------------------------------------------- counted long gaps
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.integers(0, len(POOL) + 1), min_size=1, max_size=6).filter(lambda cs: 1 <= cs.count(0) <= 4))
def test_counted_gaps_between_exact_and_loose(cells):
    """``count_gaps`` with every gap long (``exact_cells=0``): never "no" where some token filling parses, never
    "yes" where the length-blind check says "no"; where the only run of masks ends the output (so it may hold
    at most as many tokens as it has cells, exactly what the count bounds) it equals token brute force. numba
    and pure Python agree, with the run's inner lexemes from the oracle's template or swept in full."""
    answers = {}
    for backend in BACKENDS:
        answers[backend] = pool_oracle(backend, count_gaps=True).warm().feasible(cells)  # template + entry table
        answers[backend + " template"] = pool_oracle(backend, count_gaps=True).feasible(cells)  # no table yet
        swept = pool_oracle(backend, count_gaps=True)
        swept.use_template = False  # every counted run swept in full instead of the per-oracle template
        answers[backend + " swept"] = swept.feasible(cells)
    counted = answers["python"]
    assert len(set(answers.values())) == 1, answers
    truth = brute_force_tokens(cells)
    loose = pool_oracle("python").feasible(cells)
    assert (not truth or counted) and (not counted or loose), (cells, truth, counted, loose)
    end = cells.index(1) if 1 in cells else len(cells)
    masks = [i for i in range(end) if cells[i] == 0]
    if masks and masks == list(range(masks[0], end)) and all(c == 1 or c == 0 for c in cells[end:]):
        assert counted == truth, (cells, truth, counted)


def test_pure_python_counted_search_wraps_its_bit_words_without_warning(tiny_tok):
    """The counted search's chart rows are int64 bit words; a node on a word's top bit makes ``bits & -bits`` wrap
    around, which numba does silently and numpy scalars report as an overflow. This tiny-tokenizer canvas (decoded
    JSON with short holes, then a long masked run, as the frontier keeps it) reaches that bit; the pure-Python
    backend answers as numba does and warns of nothing."""
    mask, eos = tiny_tok.token_to_id("<|mdm_mask|>"), tiny_tok.token_to_id("<|endoftext|>")
    head = [-1, 303, 19, 261, 260, -1, 269, -1, 332, 20, 261, 365, -1, 260, -1, 21, -1, 224, -1, 47, 88, -1, -1, 19,
            261, -1, 280, 332, 19, 261, 260, -1, 269]
    cells = [mask if t == -1 else t for t in head] + [mask] * (128 - len(head))
    answers = {}
    for backend in BACKENDS:
        oracle = Oracle("json", tiny_tok, mask_id=mask, eos_ids=[eos], backend=backend, count_gaps=True)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            answers[backend] = oracle.feasible(cells)
    assert set(answers.values()) == {True}, answers


def test_the_entry_table_gives_the_answers_of_the_full_sweep():
    """A counted run takes what lexemes entering it do there from the oracle's entry table instead of sweeping the
    run: on canvases cut anywhere in real JSON answers (also inside strings, so a lexeme is still in progress where
    the run starts) and followed by 3-9 masks, the answer equals sweeping every run in full, and, where that run
    ends the output, unrolling it token by token."""
    import dllm
    from dllm.tiny.tasks import load_test_set

    model = dllm.load("tiny-cot")
    rng = random.Random(7)
    kw = dict(mask_id=model.mask_id, eos_ids=model.eos_ids)
    table = Oracle("json", model.tokenizer, count_gaps=True, exact_cells=2, **kw).warm()
    swept = Oracle("json", model.tokenizer, count_gaps=True, exact_cells=2, **kw)
    swept.use_template = False
    unrolled = Oracle("json", model.tokenizer, exact_cells=10, **kw)
    checked = 0
    for example in load_test_set("cot_json")[:3]:
        ids = model.tokenizer.encode(example.target, add_special_tokens=False)
        for cut in range(1, len(ids)):
            n = rng.randint(3, 7)
            tail = ids[cut + n:cut + n + rng.randint(0, 2)] if rng.random() < 0.5 else []
            cells = ids[:cut] + [model.mask_id] * n + tail + [model.eos_ids[0]]
            got = table.feasible(cells)
            assert got == swept.feasible(cells), model.tokenizer.decode(ids[:cut])
            if not tail:
                assert got == unrolled.feasible(cells), model.tokenizer.decode(ids[:cut])
            checked += 1
    assert checked > 40


def test_the_cell_table_gives_the_answers_of_the_byte_sweep():
    """Unrolled cells take what lexemes do inside one cell from the oracle's cell table instead of a byte-by-byte
    sweep: on real JSON answers with random short holes (also inside strings), a cut-off tail of masks and now and
    then a wrong token, whole-canvas and focused checks give the byte sweep's answers, and a witness built with the table
    is in the grammar."""
    import dllm
    from dllm.tiny.tasks import load_test_set

    model = dllm.load("tiny-cot")
    rng = random.Random(11)
    kw = dict(mask_id=model.mask_id, eos_ids=model.eos_ids, count_gaps=True)
    table = Oracle("json", model.tokenizer, **kw).warm()
    swept = Oracle("json", model.tokenizer, **kw)
    swept.use_cell_table = False
    outcomes = set()
    for example in load_test_set("cot_json")[:4]:
        ids = model.tokenizer.encode(example.target, add_special_tokens=False) + [model.eos_ids[0]] * 2
        for _ in range(25):
            cut = rng.randrange(1, len(ids))
            cells = [model.mask_id if j >= cut or rng.random() < 0.3 else t for j, t in enumerate(ids)]
            if rng.random() < 0.4:
                cells[rng.randrange(len(cells))] = rng.randrange(model.vocab_size)
            code = table.encode(cells)
            got = table.status_cells(code)
            assert got == swept.status_cells(code), cells
            near = rng.randrange(len(cells))
            assert table.status_cells(code, near=near) == swept.status_cells(code, near=near), (cells, near)
            if got == 1:  # the search may take another first derivation, but the grammar takes it (bytes as
                assert table.grammar.parses(table.witness_cells(code).decode("latin-1")), cells  # characters)
            outcomes.add(got)
    assert outcomes == {0, 1}


def test_prefix_snapshots_give_the_answers_of_a_whole_sweep():
    """A check goes on from the kept sweep of its committed prefix (``Oracle._prefix``): over a decode-like sequence of
    canvases (the committed prefix grows, holes and a wrong token after it, JSON and a schema) whole-canvas checks,
    focused checks and witnesses agree with an oracle that sweeps every canvas from its start."""
    import dllm
    from dllm.tiny.tasks import load_test_set

    model = dllm.load("tiny-cot")
    rng = random.Random(5)
    kw = dict(mask_id=model.mask_id, eos_ids=model.eos_ids, count_gaps=True)
    resumed = 0
    for n, example in enumerate(load_test_set("cot_json")[:4]):
        grammar = "json" if n % 2 else {"type": "object", "required": list(json.loads(example.target)),
                                        "properties": {k: {} for k in json.loads(example.target)}}
        snaps, whole = Oracle(grammar, model.tokenizer, **kw), Oracle(grammar, model.tokenizer, **kw)
        whole.use_prefix = False
        ids = model.tokenizer.encode(example.target, add_special_tokens=False) + [model.eos_ids[0]] * 2
        for cut in range(0, len(ids), 2):
            cells = [t if j < cut or (j < cut + 6 and rng.random() < 0.5) else model.mask_id for j, t in enumerate(ids)]
            if rng.random() < 0.3:
                cells[rng.randrange(len(cells))] = rng.randrange(model.vocab_size)
            code = snaps.encode(cells)
            near = min(cut, len(cells) - 1)
            assert snaps.status_cells(code) == whole.status_cells(code), cells
            assert snaps.status_cells(code, near=near) == whole.status_cells(code, near=near), cells
            assert (snaps.witness_cells(code) is None) == (whole.witness_cells(code) is None), cells
        resumed += len(snaps._snaps)
    assert resumed > 10


def test_checks_that_run_out_of_room_are_retried_with_more():
    """The kernels' working arrays start small here (2 entries, 1 mark, a counted-search queue of 1): every
    build and counted search runs out, says so, and is retried with more room, and the answers are those of an oracle
    with the default room."""
    import dllm
    from dllm.grammars.oracle import _Scratch
    from dllm.tiny.tasks import load_test_set

    model = dllm.load("tiny-cot")
    rng = random.Random(2)
    kw = dict(mask_id=model.mask_id, eos_ids=model.eos_ids, count_gaps=True)
    roomy, cramped = Oracle("json", model.tokenizer, **kw), Oracle("json", model.tokenizer, **kw)
    cramped.own_scratch = _Scratch(room=2, marks=1)
    cramped._queue_room = 1
    ids = model.tokenizer.encode(load_test_set("cot_json")[0].target, add_special_tokens=False)
    answers = set()
    for cut in range(2, len(ids), 3):
        cells = [t if j < cut and rng.random() < 0.8 else model.mask_id for j, t in enumerate(ids)] + [model.mask_id] * 6
        if rng.random() < 0.4:  # a closing bracket first: a dead canvas
            cells[0] = model.tokenizer.encode("]", add_special_tokens=False)[0]
        code = roomy.encode(cells)
        got = cramped.status_cells(code)
        assert got == roomy.status_cells(code), cells
        answers.add(got)
    assert cramped._scratch().work[0].shape[0] > 2 and cramped._queue_room > 1 and answers == {0, 1}


@pytest.mark.parametrize("backend", BACKENDS)
def test_counted_gaps_catch_a_gap_too_short_for_the_required_keys(tiny_tok, backend):
    """Five masks cannot hold ``, "city": "x", "size": 1`` (more than five tokens): the length-blind check
    accepts the canvas, the counted one refuses it as the fully unrolled one does, and both accept the same
    canvas with room for the keys."""
    schema = {"type": "object", "required": ["name", "city", "size"],
              "properties": {"name": {"type": "string"}, "city": {"type": "string"}, "size": {"type": "integer"}}}
    mask, eos = tiny_tok.token_to_id("<|mdm_mask|>"), tiny_tok.token_to_id("<|endoftext|>")
    kw = dict(mask_id=mask, eos_ids=[eos], backend=backend)
    loose, counted = Oracle(schema, tiny_tok, **kw), Oracle(schema, tiny_tok, count_gaps=True, **kw)
    unrolled = Oracle(schema, tiny_tok, exact_cells=32, **kw)
    head, tail = tiny_tok.encode('{"name": "Rome"').ids, tiny_tok.encode("}").ids + [eos]
    short, roomy = head + [mask] * 5 + tail, head + [mask] * 24 + tail
    assert loose.feasible(short) and not counted.feasible(short) and not unrolled.feasible(short)
    assert counted.feasible(roomy) and unrolled.feasible(roomy)
    two = head + [mask] * 5 + tiny_tok.encode(', "size": 1').ids + [mask] * 5 + tail  # each fits, not together
    assert counted.feasible(two) == unrolled.feasible(two)
