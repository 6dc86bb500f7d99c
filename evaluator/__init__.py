"""Evaluate LLM serving layouts (data-parallel replicas x tensor-parallel shards) of vLLM and
SGLang on GSM8K, measuring start-up, generation, throughput and accuracy."""
