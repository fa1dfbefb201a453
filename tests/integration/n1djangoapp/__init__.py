"""A Django app for test_n1.py: an author has books (the lazy-loading loops
Django users write)."""
