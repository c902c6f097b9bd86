"""The marker a record transform returns for an unusable record, instead of raising.

The batcher (`clipjax.data.pipeline.SkippingBatches`) drops marked records and counts them by reason;
each batch carries the counts under the same key, and the train loop logs them as data/skipped.
"""

SKIPPED = "__skipped__"


def skipped(reason: str) -> dict[str, str]:
    """A record that was dropped for `reason` (a short snake_case word: "corrupt_image", ...)."""
    return {SKIPPED: reason}
