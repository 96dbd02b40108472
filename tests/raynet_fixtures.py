"""Fixtures for the Raynet sandbox: see issue 3."""
