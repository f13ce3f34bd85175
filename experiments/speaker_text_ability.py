"""Is the speech model's backbone still a language model? Perplexity on plain text, near and far from the corpus.

``eval speaker`` measures the backbone's perplexity on the test split's
sentences as plain text. Those are never trained on, but they come from the
same three sources as the training sentences (``michi_lite.data.text``), so
a model fitted to the corpus can score them better than pretrained SmolLM2
while it has forgotten English elsewhere. This script scores the same
sentences and, as text far from the corpus, the sentences of the GNU GPL
version 3, which every Debian system holds (``base-files``), for pretrained
SmolLM2 and for each speech model given. data/speaker/README.md reports::

    python experiments/speaker_text_ability.py --data corpus/lite --json data/speaker/lite_text_ability.json \\
        speaker_part3.safetensors data/speaker/lite_speaker.safetensors
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import torch

from michi_lite.backbone import load_tokenizer
from michi_lite.data.corpus import load_manifest
from michi_lite.eval import perplexity_sentences, text_perplexity
from michi_lite.model import build_backbone, load_speaker, speech_model_config
from michi_lite.provenance import run_info

FAR_TEXT = Path("/usr/share/common-licenses/GPL-3")


def far_sentences(path: Path = FAR_TEXT, n: int = 200) -> list[str]:
    """Up to ``n`` sentences (or clauses ending in ``;`` or ``:``) of 4 to 40 words from a plain-text file."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not here (Debian's base-files package installs it)")
    text = " ".join(path.read_text().split())
    return [s for s in re.split(r"(?<=[.;:])\s+", text) if 4 <= len(s.split()) <= 40][:n]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", required=True, help="a built lite corpus (its test sentences)")
    parser.add_argument("--json", required=True, help="where the results go")
    parser.add_argument("speakers", nargs="+", help="speech models (.safetensors or runs) to score")
    args = parser.parse_args()

    torch.set_num_threads(2)
    tokenizer = load_tokenizer()
    texts = {"test_sentences": perplexity_sentences(load_manifest(args.data, "test")),
             "gpl3_sentences": far_sentences()}
    decoders = {"pretrained": build_backbone(speech_model_config("lite"), len(tokenizer)).eval()}
    decoders.update({path: load_speaker(path, "lite", tokenizer).decoder for path in args.speakers})
    results = {"run": run_info("lite"), "n_sentences": {k: len(v) for k, v in texts.items()}, "perplexity": {}}
    for name, decoder in decoders.items():
        results["perplexity"][name] = {k: round(text_perplexity(decoder, tokenizer, v), 2) for k, v in texts.items()}
        print(name, results["perplexity"][name], flush=True)
    Path(args.json).write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
