"""Routes, one module per resource (ROUTES lists in each, mounted by app/main.py)."""
