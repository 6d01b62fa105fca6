"""Run records: a folder resumes only with the settings that made it."""

from __future__ import annotations

import pytest

from rise_llm.errors import RiseError
from rise_llm.provenance import check_settings, write_run_record


def test_same_settings_resume_and_changed_ones_are_named(tmp_path):
    assert check_settings(tmp_path, {"lr": 1e-5}, "a run") is None  # nothing recorded yet
    write_run_record(tmp_path, {"lr": 1e-5, "epochs": 1})
    assert check_settings(tmp_path, {"lr": 1e-5, "epochs": 1}, "a run") == {"lr": 1e-5, "epochs": 1}
    with pytest.raises(RiseError, match=r"different settings \(epochs, lr\)"):
        check_settings(tmp_path, {"lr": 1e-4, "epochs": 2}, "a run")


def test_settings_added_later_resume_while_they_are_off(tmp_path):
    """A folder recorded before an opt-in setting existed resumes while that setting is off."""
    write_run_record(tmp_path, {"lr": 1e-5})
    off = {"lr": 1e-5, "deepspeed": None, "gradient_checkpointing": False}
    assert check_settings(tmp_path, off, "a trained model") == {"lr": 1e-5}
    with pytest.raises(RiseError, match=r"different settings \(gradient_checkpointing\)"):
        check_settings(tmp_path, {**off, "gradient_checkpointing": True}, "a trained model")
    with pytest.raises(RiseError, match=r"different settings \(lr\)"):
        check_settings(tmp_path, {"lr": None}, "a trained model")  # recorded, so it counts


def test_may_grow_fields_only_grow(tmp_path):
    write_run_record(tmp_path, {"iterations": 2})
    assert check_settings(tmp_path, {"iterations": 3}, "a run", may_grow=("iterations",))
    with pytest.raises(RiseError, match="only iterations may grow"):
        check_settings(tmp_path, {"iterations": 1}, "a run", may_grow=("iterations",))


def test_settings_added_later_resume_at_their_default(tmp_path):
    """A collection recorded before `selection` existed resumes with its default, `first`."""
    from rise_llm.collect import CollectConfig

    write_run_record(tmp_path, {"samples": 16})
    now = {"samples": 16, "selection": "first", "verifier": None}
    assert check_settings(tmp_path, now, "a collection", defaults=CollectConfig)
    with pytest.raises(RiseError, match=r"different settings \(selection\)"):
        check_settings(
            tmp_path, {**now, "selection": "closest"}, "a collection", defaults=CollectConfig
        )
    with pytest.raises(RiseError, match=r"different settings \(selection\)"):
        check_settings(tmp_path, now, "a collection")  # without the defaults, a change


def test_free_fields_may_change_and_others_still_count(tmp_path):
    """The engine's batch size changes no sample, so a resume may change it; not the rest."""
    write_run_record(tmp_path, {"batch_size": 512, "samples": 16})
    assert check_settings(
        tmp_path, {"batch_size": 64, "samples": 16}, "a run", free=("batch_size",)
    )
    with pytest.raises(RiseError, match=r"different settings \(batch_size\)"):
        check_settings(tmp_path, {"batch_size": 64, "samples": 16}, "a run")
    with pytest.raises(RiseError, match=r"different settings \(samples\)"):
        check_settings(tmp_path, {"batch_size": 64, "samples": 8}, "a run", free=("batch_size",))
