"""The HTTP layer, thin: parse, call the domain, answer. The one route table is in routes.py."""
