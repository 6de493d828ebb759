"""Foundations every layer uses: errors, atomic I/O, language and script facts, process state, provenance, and the on-disk layout."""
