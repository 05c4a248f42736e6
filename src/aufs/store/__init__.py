"""The store on disk: layout, parent chains, reference counts, metadata, recovery."""
