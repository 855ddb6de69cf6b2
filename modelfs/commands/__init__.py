"""The command line: create, push, pull, list, and the CLI itself."""
