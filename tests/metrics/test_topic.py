"""On-topic answers (`metrics.topic`): an answer shares a content term with its question."""

import pytest

from modeling_llasm.metrics.topic import content_terms, on_topic


@pytest.mark.parametrize(
    "answer, question, expected",
    [
        ("The capital of Germany is Berlin.", "What is the capital of Germany?", True),
        ("Bicycles usually have two wheels.", "How many wheels does a bicycle have?", True),  # stems: wheels/wheel
        ("I like pizza with cheese.", "What is the capital of Germany?", False),
        ("", "What is the capital of Germany?", False),
        (None, "What is the capital of Germany?", False),
        ("韩国的首都是首尔。", "韩国的首都是哪里？", True),
        ("我喜欢吃苹果。", "韩国的首都是哪里？", False),
        ("我不知道在哪里。", "韩国的首都是哪里？", False),  # "哪里" is a frequent word, not the topic
        ("Machine learning 是人工智能的一个分支。", "什么是 machine learning？", True),
        ("熊猫主要吃竹子。", "熊猫主要吃什么？", True),
    ],
)
def test_on_topic(answer, question, expected):
    assert on_topic(answer, question) is expected


def test_a_question_of_function_words_only_has_no_topic():
    assert content_terms("What is it?") == set()
    assert on_topic("Anything at all.", "What is it?") is None
    assert {"capit", "germani"} <= content_terms("What is the capital of Germany?")
    assert "首都" in content_terms("韩国的首都是哪里？") and "哪里" not in content_terms("韩国的首都是哪里？")
