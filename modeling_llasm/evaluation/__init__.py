"""Evaluation (`llasm eval`: ASR WER/CER and spoken-instruction ROUGE-L, LLaSM vs the cascade baseline) and
benchmarks (`llasm bench`: latency, throughput, training speed and memory)."""

from .cascade import WhisperTranscriber, whisper_dir_for
from .evaluator import evaluate_model, format_results, generate_answers, load_llasm
from ..metrics.rouge import mean_rouge_l, rouge_l
from .tasks import classify_record, is_asr_instruction

__all__ = [
    "WhisperTranscriber",
    "classify_record",
    "evaluate_model",
    "format_results",
    "generate_answers",
    "is_asr_instruction",
    "load_llasm",
    "mean_rouge_l",
    "rouge_l",
    "whisper_dir_for",
]
