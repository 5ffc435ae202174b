"""The dashscope SDK end-to-end tests, one server for the folder (see conftest.py)."""
