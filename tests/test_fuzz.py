"""A 500-call slice of kiln's fuzzer (`make fuzz` runs 5,000): hostile calls through Engine.run,
Generator.generate, the pipelines and `kiln run` on a tiny engine of every deployable and every
C++ backend, each in a worker process. Any crash, hang or failure that is not a named kiln error
fails the build; the report names the seed that reproduces it."""

from __future__ import annotations

import json

from conftest import all_deployables

from kiln.fuzz import run


def test_a_fixed_slice_finds_no_crash_hang_or_unnamed_error(deployable_engine, tmp_path):
    engines = {deployable_engine(d)[0].parent for d in all_deployables()}  # every family's tiny engine
    assert len(engines) == 1
    report = run(engines.pop(), calls=500, seed=0, timeout=120)
    (tmp_path / "fuzz.json").write_text(json.dumps(report.to_json(), indent=2))
    totals = report.totals()
    assert report.calls == 500
    assert totals["crash"] == totals["hang"] == totals["unnamed"] == 0, report.failures[:5]
    assert totals["named"] > 100 and totals["correct"] > 20  # hostile, and some valid calls answered
    assert all(sum(c.values()) >= 100 for c in report.counts.values())  # every kind of entry point
