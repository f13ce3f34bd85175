from michi_lite.data.corpus import load_manifest
from michi_lite.data.frames import PAD_TOKEN, chunk_start_times, frame_tokens, text_from_grid
from michi_lite.data.words import Word

WORDS = [Word("The", 0.05, 0.25), Word("quick", 0.30, 0.52), Word("brown", 0.55, 0.85), Word("fox.", 0.90, 1.20)]


def test_tokens_sit_on_the_frame_where_their_word_starts(tokenizer):
    grid = frame_tokens("The quick brown fox.", WORDS, tokenizer, n_frames=15)
    pad = tokenizer.convert_tokens_to_ids(PAD_TOKEN)
    assert len(grid) == 15
    placed = {i: tokenizer.decode([t]) for i, t in enumerate(grid.tokens) if t != pad}
    # 0.05 s -> frame 0, 0.30 s -> frame 3, 0.55 s -> frame 6, 0.90 s -> frame 11, "." spills to 12
    assert placed == {0: "The", 3: " quick", 6: " brown", 11: " fox", 12: "."}


def test_long_words_spill_into_following_frames_and_grid_grows(tokenizer):
    words = [Word("1,250,000", 0.0, 0.1)]
    grid = frame_tokens("1,250,000", words, tokenizer, n_frames=2)
    assert len(grid.text_token_ids) == len(tokenizer("1,250,000", add_special_tokens=False)["input_ids"])
    assert len(grid) == len(grid.text_token_ids) > 2  # every token kept, one per frame
    assert text_from_grid(grid, tokenizer) == "1,250,000"


def test_unmatched_chunks_follow_the_previous_word():
    text = "Pay $12.50 now"
    words = [Word("Pay", 0.0, 0.2), Word("twelve", 0.3, 0.6), Word("fifty", 0.6, 0.9), Word("now", 1.0, 1.2)]
    times = [t for _, _, t in chunk_start_times(text, words)]
    assert times == [0.0, 0.0, 1.0]


def test_grid_round_trip_is_lossless_on_the_corpus(tiny_corpus, tokenizer):
    for record in load_manifest(tiny_corpus):
        words = [Word.from_dict(w) for w in record["words"]]
        n_frames = int(record["duration"] / 0.08) + 1
        grid = frame_tokens(record["text"], words, tokenizer, n_frames)
        assert text_from_grid(grid, tokenizer) == record["text"], record["id"]
        assert len(grid) == n_frames, record["id"]  # no utterance needed more frames than it lasts


def test_a_word_starting_exactly_on_a_frame_boundary_gets_that_frame(tokenizer):
    words = [Word("Go", 0.24, 0.5), Word("now", 2.32, 2.6)]  # 2.32 / 0.08 is 28.999... in floating point
    grid = frame_tokens("Go now", words, tokenizer, n_frames=40)
    assert grid.labels(tokenizer)[3] == "Go" and grid.labels(tokenizer)[29] == " now"
