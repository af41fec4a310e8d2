"""Command lines of the installed package (lt-train, lt-test, ...); each module parses arguments and calls the library."""
