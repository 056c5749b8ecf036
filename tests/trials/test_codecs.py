from __future__ import annotations

import pytest

from vlsweep.trials.codecs import CODECS

SIZE = (200, 100)
BOX = (20.0, 10.0, 150.0, 90.0)


@pytest.mark.parametrize("name", sorted(CODECS))
def test_round_trip_stays_within_one_bin(name):
    codec = CODECS[name]
    resized = (224, 112)
    text = codec.encode(BOX, SIZE, resized)
    back = codec.decode(text, SIZE, resized)
    assert back is not None
    # 1000 bins over 200 px = 0.2 px; Qwen2.5 rounds to resized pixels (< 1 px here).
    assert all(abs(a - b) <= 1.0 for a, b in zip(back, BOX, strict=True)), (text, back)


def test_qwen2_vl_format_is_normalised_to_1000():
    text = CODECS["qwen2_vl"].encode(BOX, SIZE, SIZE)
    assert text == "<|box_start|>(100,100),(750,900)<|box_end|>"
    # Generated text with the special tokens stripped still parses.
    assert CODECS["qwen2_vl"].decode("(100,100),(750,900)", SIZE, SIZE) is not None


def test_qwen2_5_vl_answers_in_pixels_of_the_resized_image():
    text = CODECS["qwen2_5_vl"].encode(BOX, SIZE, (400, 200))
    assert text == '{"bbox_2d":[40,20,300,180]}'
    assert CODECS["qwen2_5_vl"].decode(text, SIZE, (400, 200)) == BOX


def test_paligemma_is_y_first_with_1024_bins():
    text = CODECS["paligemma"].encode(BOX, SIZE, SIZE)
    assert text == "<loc0102><loc0102><loc0921><loc0768>"


@pytest.mark.parametrize("name", sorted(CODECS))
@pytest.mark.parametrize("garbage", ["", "no box here", "(1,2),(3", '{"bbox_2d": [1, 2]}', "[5,5,1,1]"])
def test_unparseable_or_degenerate_answers_decode_to_none(name, garbage):
    assert CODECS[name].decode(garbage, SIZE, SIZE) is None
