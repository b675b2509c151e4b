"""The CLI's commands, one module per subject; cli.py lists them all."""
