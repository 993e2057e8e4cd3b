"""Data: the Criteo schema, the binary dataset format, the batch loader, synthetic data."""
