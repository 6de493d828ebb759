"""Training stages on TRL: the stage graph, SFT and GRPO trainers, callbacks, the CPU LM-head switch."""
