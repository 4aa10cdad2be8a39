"""The docs site's reference, generated from the code when the site is built.

`docgen.reference` renders three tables from the objects they describe: every setting from
`projector.settings.Settings`, every command from the click commands of `projector.cli.main`,
and every metric from a runner's own Prometheus registry. `docgen.hooks` is the MkDocs hook
that puts them in the pages (``<!-- generated: settings -->`` and the like), so a page can
never list a flag, a default or a metric the code does not have. The tests (tests/unit/
test_docs.py, test_monitoring.py) use the same catalogues to check the rest of the docs and the
dashboard and alert rules in ``deploy/monitoring``.

Nothing here ships in the wheel: it is tooling of this repository, like ``bench``.
"""
