"""MLflow: training runs tracked by a trainer hook, generators registered and promoted to the `champion` alias."""
