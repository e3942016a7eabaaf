"""The encoder cache's fingerprint: what the cached encodings depend on (weights and the audio front end)."""

from modeling_llasm.training.encoder_cache import encoder_fingerprint
from tiny_llasm import build_tiny_llasm


def test_pause_cut_windows_change_the_fingerprint_and_fixed_windows_keep_the_old_one():
    model, processor = build_tiny_llasm()
    before = encoder_fingerprint(model.model.audio_tower, processor)
    processor.max_window_seconds = None  # the default: caches made before the option stay valid
    assert encoder_fingerprint(model.model.audio_tower, processor) == before
    processor.max_window_seconds = 0.6  # other windows, other encodings
    assert encoder_fingerprint(model.model.audio_tower, processor) != before
