from projector.cli import entry

entry()
