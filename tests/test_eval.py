import json

import numpy as np
import pytest

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


def test_eval_alignment_with_nothing_to_compare_fails_clearly(tiny_corpus, tmp_path, capsys):
    records = [r for r in load_manifest(tiny_corpus) if "whisper_words" not in r]
    (tmp_path / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    with pytest.raises(SystemExit) as exit:
        main(["eval", "alignment", "--preset", "tiny", "--data", str(tmp_path)])
    assert exit.value.code == 2
    assert "no utterance has both engine and Whisper word timings" in capsys.readouterr().err


def test_eval_of_a_missing_corpus_names_the_fix(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["eval", "alignment", "--preset", "tiny", "--data", str(tmp_path / "nowhere")])
    assert "michi-lite data build" in capsys.readouterr().err
