"""Fixtures for the Graph (Outlook) sandbox: see issue 4."""
