"""Storage: every SQL statement projector runs, one module per table or concern (the message
store, checkpoints, stream positions, parked streams, member locks, the member index,
notifications, migrations, throwaway databases for tests), and the only place driver errors
are turned into projector's.

It imports `projector.model` and `projector.errors` only: never the pipeline, the runtime,
ops or the CLI.
"""
