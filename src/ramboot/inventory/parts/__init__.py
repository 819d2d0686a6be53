"""The store's parts: one repository per concern over one engine (`..store.Store` holds them).

Consumers name the narrow protocol they need (`..ports`), never the whole store.
"""
