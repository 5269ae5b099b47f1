"""The adversarial catalogue of reliability.md §4: one test (or a written reason) per row.

tests/adversarial/README.md maps every catalogue row to the test that covers it.
"""
