"""trackd: crash-safe experiment tracking and data versioning for machine learning."""
