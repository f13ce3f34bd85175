"""Speech data: synthesis engines, word alignment, the frame grid and the corpus."""
