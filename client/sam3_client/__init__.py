"""Python SDK and command line for sam3-service."""
