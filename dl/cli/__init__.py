"""Command-line entry points: `python -m dl.cli.train`, `dl.cli.predict`, `dl.cli.launch`."""
