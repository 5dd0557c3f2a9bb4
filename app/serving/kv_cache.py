"""The continuous batcher's KV cache: `DynamicCache`s whose layers keep keys and values in buffers with room to
grow (a decode step writes one column in place), and whose rows can be added (left-padded) and removed. Layers of
sliding-window attention are full layers too, and the model's mask applies the window (`new_cache`)."""

from typing import Any

import torch
import torch.nn.functional as F
from transformers import DynamicCache, PretrainedConfig
from transformers.cache_utils import DynamicLayer, get_layer_types_and_kwargs


# transformers leaves the base class's __init_subclass__ and __init__ unannotated.
class GrowingLayer(DynamicLayer):  # type: ignore[no-untyped-call]
    """A `DynamicLayer` whose `keys` and `values` are views of buffers with free columns after them: appending
    writes into the buffers, and only a full buffer (or tensors replaced by a merge) is copied into a new one, a
    quarter longer than needed. Cutting rows out copies the rest straight into new buffers."""

    _buffers: tuple[torch.Tensor, torch.Tensor] | None = None  # for the keys and the values

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        keys, values = self._cached()
        length = self.get_seq_length()
        needed = length + key_states.shape[-2]
        buffers = self._buffers
        if buffers is None or buffers[0].shape[-2] < needed or (length and keys.data_ptr() != buffers[0].data_ptr()):
            buffers = self._allocate(key_states, value_states, key_states.shape[0], needed)
            if length:
                buffers[0][..., :length, :] = keys
                buffers[1][..., :length, :] = values
        key_buffer, value_buffer = buffers
        key_buffer[..., length:needed, :] = key_states
        value_buffer[..., length:needed, :] = value_states
        self.keys, self.values = key_buffer[..., :needed, :], value_buffer[..., :needed, :]
        return self.keys, self.values

    def append_rows(self, other: "GrowingLayer", columns: int) -> None:
        """Add the rows of `other` after these, both left-padded to `columns` columns."""
        (keys, values), (other_keys, other_values) = self._cached(), other._cached()
        self.keys = torch.cat([left_pad(keys, columns, -2), left_pad(other_keys, columns, -2)])
        self.values = torch.cat([left_pad(values, columns, -2), left_pad(other_values, columns, -2)])

    def keep_rows(self, index: torch.Tensor, start: int) -> None:
        """Keep the rows `index`, from column `start` on."""
        keys, values = self._cached()
        keys, values = keys[..., start:, :], values[..., start:, :]
        length = keys.shape[-2]
        key_buffer, value_buffer = self._allocate(keys, values, len(index), length)
        self.keys, self.values = key_buffer[..., :length, :], value_buffer[..., :length, :]
        torch.index_select(keys, 0, index, out=self.keys)
        torch.index_select(values, 0, index, out=self.values)

    def _cached(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The keys and values held, which exist once the first `update` initialised the layer."""
        if self.keys is None or self.values is None:
            raise RuntimeError("the cache layer has not been initialised")
        return self.keys, self.values

    def _allocate(
        self, keys: torch.Tensor, values: torch.Tensor, rows: int, length: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """New buffers for `rows` rows of `length` columns and a quarter more (at least 32) to grow into."""
        columns = length + max(length // 4, 32)
        self._buffers = (
            keys.new_empty(rows, *keys.shape[1:-2], columns, keys.shape[-1]),
            values.new_empty(rows, *values.shape[1:-2], columns, values.shape[-1]),
        )
        return self._buffers


def new_cache(config: PretrainedConfig) -> DynamicCache:
    """A cache of `GrowingLayer`s, one per attention layer. Sliding-window layers keep every column too: the model
    builds their window mask from column indices (`kv_idx > q_idx - sliding_window` in transformers'
    `masking_utils`), and in a left-padded row the distance between two columns is the distance between their
    positions, however the row was merged, cut or padded. A window-sized layer would hold different columns in
    every row, which one column count per cache cannot say."""
    layer_types, _ = get_layer_types_and_kwargs(config.get_text_config(decoder=True))
    unsupported = sorted(set(layer_types) - {"full_attention", "sliding_attention"})
    if unsupported:
        raise NotImplementedError(f"continuous batching needs attention cache layers; this model has {unsupported}")
    cache = DynamicCache(config=config)
    cache.layers = [GrowingLayer() for _ in cache.layers]  # type: ignore[no-untyped-call]
    return cache


def growing_layers(cache: DynamicCache) -> list[GrowingLayer]:
    """The layers of a cache `new_cache` made."""
    layers = [layer for layer in cache.layers if isinstance(layer, GrowingLayer)]
    if len(layers) != len(cache.layers):
        raise TypeError("continuous batching needs a cache made by `new_cache`")
    return layers


def left_pad(tensor: torch.Tensor, length: int, dim: int) -> torch.Tensor:
    missing = length - tensor.shape[dim]
    if missing == 0:
        return tensor
    padding = [0, 0] * (-dim - 1) + [missing, 0]  # F.pad lists (left, right) pairs from the last dimension back
    return F.pad(tensor, padding)
