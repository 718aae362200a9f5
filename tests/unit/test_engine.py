"""The path engine against independent references, on tiny random models of every supported family."""

import pytest
import torch

from drllm_core.engine import PathEngine, SharedPrefix
from tests.conftest import reordered_model_logits, tiny_model

L = 6


def _batch(lengths, vocab=256, seed=0, left=False):
    """Random token rows of the given lengths, padded with 0 on the right (or left)."""
    g = torch.Generator().manual_seed(seed)
    width = max(lengths)
    ids = torch.zeros(len(lengths), width, dtype=torch.long)
    mask = torch.zeros(len(lengths), width, dtype=torch.long)
    for row, n in enumerate(lengths):
        span = slice(width - n, width) if left else slice(0, n)
        ids[row, span] = torch.randint(0, vocab, (n,), generator=g)
        mask[row, span] = 1
    return ids, mask


MIXED = [
    (1, 1, 1, 1, 1, 1),
    (1, 0, 0, 1, 2, 1),
    (2, 1, 0, 1, 0, 2),
    (0, 1, 1, 2, 2, 0),
]


def test_default_path_reproduces_model_exactly_on_a_padded_batch(family_model):
    ids, mask = _batch([9, 4, 7])
    engine = PathEngine(family_model)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    expected = family_model(input_ids=ids, attention_mask=mask, position_ids=positions).logits
    got = engine.forward(ids, attention_mask=mask)
    real = mask.bool()
    assert torch.equal(got[real], expected[real])


def test_paths_with_skips_and_repeats_match_a_reordered_model(family_model):
    ids, _ = _batch([8])
    engine = PathEngine(family_model)
    for counts in MIXED:
        got = engine.forward(ids, torch.tensor([counts]))
        torch.testing.assert_close(
            got, reordered_model_logits(family_model, counts, ids), rtol=1e-5, atol=1e-5
        )


def test_mixed_paths_in_one_batch_equal_each_row_alone(family_model):
    lengths = [8, 5, 8, 6]
    ids, mask = _batch(lengths)
    engine = PathEngine(family_model)
    batched = engine.forward(ids, torch.tensor(MIXED), attention_mask=mask)
    for row, n in enumerate(lengths):
        alone = engine.forward(ids[row : row + 1, :n], torch.tensor([MIXED[row]]))
        torch.testing.assert_close(batched[row, :n], alone[0], rtol=1e-5, atol=1e-5)


def test_prefix_reuse_continues_several_suffixes_exactly(family_model):
    ids, mask = _batch([7, 5])
    engine = PathEngine(family_model)
    prefix = engine.run(engine.embed(ids, mask), torch.tensor([[1, 0, 2, 1, 1, 1]] * 2), stop=3)
    suffixes = torch.tensor([[1, 0, 2, 1, 0, 1], [1, 0, 2, 2, 1, 0], [1, 0, 2, 0, 1, 2]])
    for row in range(2):
        expanded = prefix.select([row] * 3)
        got = engine.logits(engine.run(expanded, suffixes))
        full = engine.forward(ids[[row] * 3], suffixes, attention_mask=mask[[row] * 3])
        assert torch.equal(got, full)
    assert prefix.layer == 3


def test_a_trie_of_paths_runs_each_shared_prefix_once_and_equals_each_path_alone(family_model):
    ids, mask = _batch([7, 5])
    engine = PathEngine(family_model)
    base = engine.embed(ids, mask)
    entering = engine.run(base, engine.default_paths(2), stop=2)  # both rows resume at layer 2
    items = [
        (0, (1, 1, 0, 1, 1, 1)),
        (0, (1, 1, 0, 2, 1, 1)),  # shares layers 2 (skipped) with the path above
        (1, (1, 1, 0, 1, 1, 1)),  # the first path on another input: nothing shared
        (0, (1, 1, 1, 1, 0, 1)),
        (0, (1, 1, 0, 1, 1, 1)),  # a duplicate: run once
    ]
    resume = [(2, entering.hidden[row : row + 1]) for row, _ in items]
    remembered = []
    before = engine.counter.rows
    final = engine.run_trie(base, items, resume, remember=lambda *key: remembered.append(key[:2]), max_rows=2)
    # one row per distinct (input, prefix) and layer call: layer 2 runs for the last distinct path only;
    # layer 3 for the 4 distinct paths, once more for the repeat; layer 4 for all but the one skipping it
    assert engine.counter.rows - before == 1 + (4 + 1) + 3 + 4
    assert len(remembered) == len(set(remembered)) == 3 + 4 * 3  # every new prefix state, once
    logits = engine.logits(final)
    for item, (row, counts) in enumerate(items):
        alone = engine.forward(ids[row : row + 1], torch.tensor([counts]), attention_mask=mask[row : row + 1])
        torch.testing.assert_close(logits[item], alone[0], rtol=1e-5, atol=1e-5)


def test_logits_only_at_requested_positions(family_model):
    ids, _ = _batch([6, 6])
    engine = PathEngine(family_model)
    full = engine.forward(ids)
    positions = torch.tensor([[5], [2]])
    got = engine.forward(ids, positions=positions)
    assert got.shape == (2, 1, full.shape[-1])
    # equal up to matmul rounding: lm_head runs on 2 rows here instead of 12
    torch.testing.assert_close(got[:, 0], torch.stack([full[0, 5], full[1, 2]]), rtol=1e-6, atol=1e-6)


def test_packed_continuations_equal_separate_rows(family_model):
    """Two continuations sharing one context in a single row give the logits of two separate rows."""
    engine = PathEngine(family_model)
    context, first, second = [5, 9, 14, 30, 22, 7, 8], [40, 41, 42], [50, 51]
    packed = torch.tensor([context + first + second])
    segments = torch.tensor([[0] * 7 + [1] * 3 + [2] * 2])
    positions = torch.tensor([[*list(range(7)), 7, 8, 9, 7, 8]])
    counts = torch.tensor([[1, 2, 0, 1, 1, 1]])
    got = engine.forward(packed, counts, position_ids=positions, segment_ids=segments)
    one = engine.forward(torch.tensor([context + first]), counts)
    two = engine.forward(torch.tensor([context + second]), counts)
    torch.testing.assert_close(got[0, :10], one[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got[0, 10:], two[0, 7:], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("family", ["llama", "gemma3", "mistral"])
def test_cached_generation_matches_recomputation_with_mixed_paths(family):
    """Each generated step's logits equal a cache-free forward over the whole sequence. Gemma3 and Mistral
    have sliding windows (5 and 7 tokens) shorter than the sequence, and layers repeat: a repeated layer's
    second pass must attend to its own keys and values."""
    model = tiny_model(family)
    engine = PathEngine(model)
    ids, mask = _batch([9, 4, 6], left=True)
    counts = torch.tensor(MIXED[1:])
    out = engine.generate(ids, counts, mask, max_new_tokens=8, keep_logits=True)
    sequence = torch.cat([ids, out.tokens], dim=1)
    full_mask = torch.cat([mask, torch.ones_like(out.tokens)], dim=1)
    recomputed = engine.forward(sequence, counts, attention_mask=full_mask)
    width = ids.shape[1]
    for step, logits in enumerate(out.step_logits):
        torch.testing.assert_close(logits, recomputed[:, width - 1 + step], rtol=1e-4, atol=1e-4)


def test_schedule_lists_each_layer_call_with_the_rows_that_run_it():
    engine = PathEngine(tiny_model("llama"))
    schedule = engine.schedule(torch.tensor(MIXED), start=0, stop=4)
    calls = [(c.layer, c.repeat_pass, None if c.rows is None else c.rows.tolist()) for c in schedule.calls]
    assert calls == [
        (0, 0, [0, 1, 2]),
        (0, 1, [2]),
        (1, 0, [0, 2, 3]),
        (2, 0, [0, 3]),
        (3, 0, None),  # every row runs it
        (3, 1, [3]),
    ]
    state = engine.embed(_batch([3, 3, 3, 3])[0])
    with pytest.raises(ValueError, match=r"4 rows and layers 0\.\.3, the run for 4 rows and layers 0\.\.5"):
        engine.run(state, schedule)
    with pytest.raises(ValueError, match=r"for 4 rows .* the run for 3 rows"):
        engine.run(state.select([0, 1, 2]), schedule, stop=4)


def test_generation_with_a_decider_equals_generation_on_the_paths_it_chose(family_model):
    """Routers decide on the prompt's pass; every generated token then follows the same per-row paths."""
    engine = PathEngine(family_model)
    ids, mask = _batch([9, 4, 6], left=True)

    def decide(layer, hidden):  # a per-row choice that depends on the hidden state, like a router
        return (hidden[:, -1, layer].float() * 1000).long() % 3

    routed = engine.generate(ids, None, mask, max_new_tokens=5, keep_logits=True, decide=decide)
    fixed = engine.generate(ids, routed.counts, mask, max_new_tokens=5, keep_logits=True)
    assert len(set(map(tuple, routed.counts.tolist()))) > 1
    assert torch.equal(routed.tokens, fixed.tokens)
    for ours, theirs in zip(routed.step_logits, fixed.step_logits, strict=True):
        torch.testing.assert_close(ours, theirs, rtol=0, atol=0)

    with pytest.raises(ValueError, match=r"0\.\.2, got \[3, 3, 3\] at layer 0"):
        engine.generate(ids, None, mask, max_new_tokens=2, decide=lambda layer, hidden: torch.full((3,), 3))


def test_generation_on_the_default_path_equals_transformers_generate():
    model = tiny_model("llama")
    ids, mask = _batch([7, 4], left=True)
    ours = PathEngine(model).generate(ids, None, mask, max_new_tokens=6).tokens
    theirs = model.generate(
        input_ids=ids, attention_mask=mask, max_new_tokens=6, do_sample=False, pad_token_id=0
    )
    assert torch.equal(ours, theirs[:, ids.shape[1] :])


def test_generation_stops_rows_at_eos_and_pads_them():
    model = tiny_model("llama")
    engine = PathEngine(model)
    ids, mask = _batch([5, 5], left=True)
    free = engine.generate(ids, None, mask, max_new_tokens=5)
    stop_token = int(free.tokens[0, 1])
    out = engine.generate(ids, None, mask, max_new_tokens=5, eos_token_ids=[stop_token], pad_token_id=0)
    assert out.lengths[0] == 2
    assert out.tokens[0, 2:].eq(0).all()


def test_block_counter_counts_rows_and_tokens():
    model = tiny_model("llama")
    engine = PathEngine(model)
    ids, _ = _batch([4, 4])
    engine.forward(ids, torch.tensor([[1, 0, 1, 1, 2, 2], [1, 1, 1, 1, 1, 1]]))
    assert engine.counter.rows == 7 + 6
    assert engine.counter.tokens == (7 + 6) * 4


def test_bad_paths_are_refused_with_the_shape():
    engine = PathEngine(tiny_model("llama"))
    ids, _ = _batch([4])
    with pytest.raises(ValueError, match="one path of 6 layer counts per row"):
        engine.forward(ids, torch.tensor([[1, 1, 1]]))
    with pytest.raises(ValueError, match=r"0\.\.2"):
        engine.forward(ids, torch.tensor([[1, 3, 1, 1, 1, 1]]))
    with pytest.raises(ValueError, match=r"for 2 rows .* the run for 1 rows"):
        engine.forward(ids, torch.ones(2, 6, dtype=torch.long))
    with pytest.raises(ValueError, match=r"for 2 rows .* the run for 1 rows"):
        engine.generate(ids, torch.ones(2, 6, dtype=torch.long), max_new_tokens=2)


def test_inputs_after_a_shared_prefix_equal_whole_rows(family_model):
    """Packed rows that start with the same tokens: run after the prefix's cached keys and values (skips,
    repeats, packed choices), they give the logits of the whole rows, and routers read the same states."""
    engine = PathEngine(family_model)
    head = [5, 9, 14, 30, 22]
    rows = [[*head, 7, 8, 40, 41, 42, 50, 51], [*head, 3, 4, 6, 60, 61, 70, 71]]
    ids = torch.tensor(rows)
    segments = torch.tensor([[0] * 7 + [1] * 3 + [2] * 2] * 2)
    positions = torch.tensor([[*range(10), 7, 8]] * 2)
    counts = torch.tensor([[1, 0, 2, 1, 1, 1], [2, 1, 1, 0, 1, 2]])
    read = {}

    def reader(name):
        def decide(layer, hidden):
            read.setdefault(name, []).append(hidden)
            return counts[:, layer]

        return decide

    whole = engine.embed(ids, position_ids=positions, segment_ids=segments)
    expected = engine.logits(engine.run(whole, counts.clone(), decide=reader("whole")))
    prefix = engine.shared_prefix(head)
    after = engine.embed(ids, position_ids=positions, segment_ids=segments, prefix=prefix)
    got = engine.logits(engine.run(after, counts.clone(), decide=reader("after")))
    torch.testing.assert_close(got, expected[:, len(head) :], rtol=1e-5, atol=1e-5)
    for whole_hidden, after_hidden in zip(read["whole"], read["after"], strict=True):
        torch.testing.assert_close(after_hidden, whole_hidden, rtol=1e-5, atol=1e-5)
    trie = engine.run_trie(
        after, [(0, tuple(counts[0].tolist())), (1, (1,) * 6)], [(0, after.hidden[:1])] * 2
    )
    torch.testing.assert_close(engine.logits(trie)[0], got[0], rtol=1e-5, atol=1e-5)
    assert engine.shared_prefix(head) is prefix  # one cache per engine and prefix
    with pytest.raises(ValueError, match="start with its tokens"):
        engine.embed(torch.tensor([[1, 2, 3, 4, 5, 6, 7]]), prefix=prefix)


def test_a_shared_prefix_evicts_its_oldest_states_and_recomputes_them_alike():
    engine = PathEngine(tiny_model("llama"))
    head, rows = [5, 9, 14, 30], torch.tensor([[5, 9, 14, 30, 7, 8, 40], [5, 9, 14, 30, 3, 4, 6]])
    generator = torch.Generator().manual_seed(0)
    counts = torch.randint(0, 3, (12, L), generator=generator)
    results = []
    for cache_mb in (256, 0):  # 0: the fewest entries it keeps, 4 per layer, fewer than the trails here
        prefix = SharedPrefix(engine, head, cache_mb)
        for chunk in counts.split(2):
            results.append(engine.logits(engine.run(engine.embed(rows, prefix=prefix), chunk)))
        assert len(prefix._hidden) <= prefix.max_entries and len(prefix._keys_values) <= prefix.max_entries
    assert len(prefix._hidden) == prefix.max_entries  # it evicted
    for kept, recomputed in zip(results[:6], results[6:], strict=True):
        torch.testing.assert_close(recomputed, kept, rtol=1e-6, atol=1e-6)
