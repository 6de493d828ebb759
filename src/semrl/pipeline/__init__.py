"""The whole flow: a run, a reward sweep, a few-shot transfer. The only modules that know every stage."""
