"""The `cnnlens` command: one module per sub-command, registered in main.py."""
