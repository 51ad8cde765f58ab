"""Recipes: the exact runs that produced cmc's shipped artifacts, kept so they can be redone."""
