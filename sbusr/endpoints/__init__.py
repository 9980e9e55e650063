"""Built-in endpoints."""
