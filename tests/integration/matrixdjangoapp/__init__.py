"""A Django app for test_matrix.py: authors (a unique email) and their books,
for the CRUD, atomic() rollback, eager/lazy loading and IntegrityError row."""
