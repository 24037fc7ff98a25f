"""The `mmtok` commands, one module per command and named after it (mmtok_cli/cli.py assembles them).

common.py holds what the commands share (option types and their help, the stderr console, one-line errors,
loading the engine, output checks); config.py the `--config FILE.yaml` option. The work itself lives in the
library modules of the same names one folder up (batch.py, show.py, profile.py, ...): a command only parses
its options, calls them and prints.
"""
