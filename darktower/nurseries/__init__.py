"""nurseries."""
