"""kiln.testing.TinyEngines: the tiny engines a test session and its helper process share."""

from __future__ import annotations

import fcntl
import threading
import time

import pytest

from kiln import registry, testing


@pytest.fixture
def fake_builds(monkeypatch):
    """tiny_engine replaced by a stand-in that makes the two directories and counts its calls."""
    calls: list[str] = []

    def fake(d, root, name, formats=None, seed=0):
        calls.append(name)
        time.sleep(0.3)  # long enough for a second process to arrive while it builds
        engine, ckpt = root / "engines" / name, root / f"ckpt-{name}"
        engine.mkdir(parents=True)
        ckpt.mkdir()
        return engine, ckpt, object()

    monkeypatch.setattr(testing, "tiny_engine", fake)
    return calls


def test_an_engine_is_built_once_by_whichever_process_asks_first(tmp_path, fake_builds):
    d = registry.get("bert", "text-classification")
    helper, session = testing.TinyEngines(tmp_path), testing.TinyEngines(tmp_path)  # two lock holders
    building = threading.Thread(target=helper.get, args=(d,), kwargs={"model": False})
    building.start()
    time.sleep(0.1)  # the helper holds the engine's lock, building
    engine, ckpt, hf = session.get(d)  # waits for it, then finds the engine built
    building.join()
    assert fake_builds == ["bert-text-classification"]
    assert helper.made == ["bert-text-classification"] and session.made == []
    assert engine == tmp_path / "engines" / "bert-text-classification" and ckpt.is_dir()
    assert type(hf).__name__ == d.reference_class  # the model make_checkpoint saves, made again
    assert session.get(d) is session.get(d)  # once per process


def test_a_lock_held_past_patience_without_a_helper_is_an_error_not_a_hang(tmp_path, fake_builds):
    d = registry.get("bert", "text-classification")
    with open(tmp_path / "bert-text-classification.lock", "a") as held:
        fcntl.flock(held, fcntl.LOCK_EX)  # another open file: another holder, as another process is
        with pytest.raises(TimeoutError, match="bert-text-classification.lock: held by another process"):
            testing.TinyEngines(tmp_path, patience=0.5).get(d)
    assert fake_builds == []
