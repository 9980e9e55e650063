"""The status page and its login form, Tornado templates (autoescaped) that sbusr-api renders.

A package of its own only so that setuptools ships the ``.html`` files beside it as package data.
"""
