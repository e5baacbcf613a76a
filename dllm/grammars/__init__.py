"""Grammar constraints for masked diffusion decoding: a feasibility oracle over canvases.

A diffusion canvas is a row of cells, each masked, a committed token or EOS, filled in *any order*.
Committing a token is sound iff the canvas stays **completable**: some filling of the masked cells gives an
output in the grammar's language. This package answers that question for context-free grammars, following
Mündler et al. (arXiv 2508.10111) and ``shared/specs/cfg_constrained.md``: the known text + the masked gaps
form a regular language over the grammar's terminals, and a bottom-up CFG ∩ regular emptiness search with
early exit decides it. Unlike the reference, short gaps count tokens (below), so the answer is exact for
canvases whose gaps are all short and a sound over-approximation otherwise.
It is independent of the decoding engine; the engine plugs it in as a filter.

API for the engine
------------------
::

    from dllm.grammars import Oracle
    oracle = Oracle(grammar="json", tokenizer=model.tokenizer,           # or "path.lark", lark text,
                    mask_id=model.mask_id, eos_ids=model.eos_ids)         #    a JSON Schema dict
    state = oracle.start(row_tokens)      # the row's output region: token ids, mask_id where masked
    state.feasible()                      # False -> the template/canvas can never be completed (fail early)
    # each step, for the tokens the sampler wants to commit in this row, in confidence order:
    if state.allows(pos, tok):            # checks the canvas *with every earlier commit* (exact=True: every
                                          #   short gap unrolled; default: only the gaps next to pos)
        state.commit(pos, tok)
    else:                                 # (pos, tok) is now on the persistent rejection list
        ...                               # ban it (-inf) and re-select
    accepted = state.filter([(pos, tok), ...])   # the same loop: check + commit one at a time
    state.banned(pos)                     # token ids rejected at pos (apply as -inf before selecting)
    state.rejections, state.checks, state.cap_hits   # counters (max_rejections policy is the engine's)
    state.complete                        # no mask before the end of output and the text parses
    state.witness() -> bytes | None       # one completion of the current canvas (fallback output)
    oracle.witness_tokens(cells, split_at=pos)   # {cell: token} of a completion, pos included
    oracle.feasible(tokens) / oracle.witness(tokens)   # stateless versions
    Grammar = dllm.grammars.load_grammar(spec); Grammar.parses(text)  # final validation with lark

``allows`` is a pure query (the canvas changes only in ``commit``), so several tokens proposed in one
parallel step are checked one at a time, each against the canvas including the earlier accepted ones —
two tokens can be fine alone and impossible together. The kernels release the GIL (numba ``nogil``), so
rows can be checked from a thread pool. One state per row; states are independent.

Semantics and choices
---------------------
* Cells: the mask id = masked; an id in ``eos_ids`` = end of output; special tokens (BOS, pad, role markers,
  the mask id itself) are never allowed; everything else contributes its exact bytes (``tokens.py``).
* End of output: the first EOS. Every cell after it must be EOS or masked (committing text after an EOS,
  or an EOS before committed text, is rejected: nothing is ever overwritten, so a rejection stays valid for
  the whole generation). ``open_end=False`` (default): the region end is also an end of output, so a
  canvas whose masks are all filled is a complete output; ``open_end=True`` gives the reference's
  behaviour (no EOS = the output may continue beyond the region).
* Gaps (maximal runs of masks): a gap of at most ``exact_cells`` masks (default 4) holds **exactly** that
  many tokens (at most that many before an end of output, where the rest may be EOS): it is unrolled cell
  by cell through the vocabulary's automaton (``cells.py``), so ``"Rome`` + one mask + ``color"`` is
  rejected when no single token spells ``", "``. A longer gap stands for any byte string, possibly empty
  (the reference's semantics; ``exact_cells=0`` gives it everywhere): a canvas needing more tokens than
  such a gap holds still reads as feasible until the gap shrinks. ``witness_tokens()`` gives the token of
  a completion for every unrolled cell. A check may unroll only the gaps next to one cell
  (``status_cells(near=)``, ``allows(exact=False)``): still sound, much cheaper on canvases with many
  short gaps; the engine's filter confirms each row's step with one check that unrolls them all.
* ``count_gaps=True`` (off by default: slower): a whole-canvas check also bounds the longer gaps' tokens. Each
  one alone must hold what the grammar needs there in at most as many tokens as it has masks (one looped copy
  of the vocabulary automaton whose token ends cost one, and a lightest-derivation search with that budget),
  and all of them together within their total. Exact when a canvas has one long gap and it ends the output
  (the grammar filter's ``frontier`` keeps every canvas so); otherwise still an over-approximation (two
  long gaps can each fit alone and not together).
* Lexing is nondeterministic (every split of the text into terminals is considered), i.e. lark's
  ``lexer='dynamic_complete'``; for JSON, whose values are always separated by punctuation, this is the
  same as ordinary JSON. Validate final outputs with ``Grammar.parses`` (that lexer) or ``json.loads``.
* Hot loop in numba where it imports, else an exact pure-Python mirror (``backend=`` argument or
  ``DLLM_GRAMMAR_BACKEND=numba|python|auto``); both return identical answers and witnesses.

Modules: ``grammar.py`` (Lark front end, terminal byte DFAs via interegular, normal form), ``tokens.py``
(token id -> bytes), ``cells.py`` (the vocabulary as a DFA over byte classes), ``kernels.py`` (canvas -> terminal NFA, emptiness search), ``oracle.py`` (Oracle,
OracleState, witness), ``schema.py`` (JSON Schema -> Lark), ``json.lark`` (the default grammar).
"""
from .grammar import Grammar, TerminalDFA, load_grammar
from .kernels import numba_available
from .oracle import Oracle, OracleState
from .schema import schema_to_lark
from .tokens import TokenTable, token_bytes

__all__ = ["Grammar", "TerminalDFA", "load_grammar", "Oracle", "OracleState", "schema_to_lark",
           "TokenTable", "token_bytes", "numba_available"]
