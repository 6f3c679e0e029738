"""Captures: the model settings they carry, validated like the environment when adopted, and their frames' bytes."""

from __future__ import annotations

from pathlib import Path

import pytest

from marketswarm.agents.sources.files import InputFileError, capture_model_settings, model_line, read_capture
from marketswarm.topology.settings import ModelSettings, ModelSettingsError, Settings


def test_adopting_replaces_only_the_model_settings() -> None:
    env = Settings(underlyings=["QQQ"], calc_bucket_ms=50)
    adopted = env.with_model_settings({"calc_bucket_ms": 250, "heatmap_range_pct": "2.5"})
    assert adopted.calc_bucket_ms == 250 and adopted.heatmap_range_pct == 2.5
    assert adopted.underlyings == ["QQQ"]
    assert set(adopted.model_settings.model_dump()) == set(ModelSettings.model_fields)


@pytest.mark.parametrize(
    "recorded",
    [{"calc_bucket_ms": 0}, {"publish_interval_ms": "soon"}, {"batch_size": 10}, {"redis_url": "redis://x"}],
)
def test_recorded_settings_out_of_range_or_not_of_the_model_are_refused(recorded: dict[str, object]) -> None:
    with pytest.raises(ModelSettingsError):
        Settings().with_model_settings(recorded)


def test_a_capture_carries_its_model_settings_beside_its_frames(tmp_path: Path) -> None:
    line = b'{"u":"SPX","src":"sim","rx_ns":1,"data":"{}"}'
    a = tmp_path / "a.jsonl"
    a.write_bytes(model_line({"calc_bucket_ms": 200}) + b"\n" + line + b"\n")
    assert capture_model_settings([a]) == {"calc_bucket_ms": 200}
    assert [r.src for r in read_capture(a)] == ["sim"]  # the settings line is not a frame
    plain = tmp_path / "plain.jsonl"
    plain.write_bytes(line + b"\n")
    assert capture_model_settings([plain]) is None
    assert capture_model_settings([a, plain]) == {"calc_bucket_ms": 200}
    b = tmp_path / "b.jsonl"
    b.write_bytes(model_line({"calc_bucket_ms": 100}) + b"\n" + line + b"\n")
    with pytest.raises(InputFileError, match="different model settings"):
        capture_model_settings([a, b])
