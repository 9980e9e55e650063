"""Small helpers with no sbusr dependencies, used by every layer."""
