"""The marker a record transform returns for an unusable record, instead of raising.

The batcher (`clipjax.data.batching.RepackedBatches`) drops marked records and counts them by reason;
each batch carries the counts under the same key, and the train loop logs them as data/skipped.
"""

SKIPPED = "__skipped__"
# Every reason a record can be dropped for, fixed so that hosts can sum their counts position by position.
# What each means: clipjax/data/datacomp.py, clipjax/data/depth.py (corrupt_depth) and
# clipjax/data/segmentation.py (corrupt_label). New reasons go at the end.
SKIP_REASONS = (
    "missing_image",
    "empty_member",
    "corrupt_image",
    "missing_caption",
    "bad_text",
    "missing_synthetic",
    "corrupt_depth",
    "corrupt_label",
    "missing_reinforcement",
    "bad_reinforcement",
)


def skipped(reason: str) -> dict[str, str]:
    """A record that was dropped for `reason`, one of SKIP_REASONS."""
    if reason not in SKIP_REASONS:
        raise ValueError(f"unknown skip reason {reason!r}; add it to SKIP_REASONS")
    return {SKIPPED: reason}
