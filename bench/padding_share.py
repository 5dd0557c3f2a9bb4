"""Padding in the continuous batcher's decode steps, and how long short requests wait, with one long prompt.

Eight short requests (25 tokens) are decoding when a 4,000-token prompt arrives, then eight more short requests
come while it is prefilled (512 tokens a step). On the tiny test model (CPU), it counts, over every decode forward
pass: attention cells (rows × columns of the mask) and the real tokens among them; and the forward passes run
before the late short requests are done, against those of the long prompt's prefill.

    PYTHONPATH=. python bench/padding_share.py
"""

import threading
import time

from app.serving.batching import ContinuousBatcher
from app.serving.lora_slots import AdapterSlots
from tests.helpers.tiny_models import build_model, build_tokenizer

LONG, SHORT, SHORT_ROWS, NEW_TOKENS, CHUNK = 4000, 25, 8, 32, 512


def main() -> None:
    tokenizer = build_tokenizer()
    model = build_model(tokenizer).eval()
    batcher = ContinuousBatcher(model, AdapterSlots(model, max_slots=2), "cpu", max_batch_size=32,
                                max_prefill_tokens=CHUNK)  # fmt: skip
    passes: list[tuple[int, int, int, int]] = []  # rows, input columns, mask width, real tokens in the mask

    def record(module, args, kwargs) -> None:  # type: ignore[no-untyped-def]
        mask = kwargs["attention_mask"]
        passes.append((*kwargs["input_ids"].shape, mask.shape[1], int(mask.sum())))

    model.register_forward_pre_hook(record, with_kwargs=True)
    never = {10**6}

    def submit(length: int, token: int) -> object:
        return batcher.submit([token] * length, None, NEW_TOKENS, 0, 1, None, never)

    early = [submit(SHORT, 5 + i) for i in range(SHORT_ROWS)]
    for stream in early:
        next(stream)  # all decoding
    long = submit(LONG, 7)
    late = [submit(SHORT, 20 + i) for i in range(SHORT_ROWS)]
    done_at: list[int] = []
    first_at: list[int] = []  # the late short requests' first tokens
    started = time.monotonic()
    first_s: list[float] = []

    def drain(stream: object, is_late: bool) -> None:
        for i, _ in enumerate(stream):  # type: ignore[call-overload]
            if i == 0 and is_late:
                first_at.append(len(passes))
                first_s.append(time.monotonic() - started)
        done_at.append(len(passes))

    readers = [threading.Thread(target=drain, args=(s, s in late)) for s in [*early, *late]]
    for reader in readers:
        reader.start()
    first_long_token_at, first_long_s = None, 0.0
    for i, _ in enumerate(long):  # type: ignore[call-overload]
        if i == 0:
            first_long_token_at = len(passes)
            first_long_s = time.monotonic() - started
    for reader in readers:
        reader.join()
    batcher.close()

    decodes = [p for p in passes if p[1] == 1]
    cells, real = sum(rows * width for rows, _, width, _ in decodes), sum(r for *_, r in decodes)
    wide = [p for p in decodes if p[2] > LONG]
    print(f"decode passes: {len(decodes)}, attention cells {cells:,}, real tokens {real:,}, "
          f"padding share {1 - real / cells:.1%}")  # fmt: skip
    if wide:
        short_rows_padded = max(rows for rows, *_ in wide) - 1
        print(f"decode passes wider than the long prompt: {len(wide)}, short rows padded to its width: "
              f"{short_rows_padded}")  # fmt: skip
    print(f"long prompt's first token after forward pass {first_long_token_at} ({first_long_s:.2f} s); late short "
          f"requests' first tokens after pass {max(first_at)} ({max(first_s):.2f} s); all done after pass "
          f"{max(done_at)} of {len(passes)}")  # fmt: skip


if __name__ == "__main__":
    main()
