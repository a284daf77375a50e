"""genflow.engine."""
