from mmtok_cli.text import content_token_ids, content_words


def test_content_words_drop_stop_words_punctuation_and_placeholder():
    assert content_words("<image>\nWhat is the colour of the car?") == ["colour", "of", "car"]  # "of" is not on the list
    assert content_words("How many cats are on the sofa, left-to-right?") == ["many", "cats", "on", "sofa", "left", "right"]


def test_answer_format_instructions_are_removed():
    q = "Is there a dog?\nAnswer the question using a single word or phrase."
    assert content_words(q) == ["there", "dog"]
    q = "Which animal? A. cat B. dog\nANSWER WITH THE OPTION'S LETTER FROM THE GIVEN CHOICES DIRECTLY."
    assert content_words(q) == ["animal", "cat", "B", "dog"]  # "A" is the stop word "a"


def test_only_stop_words_falls_back_to_all_words_and_empty_gives_nothing():
    assert content_words("What is it?") == ["What", "is", "it"]
    assert content_words("?!  <image> ...") == []


def test_words_are_tokenized_one_by_one_without_special_tokens(engine):
    tok = engine.adapter.tokenizer
    ids = content_token_ids("What colour is the cat?", tok)
    expected = tok(["colour", "cat"], is_split_into_words=True, add_special_tokens=False)["input_ids"]
    assert ids == expected
    assert tok.bos_token_id not in ids and ids
    assert content_token_ids("...", tok) == []
