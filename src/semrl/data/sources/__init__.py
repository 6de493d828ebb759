"""Where examples come from: local files, the hub, NTREX-128, Lotsawa House, MITRA-parallel."""
