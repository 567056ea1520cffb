"""Test doubles that speak real wire protocols. Nothing here is used by the product."""
