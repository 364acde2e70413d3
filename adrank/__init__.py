"""The `adrank` command: the dispatcher over every package's verbs, and the end-to-end demo."""
