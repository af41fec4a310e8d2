"""Command-line tools: every entry point's argument parsing lives here (``python -m tools.<name> --help``)."""
