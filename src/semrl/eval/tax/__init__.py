"""The alignment tax: general benchmarks through lm-evaluation-harness, drift from the base model, the training-time meter."""
