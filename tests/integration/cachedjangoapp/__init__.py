"""A Django app for test_cache.py: a member looked up by primary key (the
`Model.objects.get(pk=...)` reads the identity-map cache serves)."""
