"""The examples' tests take the console tests' headless chromium (one per session) as it is."""

from tests.console.conftest import browser

__all__ = ["browser"]
