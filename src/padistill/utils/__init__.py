"""Small shared helpers: atomic I/O, hashing, manifests, devices, progress."""
