"""Models of the test_matrix.py Django row."""

from django.db import models


class Author(models.Model):
    name = models.CharField(max_length=100)
    email = models.CharField(max_length=100, unique=True)

    class Meta:
        app_label = "matrixdjangoapp"


class Book(models.Model):
    author = models.ForeignKey(Author, on_delete=models.CASCADE, related_name="books")
    title = models.CharField(max_length=200)
    pages = models.IntegerField(default=0)

    class Meta:
        app_label = "matrixdjangoapp"
