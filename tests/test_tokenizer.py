"""The tokenizer against ids produced by open_clip's tokenizer (tests/data/open_clip_token_ids.json)."""

import json
import os

import numpy as np
import pytest

from clipjax.tokenizer import default_tokenizer, tokenize

with open(os.path.join(os.path.dirname(__file__), "data", "open_clip_token_ids.json"), encoding="utf-8") as f:
    OPEN_CLIP_CASES = json.load(f)["cases"]


def test_known_value_from_the_issue():
    ids = tokenize("a photo of a cat")
    assert ids.shape == (1, 77) and ids.dtype == np.int32
    np.testing.assert_array_equal(ids[0, :7], [49406, 320, 1125, 539, 320, 2368, 49407])
    assert not ids[0, 7:].any()


@pytest.mark.parametrize("case", OPEN_CLIP_CASES, ids=lambda case: repr(case["text"][:24]))
def test_matches_open_clip(case):
    ids = tokenize(case["text"])[0]
    expected = case["ids"]
    np.testing.assert_array_equal(ids[: len(expected)], expected)
    assert not ids[len(expected) :].any()


def test_batch_of_texts_pads_each_row():
    ids = tokenize(["", "a cat", "a photo of a cat"], context_length=10)
    assert ids.shape == (3, 10)
    np.testing.assert_array_equal(ids[0], [49406, 49407] + [0] * 8)
    np.testing.assert_array_equal(ids[1], [49406, 320, 2368, 49407] + [0] * 6)


def test_overlong_text_keeps_end_token_last():
    ids = tokenize("a photo of a cat", context_length=5)[0]
    np.testing.assert_array_equal(ids, [49406, 320, 1125, 539, 49407])
    long = tokenize("dog " * 200)[0]
    assert long[0] == 49406 and long[-1] == 49407 and (long[1:-1] > 0).all()


def test_decode_inverts_encode_on_clean_text():
    text = "a large red star, partly hidden behind it; naïve café 2024!"
    assert (
        default_tokenizer().decode(tokenize(text)[0])
        == "a large red star , partly hidden behind it ; naïve café 2 0 2 4 !"
    )


def test_rejects_a_context_too_short_for_start_and_end():
    with pytest.raises(ValueError, match="context_length"):
        tokenize("x", context_length=1)
