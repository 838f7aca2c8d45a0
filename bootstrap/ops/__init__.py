"""What operators do, built on core and store."""
