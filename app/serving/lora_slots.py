"""LoRA adapters of one base model held in preallocated stacked tensors, and a grouped LoRA computation of our own
that serves a batch whose rows use different adapters (or none) in a fixed number of operations.

Why not peft at inference:
- `load_adapter` re-walks and re-wraps the model; with a few adapters resident it costs hundreds of milliseconds.
  Here loading is a copy of the adapter's tensors into a free slot: milliseconds.
- peft's mixed-batch forward loops over the adapters in every LoRA layer (gather, two matmuls, scale, scatter for
  each), so its cost grows with the number of distinct adapters in the batch. Here, as in Punica's SGMV and
  S-LoRA, every layer does the same few operations whatever that number.

Layout: every linear layer that some loaded adapter targets is wrapped once (`_SlottedLinear`) and holds
`lora_a [slots, rank, in]` and `lora_b [slots, out, rank]`; slot s is one adapter, its B already multiplied by
the adapter's scaling, zero-padded to the largest rank loaded, and all zeros in layers the adapter does not target.
Before a forward, `routed(adapters)` turns the rows' adapters into one routing (computed once, read by every
layer): rows are grouped by adapter, each group padded to the largest group's size, so each layer computes
`bmm(bmm(x_grouped, Aᵀ), Bᵀ)` over the batch's adapters and adds each real row's result back. When every row uses
the same adapter that is two plain matmuls; rows without an adapter cost nothing.

The running batch's adapters are staged (`routed(..., staged=True)`, for decode steps): their Aᵀ and Bᵀ are copied
into a second, smaller stack (one position per adapter of the batch) that the `bmm`s read. Gathering them from the
slots at every step would copy every adapter's weights at every step, which costs more than the LoRA computation
itself; staged, an adapter is copied once when it joins the batch, into the position of one that left (an adapter
staged beyond the batch's count moves down the same way), so the stack never holds more than the batch's adapters.
Staging takes up to one slot's memory per row of the batch. Other forwards (a prefill of a few newcomers) gather
their adapters' weights for themselves, and leave the staged stack as the decode steps need it.
"""

import json
import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn

from app.serving.errors import AdapterRankUnsupported

_PEFT_PREFIX = "base_model.model."
_A_SUFFIX, _B_SUFFIX = ".lora_A.weight", ".lora_B.weight"


class UnsupportedAdapter(ValueError):
    """The adapter holds something besides LoRA matrices on linear layers (DoRA, embeddings, saved modules)."""


class SlotsFull(RuntimeError):
    """Every slot holds an adapter: one must be unloaded first."""


@dataclass(frozen=True)
class _OneAdapter:
    """Every row uses the adapter in `slot`."""

    slot: int


@dataclass(frozen=True)
class _Grouped:
    """Rows use different adapters (or none): grouped by adapter, each group padded to the largest one's size."""

    groups: int  # one group of rows per staged position in use, or per slot in `slots`
    slots: torch.Tensor | None  # [groups] the slots to gather for this forward; None: read the staged stack
    gather: torch.Tensor  # [groups × group size] row of each grouped position (padding repeats one)
    rows: torch.Tensor  # rows with an adapter …
    positions: torch.Tensor  # … and where their results are in the grouped layout


_Routing = _OneAdapter | _Grouped


class _RoutingHolder:
    """One routing shared by every wrapped layer, set for the length of a forward pass."""

    current: _Routing | None = None


class _SlottedLinear(nn.Module):
    def __init__(self, base: nn.Linear, routing: _RoutingHolder, slots: int, rank: int) -> None:
        super().__init__()
        self.base = base
        self._routing = routing
        # A 4-bit (QLoRA) layer stores packed integers: its adapters compute in the layer's compute dtype.
        dtype = base.weight.dtype if base.weight.dtype.is_floating_point else getattr(base, "compute_dtype", None)
        dtype, device = dtype or torch.bfloat16, base.weight.device
        self.lora_a = torch.zeros(slots, rank, base.in_features, dtype=dtype, device=device)
        self.lora_b = torch.zeros(slots, base.out_features, rank, dtype=dtype, device=device)
        self.staged_a_t = self.lora_a.new_zeros(0, base.in_features, rank)  # [positions, in, rank]
        self.staged_b_t = self.lora_b.new_zeros(0, rank, base.out_features)  # [positions, rank, out]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y: torch.Tensor = self.base(x)
        routing = self._routing.current
        if routing is None:
            return y
        if isinstance(routing, _OneAdapter):
            return y + F.linear(F.linear(x, self.lora_a[routing.slot]), self.lora_b[routing.slot])
        if routing.slots is None:
            a_t, b_t = self.staged_a_t[: routing.groups], self.staged_b_t[: routing.groups]
        else:
            a_t = self.lora_a.index_select(0, routing.slots).transpose(1, 2)
            b_t = self.lora_b.index_select(0, routing.slots).transpose(1, 2)
        grouped = x.index_select(0, routing.gather).reshape(routing.groups, -1, x.shape[-1])
        delta = torch.bmm(torch.bmm(grouped, a_t), b_t)
        delta = delta.reshape(-1, *y.shape[1:]).index_select(0, routing.positions)
        return y.index_add_(0, routing.rows, delta)

    def stage(self, position: int, slot: int) -> None:
        """Copy slot `slot`'s Aᵀ and Bᵀ to staged position `position`, growing the stack when it is too short."""
        if position >= self.staged_a_t.shape[0]:
            positions = max(position + 1, 2 * self.staged_a_t.shape[0])
            grown_a = self.staged_a_t.new_zeros(positions, *self.lora_a.shape[:0:-1])
            grown_b = self.staged_b_t.new_zeros(positions, *self.lora_b.shape[:0:-1])
            grown_a[: self.staged_a_t.shape[0]] = self.staged_a_t
            grown_b[: self.staged_b_t.shape[0]] = self.staged_b_t
            self.staged_a_t, self.staged_b_t = grown_a, grown_b
        self.staged_a_t[position] = self.lora_a[slot].T
        self.staged_b_t[position] = self.lora_b[slot].T

    def resize(self, slots: int, rank: int) -> None:
        """Grow to `slots` slots of rank `rank`, keeping what is loaded; the staged stack is emptied."""
        old_a, old_b = self.lora_a, self.lora_b
        self.lora_a = old_a.new_zeros(slots, rank, old_a.shape[2])
        self.lora_b = old_b.new_zeros(slots, old_b.shape[1], rank)
        self.lora_a[: old_a.shape[0], : old_a.shape[1]] = old_a
        self.lora_b[: old_b.shape[0], :, : old_b.shape[2]] = old_b
        self.staged_a_t = old_a.new_zeros(0, old_a.shape[2], rank)
        self.staged_b_t = old_b.new_zeros(0, rank, old_b.shape[1])

    def write(self, slot: int, a: torch.Tensor | None, b: torch.Tensor | None) -> None:
        """Put one adapter's matrices (B already scaled) in `slot`; None clears it."""
        self.lora_a[slot].zero_()
        self.lora_b[slot].zero_()
        if a is not None and b is not None:
            self.lora_a[slot, : a.shape[0]] = a
            self.lora_b[slot, :, : b.shape[1]] = b

    def slot_bytes(self) -> int:
        return (self.lora_a[0].numel() + self.lora_b[0].numel()) * self.lora_a.element_size()


def _scaled_pairs(adapter_dir: Path) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Module path → (A, B × scaling) of a peft LoRA adapter directory."""
    config = json.loads((adapter_dir / "adapter_config.json").read_text())
    if config.get("use_dora") or config.get("alpha_pattern"):
        raise UnsupportedAdapter("adapters with DoRA or per-module alpha are not supported for serving")
    weights = load_file(adapter_dir / "adapter_model.safetensors")
    paths = {key.removeprefix(_PEFT_PREFIX).removesuffix(_A_SUFFIX) for key in weights if key.endswith(_A_SUFFIX)}
    unexpected = set(weights) - {f"{_PEFT_PREFIX}{path}{suffix}" for path in paths for suffix in (_A_SUFFIX, _B_SUFFIX)}
    if unexpected:
        raise UnsupportedAdapter(f"the adapter holds weights other than LoRA matrices, e.g. {sorted(unexpected)[0]}")
    pairs = {}
    for path in paths:
        a, b = weights[f"{_PEFT_PREFIX}{path}{_A_SUFFIX}"], weights[f"{_PEFT_PREFIX}{path}{_B_SUFFIX}"]
        rank = a.shape[0]  # per module: peft's rank_pattern may differ from `r`
        scaling = config["lora_alpha"] / (math.sqrt(rank) if config.get("use_rslora") else rank)
        pairs[path] = (a, b * scaling)
    return pairs


class AdapterSlots:
    """The adapters loaded into one base model, by name; at most `max_slots` at once."""

    def __init__(self, model: nn.Module, max_slots: int, max_rank: int = 64) -> None:
        if max_slots < 1 or max_rank < 1:
            raise ValueError("max_slots and max_rank must be at least 1")
        self._model = model
        self._max_slots = max_slots
        # Every slot takes the largest rank loaded, and every row's LoRA computation runs at it: one adapter of
        # rank 256 would grow each slot 16-fold over rank 16 (19 MB → 313 MB for SmolLM2-135M), so it is refused.
        self._max_rank = max_rank
        self._layers: dict[str, _SlottedLinear] = {}
        self._slot_of: dict[str, int] = {}
        self._capacity = 0
        self._rank = 0
        self._staged: list[int | None] = []  # staged position → the slot whose weights it holds (None: none valid)
        self._routing = _RoutingHolder()

    def __contains__(self, name: object) -> bool:
        return name in self._slot_of

    def names(self) -> set[str]:
        return set(self._slot_of)

    def load(self, name: str, adapter_dir: Path) -> None:
        """Copy the adapter's matrices into a free slot (or its own slot again, when reloaded); an adapter of a rank
        above `max_rank` is refused with `AdapterRankUnsupported`."""
        pairs = _scaled_pairs(adapter_dir)
        rank = max((a.shape[0] for a, _ in pairs.values()), default=0)
        if rank > self._max_rank:
            raise AdapterRankUnsupported(
                f"This model's adapter has LoRA rank {rank}; this server serves ranks up to {self._max_rank} "
                "(LORAPORT_MAX_SERVING_LORA_RANK). Fine-tune it again with a lower rank, or raise that limit."
            )
        slot = self._slot_of.get(name)
        if slot is None:
            used = set(self._slot_of.values())
            slot = next((s for s in range(self._capacity) if s not in used), self._capacity)
            if slot >= self._max_slots:
                raise SlotsFull(f"all {self._max_slots} adapter slots are in use: unload one first")
        self._fit(slot + 1, rank)
        for path in pairs:
            self._layer(path)
        self._unstage(slot)
        for path, layer in self._layers.items():
            a, b = pairs.get(path, (None, None))
            layer.write(slot, a, b)
        self._slot_of[name] = slot

    def unload(self, name: str) -> None:
        """Free the adapter's slot; the next adapter loaded there overwrites it."""
        self._unstage(self._slot_of.pop(name))

    def slot_bytes(self) -> int:
        """Memory one adapter takes here (every wrapped layer, at the largest rank loaded)."""
        return sum(layer.slot_bytes() for layer in self._layers.values())

    @contextmanager
    def routed(self, adapters: list[str | None], staged: bool = False) -> Iterator[None]:
        """Within the block, row i of a forward pass uses adapter `adapters[i]` (None: the base model alone).
        `staged`: these are the rows of the running batch, whose adapters stay staged from one step to the next."""
        unknown = sorted({name for name in adapters if name is not None and name not in self._slot_of})
        if unknown:
            raise KeyError(f"adapters not loaded: {unknown}")
        slots = [self._slot_of[name] if name else None for name in adapters]
        self._routing.current = self._route(slots, staged)
        try:
            yield
        finally:
            self._routing.current = None

    def _route(self, slots: list[int | None], staged: bool) -> _Routing | None:
        distinct = sorted({slot for slot in slots if slot is not None})
        if not distinct:
            return None
        if len(distinct) == 1 and None not in slots:
            return _OneAdapter(distinct[0])
        members = {slot: [row for row, s in enumerate(slots) if s == slot] for slot in distinct}
        size = max(len(rows) for rows in members.values())
        groups = self._stage(distinct) if staged else distinct
        gather: list[int] = []
        rows: list[int] = []
        positions: list[int] = []
        for group, slot in enumerate(groups):
            gather += members[slot] + [members[slot][0]] * (size - len(members[slot]))
            rows += members[slot]
            positions += range(group * size, group * size + len(members[slot]))
        device = next(iter(self._layers.values())).lora_a.device

        def tensor(values: list[int]) -> torch.Tensor:
            return torch.tensor(values, device=device)

        gathered = None if staged else tensor(distinct)
        return _Grouped(len(groups), gathered, tensor(gather), tensor(rows), tensor(positions))

    def _stage(self, distinct: list[int]) -> list[int]:
        """Stage the batch's adapters at positions 0 … len(distinct) - 1; returns the slot at each position. An
        adapter already staged within those positions stays; the others (new to the batch, or staged beyond them)
        are copied into the positions of adapters that left, so the stack holds the batch's adapters only."""
        size = len(distinct)
        staged = (self._staged + [None] * size)[:size]
        free = [position for position, slot in enumerate(staged) if slot not in distinct]
        for position, slot in zip(free, sorted(set(distinct) - set(staged)), strict=True):
            staged[position] = slot
            for layer in self._layers.values():
                layer.stage(position, slot)
        self._staged = staged
        return [slot for slot in staged if slot is not None]  # all of them: every free position was filled

    def _unstage(self, slot: int) -> None:
        """The slot's weights change: its staged copy, if any, is stale."""
        self._staged = [None if staged == slot else staged for staged in self._staged]

    def _fit(self, slots: int, rank: int) -> None:
        """Make room for `slots` slots of rank `rank`: capacity doubles (to at most `max_slots`) when it grows."""
        if slots <= self._capacity and rank <= self._rank:
            return
        if slots > self._capacity:
            self._capacity = min(max(slots, 2 * self._capacity), self._max_slots)
        self._rank = max(rank, self._rank)
        self._staged = []
        for layer in self._layers.values():
            layer.resize(self._capacity, self._rank)

    def _layer(self, path: str) -> _SlottedLinear:
        layer = self._layers.get(path)
        if layer is None:
            parent_path, _, attribute = path.rpartition(".")
            parent = self._model.get_submodule(parent_path)
            base = getattr(parent, attribute)
            if not isinstance(base, nn.Linear):
                raise UnsupportedAdapter(f"the adapter targets {path}, which is not a linear layer")
            layer = self._layers[path] = _SlottedLinear(base, self._routing, self._capacity, self._rank)
            setattr(parent, attribute, layer)
            self._staged = []  # the new layer has nothing staged: every adapter is staged again
        return layer
