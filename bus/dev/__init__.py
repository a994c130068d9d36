"""Development tools: local and embedded brokers, the demo, sample data, worker processes.

Nothing the worker or the gateway runs imports from here.
"""
