"""Protocol buffer sources (*.proto) and their generated stubs (build.py, stubs.py)."""
