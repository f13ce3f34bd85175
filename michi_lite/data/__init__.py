"""Speech data: synthesis engines, word alignment, the frame grid, the corpus and the dialogues."""
