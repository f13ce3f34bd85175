import json

import numpy as np

from michi_lite.cli import main
from michi_lite.data.corpus import load_manifest


def test_eval_alignment_compares_engines_with_whisper(tiny_corpus, tmp_path):
    out = tmp_path / "alignment.json"
    main(["eval", "alignment", "--preset", "tiny", "--data", str(tiny_corpus), "--json", str(out)])
    report = json.loads(out.read_text())
    compared = {r["engine"] for r in load_manifest(tiny_corpus) if "whisper_words" in r}
    assert compared and set(report["engines"]) == compared
    for numbers in report["engines"].values():
        assert numbers["n_words"] > 0
        assert 0 <= numbers["median_ms"] <= numbers["p95_ms"] < 1000  # same speech, same words: well under 1 s
    assert np.isfinite(report["all"]["median_ms"])
    assert report["run"]["preset"] == "tiny" and report["run"]["cpu_count"] >= 1
