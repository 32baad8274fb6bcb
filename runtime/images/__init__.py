"""OCI images: layers, the store (to come), builds (to come)."""
