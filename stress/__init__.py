"""Long runs of the reliability checks (issue 6), outside CI: ``python -m stress.run``."""
