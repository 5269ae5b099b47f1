"""The adversarial catalogue (tests/adversarial/README.md): one test (or a written reason) per row.

tests/adversarial/README.md maps every catalogue row to the test that covers it.
"""
