"""Models of the test_cache.py Django reads."""

from django.db import models


class Member(models.Model):
    name = models.CharField(max_length=100)
    nickname = models.CharField(max_length=100, null=True)
    score = models.BigIntegerField(default=0)

    class Meta:
        app_label = "cachedjangoapp"
