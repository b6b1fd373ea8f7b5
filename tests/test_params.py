"""Parameter validation: every bad value is a 400 that names its field."""

from __future__ import annotations

import pytest

from serve_app.errors import APIError
from serve_app.params import check_model, parse_params


def expect_invalid(items: list, param: str) -> None:
    with pytest.raises(APIError) as info:
        parse_params(items)
    assert (info.value.status, info.value.code, info.value.param) == (
        400,
        "invalid_parameter",
        param,
    )


def test_defaults() -> None:
    params = parse_params([])
    assert params.response_format == "json" and params.temperature == 0.0
    assert params.language is None and not params.stream


def test_openai_form_fields() -> None:
    params = parse_params(
        [
            ("model", "whisper-1"),
            ("language", "EN"),
            ("response_format", "verbose_json"),
            ("temperature", "0.2"),
            ("timestamp_granularities[]", "segment"),
            ("stream", "false"),
        ]
    )
    assert params.language == "en" and params.temperature == 0.2
    assert params.timestamp_granularities == ("segment",)


@pytest.mark.parametrize(
    "items,param",
    [
        ([("response_format", "docx")], "response_format"),
        ([("language", "klingon")], "language"),
        ([("temperature", "1.5")], "temperature"),
        ([("temperature", "-1")], "temperature"),
        ([("temperature", "warm")], "temperature"),
        ([("language", "en"), ("language", "de")], "language"),
        ([("timestamp_granularities[]", "character")], "timestamp_granularities"),
        ([("stream", "maybe")], "stream"),
    ],
)
def test_bad_values(items: list, param: str) -> None:
    expect_invalid(items, param)


def test_model_names() -> None:
    accepts = {"whisper-base", "whisper-1"}.__contains__
    check_model("whisper-1", accepts, "whisper-base")
    check_model(None, accepts, "whisper-base")
    with pytest.raises(APIError) as info:
        check_model("gpt-4o-transcribe", accepts, "whisper-base")
    assert (info.value.status, info.value.code) == (404, "model_not_found")


def test_word_granularity_asks_for_words_and_leaves_segments_out_unless_asked() -> None:
    words = parse_params([("timestamp_granularities[]", "word")])
    assert words.wants_words and not words.wants_segments
    both = parse_params([("timestamp_granularities[]", "word"),
                         ("timestamp_granularities[]", "segment")])
    assert both.wants_words and both.wants_segments
    assert parse_params([]).wants_segments and not parse_params([]).wants_words
