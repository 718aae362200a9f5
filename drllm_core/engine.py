"""The path engine: run a frozen transformers causal LM along any layer path, per row of a batch.

It calls the model's own modules (embeddings, decoder layers, rotary embeddings, the mask helpers of
`transformers.masking_utils`, final norm, lm_head) in the order a path asks for, instead of `model(...)`:

* mixed paths: per layer, the block runs only on the rows that execute it (twice for rows that repeat it);
* prefix reuse: `embed` and `run(..., start, stop)` return a `HiddenState` that can be continued with
  several different suffixes (`HiddenState.select` duplicates rows), exactly;
* packed choices: `segment_ids` let several continuations share one question context in a single row;
* a shared token prefix: tokens every input starts with (a chat template's system turn) run once per path
  prefix (`SharedPrefix`), and every input attends to their cached keys and values;
* cached generation: `generate` keeps one KV slot per (layer, pass), so the second pass of a repeated
  layer attends to its own keys and values, never the first pass's, and works out the layer calls of the
  batch's paths (a `Schedule`) once, since a path is fixed for every generated token;
* accounting: `BlockCounter` counts every block evaluation so callers can report compute.

Only the attention implementations whose masks are plain tensors (sdpa, eager) are supported.
"""

from __future__ import annotations

import inspect
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor
from transformers import PreTrainedModel
from transformers.cache_utils import DynamicLayer
from transformers.masking_utils import and_masks, create_causal_mask, create_sliding_window_causal_mask

from drllm_core.paths import LayerPath

FULL, SLIDING = "full_attention", "sliding_attention"
PathsLike = Sequence[LayerPath] | Tensor  # one LayerPath per row, or a (B, L) tensor of counts
Decide = Callable[[int, Tensor], Tensor]  # (layer, hidden entering it (B, T, D)) -> counts (B,)


@dataclass
class BlockCounter:
    """Running totals of block evaluations: `rows` counts one per row and block call (the search's cost
    unit), `tokens` multiplies by the tokens processed (the compute actually spent). A shared prefix's block
    call serves every row after it, now and later: its tokens count, not a row."""

    rows: int = 0
    tokens: int = 0

    def add(self, rows: int, tokens_per_row: int, shared: bool = False) -> None:
        if not shared:
            self.rows += rows
        self.tokens += rows * tokens_per_row


@dataclass
class HiddenState:
    """The residual stream at a layer boundary, with everything the remaining layers need."""

    hidden: Tensor  # (B, T, D)
    position_ids: Tensor  # (B, T)
    masks: dict[str, Tensor | None]  # per attention type: (B, 1, T, K) bool, or None for plain causal
    position_embeddings: dict[str, tuple[Tensor, Tensor]]  # per attention type: cos, sin (B, T, head_dim)
    layer: int = 0  # next layer to run
    prefix: SharedPrefix | None = None  # tokens before `hidden`'s, shared by every row (their keys cached)
    trails: list[tuple[int, ...]] | None = None  # with a prefix: each row's layer counts so far

    @property
    def batch_size(self) -> int:
        return self.hidden.shape[0]

    @property
    def prefix_length(self) -> int:
        return self.prefix.length if self.prefix is not None else 0

    def select(self, rows: Tensor | Sequence[int]) -> HiddenState:
        """A state made of the given rows, in that order; a row may appear several times (prefix reuse)."""
        rows = torch.as_tensor(rows, device=self.hidden.device, dtype=torch.long)
        return HiddenState(
            hidden=self.hidden.index_select(0, rows),
            position_ids=self.position_ids.index_select(0, rows),
            masks={kind: _rows(mask, rows) for kind, mask in self.masks.items()},
            position_embeddings={
                kind: (_rows(cos, rows), _rows(sin, rows))
                for kind, (cos, sin) in self.position_embeddings.items()
            },
            layer=self.layer,
            prefix=self.prefix,
            trails=None if self.trails is None else [self.trails[row] for row in rows.tolist()],
        )


class PathKVCache:
    """KV cache with one slot per (layer, pass): slot 2*l holds the first pass of layer l, slot 2*l+1 the
    second pass of a repeated layer. A slot stores only the rows that run it, and those rows are fixed
    for a whole generation because a path is decided once per input.

    It answers the two size questions transformers' mask helpers ask (`get_query_offset`,
    `get_mask_sizes`) from its own token count, so masks stay right when no row runs a given layer."""

    def __init__(self, num_layers: int):
        self.slots = [DynamicLayer() for _ in range(2 * num_layers)]
        self.seen_tokens = 0

    def view(self, layer: int, repeat_pass: int) -> _SlotView:
        return _SlotView(self.slots[2 * layer + repeat_pass])

    def get_query_offset(self, layer_idx: int = 0) -> int:
        return self.seen_tokens

    def get_mask_sizes(self, query_length: int, layer_idx: int = 0) -> tuple[int, int]:
        return self.seen_tokens + query_length, 0

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.seen_tokens


class _SlotView:
    """What a decoder layer sees as `past_key_values`: attention calls `update(k, v, layer_idx)`, and the
    view stores into its own slot whatever `layer_idx` the module was built with."""

    def __init__(self, slot: DynamicLayer):
        self.slot = slot

    def update(self, key_states: Tensor, value_states: Tensor, *args, **kwargs) -> tuple[Tensor, Tensor]:
        return self.slot.update(key_states, value_states)


class SharedPrefix:
    """Tokens every input of a run starts with, such as a chat template's system turn. Their states under a
    path depend only on the path's layers so far, never on what follows, so each (path prefix, pass) runs
    once on them and every input's tokens attend to the cached keys and values: on the default model's chat
    prompts that is a third of every question's tokens not run again.

    Built once per engine and token sequence (`PathEngine.shared_prefix`); states are computed on first use
    and kept up to about `cache_mb` (least recently used first out; an evicted one is recomputed)."""

    def __init__(self, engine: PathEngine, ids: Sequence[int], cache_mb: float = 256):
        self.engine = engine
        self.ids = tuple(ids)
        self.length = len(self.ids)
        self._base = engine.embed(torch.tensor([self.ids]))
        state_bytes = self._base.hidden.numel() * self._base.hidden.element_size()
        # per trail: a state, and keys and values no larger than it
        self.max_entries = max(4 * engine.num_layers, int(cache_mb * 2**20) // (3 * state_bytes))
        self._hidden: OrderedDict[tuple[int, ...], Tensor] = OrderedDict()  # trail -> state after it
        self._keys_values: OrderedDict[tuple[tuple[int, ...], int], tuple[Tensor, Tensor]] = OrderedDict()

    def starts(self, input_ids: Tensor) -> bool:
        """Whether every row of input_ids (B, T) starts with these tokens and has tokens after them."""
        head = torch.tensor(self.ids, device=input_ids.device)
        return input_ids.shape[1] > self.length and bool((input_ids[:, : self.length] == head).all())

    def hidden(self, trail: tuple[int, ...]) -> Tensor:
        """(1, P, D): the prefix's state after the layers of `trail` (counts of layers 0..len-1)."""
        if not trail:
            return self._base.hidden
        parent, count = trail[:-1], trail[-1]
        if count == 0:
            return self.hidden(parent)
        if trail not in self._hidden:
            self._run(parent, count - 1)
        return _touch(self._hidden, trail)

    def keys_values(self, trail: tuple[int, ...], repeat_pass: int) -> tuple[Tensor, Tensor]:
        """Keys and values of layer len(trail), pass `repeat_pass`, on the prefix's state after `trail`."""
        if (trail, repeat_pass) not in self._keys_values:
            self._run(trail, repeat_pass)
        return _touch(self._keys_values, (trail, repeat_pass))

    def _run(self, trail: tuple[int, ...], repeat_pass: int) -> None:
        """One pass of layer len(trail) on the prefix: its keys and values, and the state after it."""
        entering = self.hidden((*trail, 1)) if repeat_pass else self.hidden(trail)
        capture = _Capture()
        out = self.engine._run_call(LayerCall(len(trail), repeat_pass, None), entering, self._base, capture)
        _store(self._hidden, (*trail, repeat_pass + 1), out, self.max_entries)
        _store(self._keys_values, (trail, repeat_pass), capture.keys_values, self.max_entries)

    def prepend(self, trails: Sequence[tuple[int, ...]], hidden: Tensor) -> Tensor:
        """(B, P + T, D): each row's `hidden` (B, T, D) after the prefix's state under the row's trail."""
        return torch.cat([torch.cat([self.hidden(trail) for trail in trails]), hidden], dim=1)

    # transformers' mask helpers ask the "cache" these two sizes: the prefix is what was seen before
    def get_query_offset(self, layer_idx: int = 0) -> int:
        return self.length

    def get_mask_sizes(self, query_length: int, layer_idx: int = 0) -> tuple[int, int]:
        return self.length + query_length, 0


class _Capture:
    """`past_key_values` for a layer run on the prefix alone: keeps the keys and values it computes."""

    keys_values: tuple[Tensor, Tensor]

    def update(self, key_states: Tensor, value_states: Tensor, *args, **kwargs) -> tuple[Tensor, Tensor]:
        self.keys_values = (key_states, value_states)
        return key_states, value_states


class _PrefixView:
    """`past_key_values` for a layer call on inputs after a shared prefix: each row attends to the prefix's
    keys and values under its own trail, then to its own tokens."""

    def __init__(self, prefix: SharedPrefix, trails: Sequence[tuple[int, ...]], repeat_pass: int):
        self.prefix, self.trails, self.repeat_pass = prefix, trails, repeat_pass

    def update(self, key_states: Tensor, value_states: Tensor, *args, **kwargs) -> tuple[Tensor, Tensor]:
        cached = {t: self.prefix.keys_values(t, self.repeat_pass) for t in dict.fromkeys(self.trails)}
        keys = torch.cat([cached[t][0] for t in self.trails])
        values = torch.cat([cached[t][1] for t in self.trails])
        return torch.cat([keys, key_states], dim=-2), torch.cat([values, value_states], dim=-2)


def _touch(entries: OrderedDict, key):
    entries.move_to_end(key)
    return entries[key]


def _store(entries: OrderedDict, key, value, max_entries: int) -> None:
    entries[key] = value
    while len(entries) > max_entries:
        entries.popitem(last=False)


@dataclass(frozen=True, eq=False)
class LayerCall:
    """One call of a decoder layer: its first pass, or the second for rows that repeat it."""

    layer: int
    repeat_pass: int
    rows: Tensor | None  # the rows that run it, on the model's device; None: every row


@dataclass(frozen=True, eq=False)
class Schedule:
    """The layer calls of a batch's paths between two layers (`PathEngine.schedule`)."""

    calls: tuple[LayerCall, ...]
    batch: int
    start: int
    stop: int


@dataclass
class Generation:
    """Greedy generation results."""

    tokens: Tensor  # (B, N) generated token ids; after EOS a row holds pad tokens
    counts: Tensor  # (B, L) the path each row took
    step_logits: list[Tensor] = field(default_factory=list)  # per step (B, V), kept when asked for
    lengths: Tensor | None = None  # (B,) generated tokens per row, EOS included


class PathEngine:
    """Runs one frozen causal LM along layer paths. Build once per model; it holds no per-batch state (a
    shared prefix's cached states hold for every batch)."""

    def __init__(self, model: PreTrainedModel):
        self.model = model
        self.config = model.config
        self.decoder = model.model
        self.layers = self.decoder.layers
        self.num_layers = self.config.num_hidden_layers
        self.layer_types = self._layer_types()
        self.counter = BlockCounter()
        self._prefixes: dict[tuple[int, ...], SharedPrefix] = {}
        self._rotary_takes_type = (
            "layer_type" in inspect.signature(self.decoder.rotary_emb.forward).parameters
        )
        implementation = self.config._attn_implementation
        if implementation not in ("sdpa", "eager"):
            raise ValueError(
                f"the path engine needs attn_implementation sdpa or eager, not {implementation!r}"
            )

    def _layer_types(self) -> list[str]:
        types = getattr(self.config, "layer_types", None)
        if types is None:  # Mistral-style configs: one sliding window for all layers, when set
            kind = SLIDING if getattr(self.config, "sliding_window", None) else FULL
            types = [kind] * self.num_layers
        return list(types)

    @property
    def device(self) -> torch.device:
        return self.decoder.embed_tokens.weight.device

    def shared_prefix(self, ids: Sequence[int]) -> SharedPrefix:
        """The engine's one `SharedPrefix` for these tokens (its cached states serve every caller)."""
        ids = tuple(ids)
        if ids not in self._prefixes:
            self._prefixes[ids] = SharedPrefix(self, ids)
        return self._prefixes[ids]

    # ---- building a state ------------------------------------------------------------------------------------
    @torch.no_grad()
    def embed(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        position_ids: Tensor | None = None,
        segment_ids: Tensor | None = None,
        cache: PathKVCache | None = None,
        prefix: SharedPrefix | None = None,
    ) -> HiddenState:
        """Embed tokens and prepare masks and rotary embeddings; the state sits before layer 0.

        attention_mask: (B, K) with 1 for real tokens, K = cached + new tokens. Left or right padding.
        position_ids: default counts real tokens only (cumsum of the mask), so a padded row gets the
          positions it would have alone.
        segment_ids: (B, T) packed continuations: 0 marks the shared context, k > 0 continuation k; a token
          sees the context and earlier tokens of its own continuation only (positions must restart per
          continuation, as `pack_choices` builds them).
        prefix: every row starts with these tokens (and is given whole, as are the other arguments): the state
          holds the tokens after them, which attend to the prefix's cached keys and values.
        """
        input_ids = input_ids.to(self.device)
        batch, length = input_ids.shape
        if prefix is not None:
            if cache is not None or not prefix.starts(input_ids):
                raise ValueError("a shared prefix needs rows that start with its tokens, and no KV cache")
            if attention_mask is None:
                attention_mask = torch.ones_like(input_ids)
        if attention_mask is None and segment_ids is not None:
            # An explicit mask stops transformers from reading restarted positions as separate packed sequences.
            attention_mask = torch.ones_like(input_ids)
        if attention_mask is not None:
            attention_mask = attention_mask.to(self.device)
        if position_ids is None:
            position_ids = self._default_positions(attention_mask, batch, length, cache)
        position_ids = position_ids.to(self.device).expand(batch, -1)
        start = 0 if prefix is None else prefix.length  # the tokens that run: after the prefix
        hidden = self.decoder.embed_tokens(input_ids[:, start:])
        masks = self._masks(hidden, attention_mask, position_ids, segment_ids, cache or prefix)
        position_embeddings = {
            kind: self._rotary(hidden, position_ids[:, start:], kind)
            for kind in dict.fromkeys(self.layer_types)
        }
        state = HiddenState(hidden, position_ids[:, start:], masks, position_embeddings)
        if prefix is not None:
            state.prefix, state.trails = prefix, [()] * batch
        return state

    def _default_positions(self, attention_mask, batch, length, cache) -> Tensor:
        offset = cache.seen_tokens if cache is not None else 0
        if attention_mask is None:
            return torch.arange(offset, offset + length, device=self.device).unsqueeze(0).expand(batch, -1)
        positions = attention_mask.long().cumsum(-1) - 1
        return positions.clamp(min=0)[:, -length:]

    def _rotary(self, hidden: Tensor, position_ids: Tensor, kind: str) -> tuple[Tensor, Tensor]:
        if self._rotary_takes_type:
            return self.decoder.rotary_emb(hidden, position_ids, kind)
        return self.decoder.rotary_emb(hidden, position_ids)

    def _masks(self, hidden, attention_mask, position_ids, segment_ids, cache) -> dict[str, Tensor | None]:
        """Masks for `hidden`'s tokens (the last of position_ids' columns) over every key: the cache's or
        shared prefix's, then theirs. Mask rules index keys and queries by their position in the whole row."""
        common = {
            "config": self.config,
            "inputs_embeds": hidden,
            "attention_mask": attention_mask,
            "past_key_values": cache,
            "position_ids": position_ids[:, -hidden.shape[1] :],
            "layer_idx": 0,
        }
        masks = {}
        for kind in dict.fromkeys(self.layer_types):
            window = self.config.sliding_window if kind == SLIDING else None
            if segment_ids is not None:
                # Packed rows: index distance is not position distance, so the window is applied by position.
                rule = _same_segment_or_context(segment_ids.to(self.device))
                if window is not None:
                    rule = and_masks(rule, _within_window(position_ids, window))
                masks[kind] = create_causal_mask(**common, and_mask_function=rule)
            elif window is not None:
                masks[kind] = create_sliding_window_causal_mask(**common)
            else:
                masks[kind] = create_causal_mask(**common)
        return masks

    # ---- running layers ----------------------------------------------------------------------------------
    def schedule(self, counts: Tensor, start: int = 0, stop: int | None = None) -> Schedule:
        """The layer calls that (B, L) counts ask for between layers start and stop, in order. A generation
        builds it once, since a path is fixed for every generated token. Checked in plain Python: routing
        builds one per layer of every prefill, where a tensor operation costs more than the check."""
        stop = self.num_layers if stop is None else stop
        if counts.dim() != 2 or counts.shape[1] != self.num_layers:
            raise ValueError(
                f"expected one path of {self.num_layers} layer counts per row, "
                f"got counts of shape {tuple(counts.shape)}"
            )
        batch, calls = counts.shape[0], []
        for layer, column in enumerate(counts[:, start:stop].T.tolist(), start):  # column: each row's count
            if not all(0 <= count <= 2 for count in column):
                raise ValueError(f"layer counts must lie in 0..2, got {column} at layer {layer}")
            for repeat_pass in range(max(column, default=0)):
                active = [row for row, count in enumerate(column) if count > repeat_pass]
                rows = None if len(active) == batch else torch.tensor(active, device=self.device)
                calls.append(LayerCall(layer, repeat_pass, rows))
        return Schedule(tuple(calls), batch, start, stop)

    @torch.no_grad()
    def run(
        self,
        state: HiddenState,
        paths: PathsLike | Schedule,
        stop: int | None = None,
        cache: PathKVCache | None = None,
        decide: Decide | None = None,
    ) -> HiddenState:
        """Run layers state.layer .. stop-1 of each row's path; returns a new state (the input is untouched).
        `paths` may be a `Schedule` built for this state's rows and layers, which skips rebuilding it.

        With `decide`, each layer's counts are chosen just before the layer runs, from the hidden state entering
        it (routers): `decide(layer, hidden) -> (B,) counts` is written into `paths`, which must then be a
        (B, L) tensor the caller keeps to read the decisions. After a shared prefix, `decide` reads the
        prefix's tokens first (`readable`), as it would without one."""
        stop = self.num_layers if stop is None else stop
        hidden, counts = state.hidden, None
        if decide is not None:
            counts = paths
            for layer in range(state.layer, stop):
                reading = hidden
                if state.prefix is not None:
                    reading = state.prefix.prepend(_trails(state, counts, layer), hidden)
                paths[:, layer] = decide(layer, reading).to(paths.device)
                hidden = self._run_calls(self.schedule(paths, layer, layer + 1), hidden, state, cache, counts)
        else:
            if isinstance(paths, Schedule):
                if state.prefix is not None:
                    raise ValueError("a state after a shared prefix runs counts, not a prepared schedule")
                schedule = paths
            else:
                counts = self.counts_tensor(paths)
                schedule = self.schedule(counts, state.layer, stop)
            asked = (state.batch_size, state.layer, stop)
            if (schedule.batch, schedule.start, schedule.stop) != asked:
                raise ValueError(
                    f"the schedule is for {schedule.batch} rows and layers {schedule.start}..{schedule.stop - 1}, "
                    f"the run for {asked[0]} rows and layers {asked[1]}..{asked[2] - 1}"
                )
            hidden = self._run_calls(schedule, hidden, state, cache, counts)
        after = HiddenState(hidden, state.position_ids, state.masks, state.position_embeddings, stop)
        if state.prefix is not None:
            after.prefix, after.trails = state.prefix, _trails(state, counts, stop)
        return after

    def readable(self, state: HiddenState) -> Tensor:
        """(B, P + T, D): the state as routers read it, the shared prefix's tokens first (their state under each
        row's trail), so that pooling sees the whole prompt with or without a prefix."""
        if state.prefix is None:
            return state.hidden
        return state.prefix.prepend(state.trails, state.hidden)

    @torch.no_grad()
    def run_trie(
        self,
        base: HiddenState,
        items: Sequence[tuple[int, tuple[int, ...]]],
        resume: Sequence[tuple[int, Tensor]],
        remember: Callable[[int, tuple[int, ...], Tensor], None] | None = None,
        max_rows: int | None = None,
    ) -> HiddenState:
        """Several paths per input run as a trie of their prefixes: each layer runs once per distinct
        (input, prefix), so paths that part at layer l share every layer before it.

        items: (row of `base`, counts) per path; `base` gives each input's masks and positions.
        resume: per item, (start, hidden (1, T, D)): the state entering layer `start` along the item's own
          prefix of that length, which its caller already has (a cache, or the vanilla states).
        remember: called with (row, prefix, hidden) for every prefix state computed, to cache it.
        max_rows: rows per forward, at most (the trie's width can reach one row per item).
        Returns the state after the last layer, one row per item, in the order of `items`."""
        layers = self.num_layers
        level = {  # (row, prefix) -> the state after that prefix, for the prefixes the next layer grows
            (row, tuple(counts[:start])): hidden
            for (row, counts), (start, hidden) in zip(items, resume, strict=True)
        }
        for layer in range(min((start for start, _ in resume), default=layers), layers):
            grown = list(
                dict.fromkeys(
                    (row, tuple(counts[: layer + 1]))
                    for (row, counts), (start, _) in zip(items, resume, strict=True)
                    if start <= layer
                )
            )
            runs = [(row, prefix) for row, prefix in grown if prefix[layer] > 0]
            width = max_rows or len(runs) or 1
            for chunk in (runs[i : i + width] for i in range(0, len(runs), width)):
                counts = torch.zeros(len(chunk), layers, dtype=torch.long)
                counts[:, layer] = torch.tensor([prefix[layer] for _, prefix in chunk])
                state = base.select([row for row, _ in chunk])
                state.hidden = torch.cat([level[(row, prefix[:layer])] for row, prefix in chunk])
                state.layer = layer
                if base.prefix is not None:
                    state.trails = [prefix[:layer] for _, prefix in chunk]
                hidden = self.run(state, counts, stop=layer + 1).hidden
                level |= {key: hidden[i : i + 1] for i, key in enumerate(chunk)}
            level |= {
                (row, prefix): level[(row, prefix[:layer])] for row, prefix in grown if prefix[layer] == 0
            }
            if remember is not None:
                for row, prefix in grown:
                    remember(row, prefix, level[(row, prefix)])
            level = {key: hidden for key, hidden in level.items() if len(key[1]) > layer}
        final = base.select([row for row, _ in items])
        final.hidden = torch.cat([level[(row, tuple(counts))] for row, counts in items])
        final.layer = layers
        if base.prefix is not None:
            final.trails = [tuple(counts) for _, counts in items]
        return final

    def _run_calls(
        self, schedule: Schedule, hidden: Tensor, state: HiddenState, cache, counts: Tensor | None = None
    ) -> Tensor:
        for call in schedule.calls:
            if state.prefix is not None:  # each row's trail when it reaches this layer
                trails = _trails(state, counts, call.layer)
                if call.rows is not None:
                    trails = [trails[row] for row in call.rows.tolist()]
                past = _PrefixView(state.prefix, trails, call.repeat_pass)
            else:
                past = cache.view(call.layer, call.repeat_pass) if cache is not None else None
            hidden = self._run_call(call, hidden, state, past)
        return hidden

    def _run_call(self, call: LayerCall, hidden: Tensor, state: HiddenState, past) -> Tensor:
        """One pass of one decoder layer over its rows; the other rows pass through unchanged. `past` is
        what attention reads and writes as `past_key_values` (a KV slot, a prefix's keys, or None)."""
        kind, rows = self.layer_types[call.layer], call.rows
        cos, sin = state.position_embeddings[kind]
        out = self.layers[call.layer](
            _rows(hidden, rows),
            attention_mask=_rows(state.masks[kind], rows),
            position_embeddings=(_rows(cos, rows), _rows(sin, rows)),
            position_ids=_rows(state.position_ids, rows),
            past_key_values=past,
        )
        out = out[0] if isinstance(out, tuple) else out
        self.counter.add(out.shape[0], out.shape[1], shared=isinstance(past, _Capture))
        return out if rows is None else hidden.index_copy(0, rows, out)

    @torch.no_grad()
    def logits(self, state: HiddenState, positions: Tensor | None = None) -> Tensor:
        """Final norm and lm_head only where asked: positions (B, P) token indices -> (B, P, V) in the model's
        dtype, as model(...) returns them (upcast before a softmax). None means every position. Indices
        count the state's own tokens: a shared prefix's are not among them (`state.prefix_length`)."""
        hidden = self._final_hidden(state)
        if positions is not None:
            positions = positions.to(hidden.device)
            hidden = hidden.gather(1, positions.unsqueeze(-1).expand(-1, -1, hidden.shape[-1]))
        return self._head(hidden)

    @torch.no_grad()
    def logits_at(self, state: HiddenState, rows: Tensor, positions: Tensor) -> Tensor:
        """(K, V) logits at K (row, position) pairs: scoring asks for a few scattered positions per row, and
        on a large vocabulary (Gemma's 262k) the lm_head costs more than the decoder layers. Positions count
        the state's own tokens, as in `logits`."""
        hidden = self._final_hidden(state)
        return self._head(hidden[rows.to(hidden.device), positions.to(hidden.device)])

    def _final_hidden(self, state: HiddenState) -> Tensor:
        assert state.layer == self.num_layers, f"state is at layer {state.layer}, not after the last layer"
        return state.hidden

    def _head(self, hidden: Tensor) -> Tensor:
        logits = self.model.lm_head(self.decoder.norm(hidden))
        softcap = getattr(self.config, "final_logit_softcapping", None)
        if softcap is not None:
            logits = torch.tanh(logits / softcap) * softcap
        return logits

    @torch.no_grad()
    def forward(
        self,
        input_ids: Tensor,
        paths: PathsLike | None = None,
        attention_mask: Tensor | None = None,
        positions: Tensor | None = None,
        position_ids: Tensor | None = None,
        segment_ids: Tensor | None = None,
    ) -> Tensor:
        """Logits along the given paths (default path when None), at `positions` (None: all)."""
        state = self.embed(input_ids, attention_mask, position_ids, segment_ids)
        paths = self.default_paths(input_ids.shape[0]) if paths is None else paths
        return self.logits(self.run(state, paths), positions)

    # ---- generation --------------------------------------------------------------------------------------
    @torch.no_grad()
    def generate(
        self,
        input_ids: Tensor,
        paths: PathsLike | None = None,
        attention_mask: Tensor | None = None,
        max_new_tokens: int = 64,
        eos_token_ids: Sequence[int] = (),
        pad_token_id: int = 0,
        keep_logits: bool = False,
        decide: Decide | None = None,
    ) -> Generation:
        """Greedy decoding with a KV cache; each row keeps its path for every generated token.
        Prompts must be left-padded when their lengths differ. With `decide` (routers) the path is chosen
        layer by layer during the prompt's forward pass, then fixed for every generated token."""
        batch = input_ids.shape[0]
        if decide is not None:
            counts = torch.ones(batch, self.num_layers, dtype=torch.long)
        else:
            counts = self.counts_tensor(self.default_paths(batch) if paths is None else paths)
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        attention_mask = attention_mask.to(self.device)
        cache = PathKVCache(self.num_layers)
        eos = torch.tensor(list(eos_token_ids), device=self.device, dtype=torch.long)
        done = torch.zeros(batch, dtype=torch.bool, device=self.device)
        lengths = torch.zeros(batch, dtype=torch.long, device=self.device)
        tokens, step_logits, step_ids = [], [], input_ids.to(self.device)
        schedule = None if decide is not None else self.schedule(counts)
        for _ in range(max_new_tokens):
            state = self.embed(step_ids, attention_mask, cache=cache)
            if schedule is None:  # the prompt's pass with routers: they fix the path for every token
                state = self.run(state, counts, cache=cache, decide=decide)
                schedule = self.schedule(counts)
            else:
                state = self.run(state, schedule, cache=cache)
            cache.seen_tokens += step_ids.shape[1]
            logits = self.logits(state, torch.full((batch, 1), step_ids.shape[1] - 1))[:, 0]
            if keep_logits:
                step_logits.append(logits)
            next_ids = logits.argmax(-1).masked_fill(done, pad_token_id)
            tokens.append(next_ids)
            lengths += (~done).long()
            done |= torch.isin(next_ids, eos)
            if bool(done.all()):
                break
            step_ids = next_ids.unsqueeze(1)
            attention_mask = torch.cat([attention_mask, torch.ones_like(step_ids)], dim=1)
        return Generation(torch.stack(tokens, dim=1), counts, step_logits, lengths)

    # ---- helpers -----------------------------------------------------------------------------------------
    def default_paths(self, batch: int) -> Tensor:
        return torch.ones(batch, self.num_layers, dtype=torch.long)

    def counts_tensor(self, paths: PathsLike) -> Tensor:
        """(B, L) int64 counts on the CPU (decisions are read on the host to pick rows). `schedule` checks
        their shape and values, and `run` that their rows are the state's."""
        if isinstance(paths, Tensor):
            return paths.detach().to("cpu", torch.long)
        return torch.tensor([list(p.counts) for p in paths], dtype=torch.long)


def pad_rows(
    rows: Sequence[Sequence[int]], value: int, width: int | None = None, left: bool = False
) -> Tensor:
    """Rows of ints as one (B, width) long tensor, padded with `value` on the right (or on the left)."""
    width = max(map(len, rows)) if width is None else width
    padded = [
        [value] * (width - len(r)) + list(r) if left else list(r) + [value] * (width - len(r)) for r in rows
    ]
    return torch.tensor(padded, dtype=torch.long)


def token_batch(rows: Sequence[Sequence[int]], pad_id: int, left: bool = False) -> tuple[Tensor, Tensor]:
    """Token id rows -> ids (B, T) and attention mask (B, T). Right padding for scoring; left padding for
    generation, which appends on the right."""
    return pad_rows(rows, pad_id, left=left), pad_rows([[1] * len(r) for r in rows], 0, left=left)


def _trails(state: HiddenState, counts: Tensor, layer: int) -> list[tuple[int, ...]]:
    """Each row's layer counts up to `layer`: its trail at `state.layer`, then what `counts` ran since."""
    steps = counts[:, state.layer : layer].tolist()
    return [trail + tuple(step) for trail, step in zip(state.trails, steps, strict=True)]


def _rows(tensor: Tensor | None, rows: Tensor | None) -> Tensor | None:
    """Select batch rows; tensors broadcast over the batch (size 1) and None pass through."""
    if tensor is None or rows is None or tensor.shape[0] == 1:
        return tensor
    return tensor.index_select(0, rows.to(tensor.device))


def _same_segment_or_context(segment_ids: Tensor):
    def rule(batch_idx, head_idx, q_idx, kv_idx):
        kv_segment = segment_ids[batch_idx, kv_idx]
        return (kv_segment == 0) | (kv_segment == segment_ids[batch_idx, q_idx])

    return rule


def _within_window(position_ids: Tensor, window: int):
    def rule(batch_idx, head_idx, q_idx, kv_idx):
        return position_ids[batch_idx, kv_idx] > position_ids[batch_idx, q_idx] - window

    return rule
