"""Independent transcriptions the tests compare against: the official revisitop metrics
(official_metrics.py). The per-query loop and official-formulation rerankers live in
bench/rerank_baseline.py, because the benchmarks measure against them too; the CVNet-Global
transcription is in tests/extraction/test_cvnet_global.py, next to the only test that uses it."""
