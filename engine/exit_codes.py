"""Exit codes of the CLI, one meaning each (README "Exit codes")."""

EXIT_OK = 0  # done
EXIT_FAILED = 1  # the engine or an output failed while running: disk full, out of memory, reconnects given up
EXIT_USAGE = 2  # bad usage or bad input, found before any frame was processed
EXIT_DAMAGED = 3  # done, but the input was damaged (corrupt frames skipped, a file cut short, a cut-off last line)
EXIT_SIGINT, EXIT_SIGTERM = 130, 143  # stopped by a signal; outputs finalised
