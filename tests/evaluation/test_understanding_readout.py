"""How a clip's recognised text is put together from its windows (`adaptor_transcripts`)."""

from modeling_llasm.evaluation.understanding import _decode_windows


class _Texts:
    """A processor whose `decode` gives back the text a window's ids stand for."""

    def __init__(self, texts):
        self.texts = texts

    def decode(self, ids, skip_special_tokens=True):
        return self.texts[ids[0]] if ids else ""


def test_windows_of_a_clip_join_with_a_space_between_words_and_none_between_chinese_characters():
    processor = _Texts({0: "What is a desert?", 1: "What is a thunderstorm?", 2: "北京是", 3: "中国的首都吗？", 4: "Why?"})
    texts = _decode_windows(processor, [[0], [1], [2], [3], [], [4]], [2, 2, 2])
    assert texts == ["What is a desert? What is a thunderstorm?", "北京是中国的首都吗？", "Why?"]
