"""The greenmaas command line."""
