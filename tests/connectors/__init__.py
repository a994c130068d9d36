"""Connector tests: the shared contract (``contract.py``) and one file per connector."""
