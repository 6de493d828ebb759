"""Measurement: task metrics, bootstrap statistics, the LLM judge, and the alignment tax (benchmarks, drift, the meter)."""
